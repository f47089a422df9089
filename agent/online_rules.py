"""Online re-weighting rules from the literature, over the run's own feedback (numpy only).

Both keep a state that evolves with the run (DoReMi's α, ODM's cumulative rewards). A
:class:`~mixagent.trajectories.policy.MixingPolicy` must be a function of the history, so each
replays its update over the history at every decision: the same history gives the same mixture,
after a restart or on another replica. They read the held-out domain losses of each feedback (the
service's feedback carries no training losses); ``../shared/METHODS.md`` gives the published rules.

| name     | rule (per stage s, over the feedback after it)                                    |
|----------|------------------------------------------------------------------------------------|
| `doremi` | ``λ = max(ℓ(s) − ℓ(0), 0)``; ``α ← (1−c)·normalise(α ⊙ exp(η·λ)) + c/K``, α₀ = prior |
| `odm`    | ``R ← R + n_s·ℓ(s)/10``; ``w ∝ exp(ε_prev·R)``, mixed ``(1 − K·ε)·w + ε``           |
| `velocitune` | ``V = clamp((ℓ(s) − ℓ*)/(ℓ(0) − ℓ*), 0, 1)``, ℓ* the fitted asymptote; ``w ← normalise(w ⊙ exp(V))`` |
| `ado`    | per domain ``L(n) = ε + β·n^(−α)`` fitted to its losses; ``w ∝ (1−s)·rate + s·prior``, rate = ``−dL/dn`` |

ODM's exploration rate is ``ε_t = min(1/K, √(ln K/(K·t)))`` at optimizer step t.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mixagent.trajectories.contract import ContractError, DomainSpace, History, Weights

__all__ = ["DoReMiPolicy", "ODMPolicy", "ADOPolicy", "VelocitunePolicy", "fit_power_law"]

ALPHA_GRID = np.geomspace(0.05, 3.0, 80)
"""The exponents :func:`fit_power_law` tries (for each, ε and β are a linear least-squares fit)."""


def _positive(name: str, value: Any, *, zero_ok: bool = False, below_one: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if zero_ok else value > 0) and (value < 1 if below_one else True)
    if not ok:
        bound = "in [0, 1)" if below_one else ("a finite number >= 0" if zero_ok else "a positive finite number")
        raise ContractError(f"{name}: must be {bound}, got {value!r}")
    return float(value)


def _losses(history: History, space: DomainSpace, i: int) -> np.ndarray:
    return np.array([history.feedback[i].domain_losses[n] for n in space.names], dtype=float)


class DoReMiPolicy:
    """DoReMi-style excess-loss weighting, online, with the run's start losses as the reference:
    after each stage ``λ_k = max(ℓ_k(s) − ℓ_k(0), 0)`` (how far domain k's held-out loss has risen
    above where the run started: forgetting), ``α ← (1−c)·normalise(α ⊙ exp(η·λ)) + c/K`` from
    ``α₀ = prior``. ``average=True`` serves the time average of the α so far (DoReMi's published
    output) instead of the newest α."""

    name = "doremi"

    def __init__(self, eta: float = 1.0, smoothing: float = 1e-3, average: bool = False):
        self.eta = _positive("eta", eta)
        self.smoothing = _positive("smoothing", smoothing, zero_ok=True, below_one=True)
        if not isinstance(average, bool):
            raise ContractError(f"average: must be true or false, got {average!r}")
        self.average = average

    @property
    def params(self) -> dict[str, Any]:
        return {"eta": self.eta, "smoothing": self.smoothing, "average": self.average}

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(space.priors())

    def alphas(self, space: DomainSpace, history: History) -> list[np.ndarray]:
        """α after each feedback (α₀ = prior for the first)."""
        k = space.size
        alpha = space.priors().copy()
        out = [alpha]
        if not history.feedback:
            return out
        start = _losses(history, space, 0)
        for s in range(1, len(history.feedback)):
            excess = np.maximum(_losses(history, space, s) - start, 0.0)
            raw = alpha * np.exp(self.eta * excess)
            alpha = (1 - self.smoothing) * raw / raw.sum() + self.smoothing / k
            out.append(alpha)
        return out

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        alphas = self.alphas(space, history)
        return Weights.from_raw(np.mean(alphas, axis=0) if self.average else alphas[-1])


class ODMPolicy:
    """ODM's EXP3 bandit over domains, with the expected reward of a stage: a stage of ``n_s``
    optimizer steps under mixture π pulls domain k about ``n_s·π_k`` times, each pull adding
    ``(ℓ_k/10)/π_k`` to its cumulative reward, so ``R_k ← R_k + n_s·ℓ_k(s)/10`` (deterministic; the
    held-out loss stands in for the batch's training loss). The clock ``t`` is the optimizer step,
    as in ODM (one pull per batch): ``ε_t = min(1/K, √(ln K / (K·t)))``, ``w ∝ exp(ε_prev·R)``
    with ``ε_prev`` the previous stage's, and the mixture ``(1 − K·ε_t)·w + ε_t``. Early in a run
    ``ε`` is 1/K, which makes the mixture uniform: exploration first, by construction."""

    name = "odm"

    def __init__(self, reward_scale: float = 10.0):
        self.reward_scale = _positive("reward_scale", reward_scale)

    @property
    def params(self) -> dict[str, Any]:
        return {"reward_scale": self.reward_scale}

    @staticmethod
    def epsilon(k: int, t: float) -> float:
        return 1.0 / k if t <= 0 else min(1.0 / k, math.sqrt(math.log(k) / (k * t))) if k > 1 else 1.0

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(np.full(space.size, 1.0 / space.size))

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        k = space.size
        reward = np.zeros(k)
        eps_prev = eps = self.epsilon(k, 0)
        for s in range(1, len(history.feedback)):
            steps = history.feedback[s].step - history.feedback[s - 1].step
            reward += steps * _losses(history, space, s) / self.reward_scale
            eps_prev, eps = eps, self.epsilon(k, history.feedback[s].step)
        logits = eps_prev * reward
        w = np.exp(logits - logits.max())
        w = w / w.sum()
        return Weights.from_raw((1 - k * eps) * w + eps)


def _min_points(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 3:
        raise ContractError(f"min_points: must be an integer >= 3 (three parameters are fitted), got {value!r}")
    return value


def _curve_points(history: History, upto: int, min_points: int) -> tuple[list[Any], np.ndarray] | None:
    """The feedbacks 1..``upto`` with tokens trained, and their token counts in units of the last
    one (the start is not on a power-law curve); None while fewer than ``min_points``."""
    points = [fb for fb in history.feedback[1:upto + 1] if fb.tokens_seen > 0]
    if len(points) < min_points:
        return None
    n = np.array([fb.tokens_seen for fb in points], dtype=float)
    return points, n / n[-1]


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """``(ε, β, α)`` of ``L(n) = ε + β·n^(−α)`` with β ≥ 0 closest to ``loss`` in least squares:
    for each α of :data:`ALPHA_GRID` the best (ε, β) is linear, so the fit is exact per α and
    deterministic (pure numpy: the service needs no scipy). ``n`` > 0."""
    best = (float(loss[-1]), 0.0, float(ALPHA_GRID[0]))
    best_sse = float(((loss - loss[-1]) ** 2).sum())
    for a in ALPHA_GRID:
        x = np.column_stack([np.ones_like(n), n ** -a])
        coef, *_ = np.linalg.lstsq(x, loss, rcond=None)
        eps, beta = float(coef[0]), float(coef[1])
        if beta < 0:
            continue
        sse = float(((x @ coef - loss) ** 2).sum())
        if sse < best_sse:
            best, best_sse = (eps, beta, float(a)), sse
    return best


class ADOPolicy:
    """ADO (adaptive data optimization): per domain, a power law ``L_k(n) = ε_k + β_k·n^(−α_k)``
    fitted to the run's own held-out losses against the tokens trained so far (:func:`fit_power_law`),
    and the mixture ``w ∝ (1 − s)·normalise(r) + s·prior`` with ``r_k = −dL_k/dn = α_k β_k n^(−α_k−1)``
    at the current token count: domains still improving fast get more. Until ``min_points``
    feedbacks after the start exist (a fit needs them) the mixture is the prior. The loss at
    n = 0 is not on the curve (n^−α diverges), so the start feedback is left out of the fit."""

    name = "ado"

    def __init__(self, smoothing: float = 0.2, min_points: int = 3):
        self.smoothing = _positive("smoothing", smoothing, zero_ok=True, below_one=True)
        self.min_points = _min_points(min_points)

    @property
    def params(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "min_points": self.min_points}

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(space.priors())

    def rates(self, space: DomainSpace, history: History) -> np.ndarray | None:
        """Each domain's fitted rate of improvement now, or None before ``min_points`` feedbacks."""
        curve = _curve_points(history, len(history.feedback) - 1, self.min_points)
        if curve is None:
            return None
        points, x = curve  # in units of the current token count: rates are compared, not absolute
        rates = []
        for name in space.names:
            loss = np.array([fb.domain_losses[name] for fb in points], dtype=float)
            _, beta, alpha = fit_power_law(x, loss)
            rates.append(alpha * beta)  # -dL/dx at x = 1 (the current token count)
        return np.asarray(rates)

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        prior = space.priors()
        r = self.rates(space, history)
        if r is None or r.sum() <= 0:
            return Weights.from_raw(prior)
        return Weights.from_raw((1 - self.smoothing) * r / r.sum() + self.smoothing * prior)


class VelocitunePolicy:
    """Velocitune: each domain's *learning velocity* ``V_k = clamp((ℓ_k(s) − ℓ*_k)/(ℓ_k(0) − ℓ*_k), 0, 1)``
    (1: still at its start loss, 0: at its target), with the target ``ℓ*_k`` the asymptote ``ε_k``
    of a power law fitted to the domain's losses so far (:func:`fit_power_law`), and after each stage
    from the ``min_points``-th on ``w ← normalise(w ⊙ exp(V))``, from the prior: the domains furthest
    from their target get more. Before the fit has its points, the prior."""

    name = "velocitune"

    def __init__(self, min_points: int = 3):
        self.min_points = _min_points(min_points)

    @property
    def params(self) -> dict[str, Any]:
        return {"min_points": self.min_points}

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(space.priors())

    def velocities(self, space: DomainSpace, history: History, upto: int) -> np.ndarray | None:
        """Each domain's velocity after feedback ``upto`` (None before the fit has its points)."""
        curve = _curve_points(history, upto, self.min_points)
        if curve is None:
            return None
        points, x = curve
        start = _losses(history, space, 0)
        now = _losses(history, space, upto)
        v = []
        for k, name in enumerate(space.names):
            target, _, _ = fit_power_law(x, np.array([fb.domain_losses[name] for fb in points], dtype=float))
            gap = start[k] - target
            v.append(float(np.clip((now[k] - target) / gap, 0.0, 1.0)) if gap > 1e-12 else 0.0)
        return np.asarray(v)

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        w = space.priors().copy()
        for s in range(1, len(history.feedback)):
            v = self.velocities(space, history, s)
            if v is not None:
                w = w * np.exp(v)
                w = w / w.sum()
        return Weights.from_raw(w)
