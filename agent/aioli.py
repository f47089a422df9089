"""Aioli (a unified optimisation framework for data mixing), a trainer-side method.

Aioli models the loss change of one round as linear in the mixture, ``L^{t+1}_i = L^t_i − Σ_j A_ij p_j``,
estimates the K×K interaction matrix ``A`` from short probes inside the round, and moves the mixture
by exponentiated gradient: ``p ← normalise(p ⊙ exp(η · Σ_i A_ij))`` (η = 0.2). Per decision (one
interval of ``I`` optimizer steps), through the CPT backend's hook (``env/trainer_side.py``):

1. draw one batch of each domain's training windows (the same rows are scored all interval);
2. for ``rounds`` sweeps, for each domain j: the model takes ``probe_steps`` of its own steps on the
   probe mixture ``q_j`` (``one_hot`` on j, the rest spread evenly), and ``G_ij += L_i(before) −
   L_i(after)`` for every domain i; then ``G /= rounds``;
3. ``A`` = the rows of ``G`` unmixed from the probe mixtures (``A_i = Q⁻¹ G_i`` with Q the matrix
   of the q_j; ``A = G`` when ``one_hot = 1``);
4. ``p ← normalise(p ⊙ exp(η · column sums of A))``, floored to the contract's ``WEIGHT_FLOOR``;
5. the remaining ``E = I − K·probe_steps·rounds`` steps on the new p.

Accounting. As in Aioli ("part of the training steps"), the probes are the model's own steps: they
count towards the interval, so the model takes exactly ``I`` steps and ``I × batch × seq_len``
tokens, and the recorded mixture of the interval is its effective one (the probes' q_j and E steps
on p, weighted by their steps). The overhead is the ``(K·rounds + 1)·K`` forward passes that score
the domain batches, measured per decision in CPU-seconds. Aioli's objective is the total loss over
domains (unweighted column sums), so it ignores the run's objective.

| parameter     | default                                | meaning                                      |
|---------------|----------------------------------------|----------------------------------------------|
| `eta`         | 0.2                                    | η of the exponentiated update (Aioli's)      |
| `probe_steps` | ``max(1, ⌊I/3 / (K·rounds)⌋)``         | the model's steps per probe                  |
| `rounds`      | 1                                      | sweeps over the K domains per decision       |
| `one_hot`     | 1.0                                    | share of the probed domain in its probe mixture |
| `probe_rows`  | ``cpt.batch_size``                     | windows per domain scored before/after probes |

A probe budget ``K·probe_steps·rounds`` larger than the interval is refused, naming both numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mixagent.trajectories.contract import ContractError, DomainSpace, Weights

if TYPE_CHECKING:  # the hook's module imports torch; a driver that only plans needs none
    from mixagent.env.trainer_side import IntervalTrainer

__all__ = ["AioliMethod", "probe_mixtures", "interaction_matrix", "aioli_update", "PROBE_FRACTION"]

PROBE_FRACTION = 1 / 3
"""The share of an interval the default probe budget aims at (at least one step per probe)."""


def probe_mixtures(k: int, one_hot: float) -> np.ndarray:
    """``Q[j]`` = the probe mixture of domain j: ``one_hot`` on j, ``(1 − one_hot)/(k − 1)`` elsewhere."""
    if k == 1:
        return np.ones((1, 1))
    q = np.full((k, k), (1 - one_hot) / (k - 1))
    np.fill_diagonal(q, one_hot)
    return q


def interaction_matrix(drops: np.ndarray, one_hot: float) -> np.ndarray:
    """``A`` from the measured loss drops ``G`` (``G[i, j]``: domain i's loss drop while probing j):
    under the linear law ``G_i = Q·A_i``, so ``A_i = Q⁻¹ G_i`` (Q symmetric); ``A = G`` when ``one_hot = 1``."""
    if one_hot == 1.0:
        return drops.copy()
    q = probe_mixtures(drops.shape[0], one_hot)
    return np.linalg.solve(q, drops.T).T


def aioli_update(p: np.ndarray, a: np.ndarray, eta: float) -> np.ndarray:
    """``normalise(p ⊙ exp(η · Σ_i A_ij))`` (computed in log space)."""
    logits = np.log(p) + eta * a.sum(axis=0)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def _count(name: str, value: Any, *, minimum: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ContractError(f"{name}: must be an integer >= {minimum}{' or null' if name != 'rounds' else ''}, "
                            f"got {value!r}")
    return value


class AioliMethod:
    """Aioli: the interaction matrix from probes inside the interval, ``p ← p ⊙ exp(η·column sums of A)``
    (module docstring)."""

    name = "aioli"

    def __init__(self, eta: float = 0.2, probe_steps: int | None = None, rounds: int = 1, one_hot: float = 1.0,
                 probe_rows: int | None = None):
        if not (isinstance(eta, int | float) and not isinstance(eta, bool) and math.isfinite(eta) and eta > 0):
            raise ContractError(f"eta: must be a positive finite number, got {eta!r}")
        ok = isinstance(one_hot, int | float) and not isinstance(one_hot, bool)
        if not (ok and 0.5 < one_hot <= 1):
            raise ContractError(f"one_hot: must be in (0.5, 1] (the probed domain's share), got {one_hot!r}")
        self.eta = float(eta)
        self.probe_steps = _count("probe_steps", probe_steps, minimum=1)
        self.rounds = _count("rounds", rounds, minimum=1) or 1
        self.one_hot = float(one_hot)
        self.probe_rows = _count("probe_rows", probe_rows, minimum=1)
        self._p: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"eta": self.eta, "probe_steps": self.probe_steps, "rounds": self.rounds, "one_hot": self.one_hot,
                "probe_rows": self.probe_rows}

    def steps_for(self, interval: int, k: int) -> tuple[int, int]:
        """``(probe steps per probe, free steps)``; a probe budget larger than the interval is refused."""
        per = self.probe_steps or max(1, int(interval * PROBE_FRACTION) // (k * self.rounds))
        budget = k * per * self.rounds
        if budget > interval:
            raise ContractError(f"probe_steps: a probe budget of {k} domains × {per} steps × {self.rounds} round(s) = "
                                f"{budget} steps is larger than the interval of {interval} steps (cpt.interval)")
        return per, interval - budget

    def check_interval(self, interval: int, space: DomainSpace) -> None:
        self.steps_for(interval, space.size)

    def reset(self, space: DomainSpace) -> None:
        self._p = space.priors().copy()

    def train_interval(self, trainer: IntervalTrainer) -> dict[str, Any]:
        if self._p is None or self._p.size != trainer.space.size:
            raise RuntimeError("aioli: reset(space) must start the episode before an interval")
        k = trainer.space.size
        per, free = self.steps_for(trainer.steps, k)
        p = self._p
        # ALGO LOGIC: probes of the model's own steps, the loss drop of every domain after each
        batches = [trainer.domain_batch(i, self.probe_rows) for i in range(k)]
        q = probe_mixtures(k, self.one_hot)
        drops = np.zeros((k, k))
        before = trainer.domain_losses(trainer.model, batches)
        for _ in range(self.rounds):
            for j in range(k):
                trainer.train(q[j], per)
                after = trainer.domain_losses(trainer.model, batches)
                drops[:, j] += before - after
                before = after
        drops /= self.rounds
        a = interaction_matrix(drops, self.one_hot)
        new = Weights.from_raw(aioli_update(p, a, self.eta)).as_array()
        trainer.train(new, free)
        self._p = new
        return {"p": p.tolist(), "next_p": new.tolist(), "interaction": a.tolist(), "probe_steps": per,
                "free_steps": free}
