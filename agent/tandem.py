"""TANDEM (twin networks for bi-level data mixture optimisation), a trainer-side method.

Per decision (one interval of ``I = cpt.interval`` optimizer steps), through the CPT backend's hook
(``env/trainer_side.py``):

1. copy the proxy ``u`` (the model under CPT) and its optimizer state into a reference ``w``;
2. for ``K`` probe steps: ``u`` takes one of its own steps on a batch drawn by α; ``w`` takes one
   step on ``L(w; validation batch) + γ·L(w; that same training batch)``;
3. per domain m, ``Δ_m = L^m_train(w) − L^m_train(u)`` on one batch of domain m's training windows
   (the same rows for both models), and ``α ← Π_simplex(α − η_α·γ·Δ)``: a domain whose training loss
   the extra validation data lowered (Δ_m < 0) goes up;
4. ``E = I − K`` free steps of ``u`` on the new α.

Accounting. The probe steps of ``u`` are the model's own steps on the run's mixture α, so they
count towards the interval: the model takes ``K + E = I`` steps and ``I × batch × seq_len`` tokens,
exactly as under every other method. ``w``'s ``K`` steps (two forward passes each: validation and
training batch), the ``2·M`` probe forward passes and the copy are TANDEM's overhead, recorded per
decision in CPU-seconds. The interval's recorded mixture is its effective one,
``(K·α_t + E·α_{t+1}) / I``; the log of each decision holds α before and after and Δ.

Parameters (the paper's defaults, scaled to the interval):

| parameter     | default                | meaning                                                        |
|---------------|------------------------|----------------------------------------------------------------|
| `gamma`       | 1.0                    | γ, the weight of the training loss in ``w``'s objective (paper: 1) |
| `probe_steps` | ``max(1, round(I/3))`` | K; the paper's K = 5 with E = 10 (middle of 5–20) is a third of its K + E |
| `free_steps`  | ``I − K``              | E; given alone, K = I − E; given with K, K + E must equal I    |
| `eta_alpha`   | 1.0                    | η_α, the step of α (not given in ../shared/METHODS.md: chosen here) |
| `probe_rows`  | ``cpt.batch_size``     | training windows per domain for Δ                              |

α starts at the domain priors; Π_simplex is the Euclidean projection onto the simplex lifted to the
contract's floor (every domain keeps ``WEIGHT_FLOOR``). The validation sample is the hook's: the
training split of every field, field f weighted by the run's objective weight ``c_f``. A probe
budget larger than the interval is refused, naming both numbers. TANDEM needs the trainer's model,
so the HTTP service cannot serve it (``agent/registry.py``, ``TRAINER_SIDE_METHODS``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mixagent.trajectories.contract import WEIGHT_FLOOR, ContractError, DomainSpace

if TYPE_CHECKING:  # the hook's module imports torch; a driver that only plans needs none
    from mixagent.env.trainer_side import IntervalTrainer

__all__ = ["TandemMethod", "project_simplex", "resolve_steps", "PROBE_FRACTION"]

PROBE_FRACTION = 1 / 3
"""K/(K + E) by default: the paper's K = 5 with E = 10, the middle of its E = 5–20."""


