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

ODM's exploration rate is ``ε_t = min(1/K, √(ln K/(K·t)))`` at optimizer step t.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mixagent.trajectories.contract import ContractError, DomainSpace, History, Weights

__all__ = ["DoReMiPolicy", "ODMPolicy"]


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