def project_simplex(v: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """The Euclidean projection of ``v`` onto ``{x : x_k ≥ floor, Σ x = 1}`` (Duchi et al. 2008, on
    ``v − floor`` and the simplex of total ``1 − K·floor``): ``x = max(v − θ, floor)`` with θ chosen
    so that the shares sum to 1."""
    v = np.asarray(v, dtype=np.float64)
    k = v.size
    total = 1.0 - k * floor
    if total <= 0:
        raise ContractError(f"floor: {floor} leaves no mass for {k} domains")
    y = v - floor
    u = np.sort(y)[::-1]
    cssv = np.cumsum(u) - total
    ind = np.arange(1, k + 1)
    rho = int(np.nonzero(u - cssv / ind > 0)[0][-1]) + 1
    theta = cssv[rho - 1] / rho
    return np.maximum(y - theta, 0.0) + floor


def _count(name: str, value: Any, *, minimum: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ContractError(f"{name}: must be an integer >= {minimum} or null (scaled to the interval), got {value!r}")
    return value


def _positive(name: str, value: Any, *, zero_ok: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (value >= 0 if zero_ok else value > 0)):
        kind = "non-negative" if zero_ok else "positive"
        raise ContractError(f"{name}: must be a {kind} finite number, got {value!r}")
    return float(value)


def resolve_steps(interval: int, probe_steps: int | None, free_steps: int | None) -> tuple[int, int]:
    """``(K, E)`` with ``K + E = interval``; a probe budget larger than the interval is refused."""
    if probe_steps is not None and probe_steps > interval:
        raise ContractError(f"probe_steps: a probe budget of {probe_steps} steps is larger than the interval of "
                            f"{interval} steps (cpt.interval)")
    if free_steps is not None and free_steps >= interval:
        raise ContractError(f"free_steps: {free_steps} free steps leave no probe step in the interval of {interval} "
                            "steps (cpt.interval); K = interval − E must be at least 1")
    if probe_steps is not None and free_steps is not None and probe_steps + free_steps != interval:
        raise ContractError(f"probe_steps + free_steps: {probe_steps} + {free_steps} = {probe_steps + free_steps} "
                            f"is not the interval of {interval} steps (cpt.interval)")
    if probe_steps is None:
        probe_steps = interval - free_steps if free_steps is not None else max(1, round(interval * PROBE_FRACTION))
    return probe_steps, interval - probe_steps


class TandemMethod:
    """TANDEM: twin networks inside the interval, ``α ← Π_simplex(α − η_α·γ·[L^m(w) − L^m(u)])``
    after K probe steps, then E free steps (module docstring)."""

    name = "tandem"

    def __init__(self, gamma: float = 1.0, probe_steps: int | None = None, free_steps: int | None = None,
                 eta_alpha: float = 1.0, probe_rows: int | None = None):
        self.gamma = _positive("gamma", gamma, zero_ok=True)
        self.probe_steps = _count("probe_steps", probe_steps, minimum=1)
        self.free_steps = _count("free_steps", free_steps, minimum=0)
        self.eta_alpha = _positive("eta_alpha", eta_alpha)
        self.probe_rows = _count("probe_rows", probe_rows, minimum=1)
        self._alpha: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "probe_steps": self.probe_steps, "free_steps": self.free_steps,
                "eta_alpha": self.eta_alpha, "probe_rows": self.probe_rows}

    def check_interval(self, interval: int, space: DomainSpace) -> None:
        resolve_steps(interval, self.probe_steps, self.free_steps)

    def reset(self, space: DomainSpace) -> None:
        self._alpha = project_simplex(space.priors(), WEIGHT_FLOOR)

    def update(self, alpha: np.ndarray, loss_w: np.ndarray, loss_u: np.ndarray) -> np.ndarray:
        """``Π_simplex(α − η_α·γ·(L(w) − L(u)))`` (lifted to the floor)."""
        return project_simplex(alpha - self.eta_alpha * self.gamma * (loss_w - loss_u), WEIGHT_FLOOR)

    def train_interval(self, trainer: IntervalTrainer) -> dict[str, Any]:
        if self._alpha is None or self._alpha.size != trainer.space.size:
            raise RuntimeError("tandem: reset(space) must start the episode before an interval")
        k, e = resolve_steps(trainer.steps, self.probe_steps, self.free_steps)
        alpha = self._alpha
        # ALGO LOGIC: K probe steps of u (the model's own) beside K steps of the twin w
        twin = trainer.twin()
        for _ in range(k):
            batch = trainer.step(alpha)
            loss = trainer.loss(twin.model, trainer.validation_batch())
            twin.step(loss + self.gamma * trainer.loss(twin.model, batch) if self.gamma else loss)
        probes = [trainer.domain_batch(m, self.probe_rows) for m in range(trainer.space.size)]
        loss_u = trainer.domain_losses(trainer.model, probes)
        loss_w = trainer.domain_losses(twin.model, probes)
        del twin
        new = self.update(alpha, loss_w, loss_u)
        # then E free steps of u on the new mixture
        trainer.train(new, e)
        self._alpha = new
        return {"alpha": alpha.tolist(), "next_alpha": new.tolist(), "loss_gap": (loss_w - loss_u).tolist(),
                "probe_steps": k, "free_steps": e}
