"""Per-domain share bounds a user sets on a run (at least 5% code, at most 20% of any one web
domain), and the projection that makes every policy's mixture meet them.

The projection keeps the policy's proportions wherever it can: ``w_k = clip(c·v_k, low_k, high_k)``
with the one scale ``c > 0`` that makes the shares sum to 1 (found by bisection; the sum is
monotone in ``c``). It is the closest mixture to ``v`` in KL divergence inside the box (the
I-projection onto ``{low ≤ w ≤ high, Σw = 1}``): an unbounded domain keeps its ratio to every other
unbounded domain, and a mixture that already meets the bounds is returned unchanged. Bounds that no
mixture meets together are refused when they are made, naming them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mixagent.trajectories.contract import WEIGHT_FLOOR, ContractError, DomainSpace, Weights

__all__ = ["ShareBounds"]

_BISECTIONS = 64
"""Halvings of the log-scale interval [-60, 60]: below 1e-16 in log c, finer than float64 shares."""


class ShareBounds:
    """Lowest and highest share per domain of one space (``None`` entries: unbounded)."""

    def __init__(self, space: DomainSpace, low: Mapping[str, float] | None = None,
                 high: Mapping[str, float] | None = None):
        low, high = dict(low or {}), dict(high or {})
        for what, given in (("min_share", low), ("max_share", high)):
            unknown = sorted(set(given) - set(space.names))
            if unknown:
                raise ContractError(f"{what}: unknown domain(s) {unknown} (the run's domains are {list(space.names)})")
            for name, v in given.items():
                if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1):
                    raise ContractError(f"{what} of {name!r}: must be a share in [0, 1], got {v!r}")
        for name in sorted(set(low) & set(high)):
            if low[name] > high[name]:
                raise ContractError(f"min_share of {name!r} ({low[name]:g}) exceeds its max_share ({high[name]:g})")
        tiny = sorted(n for n, v in high.items() if v < WEIGHT_FLOOR)
        if tiny:
            raise ContractError(f"max_share of {tiny}: below the smallest share a mixture gives any domain "
                                f"({WEIGHT_FLOOR:g}); leave the domain out of the space instead")
        self.space = space
        self.min_share, self.max_share = low, high
        self.low = np.array([max(low.get(n, 0.0), WEIGHT_FLOOR) for n in space.names])
        self.high = np.array([high.get(n, 1.0) for n in space.names])
        if self.low.sum() > 1 + 1e-12:
            named = ", ".join(f"{n} {v:g}" for n, v in low.items())
            raise ContractError(f"min_share: the minimum shares sum to {sum(low.values()):g} ({named}), more than 1: "
                                f"no mixture meets them together")
        if self.high.sum() < 1 - 1e-12:
            named = ", ".join(f"{n} {v:g}" for n, v in high.items())
            raise ContractError(f"max_share: every domain has a maximum and they sum to {sum(high.values()):g} "
                                f"({named}), less than 1: no mixture meets them together")

    @property
    def empty(self) -> bool:
        return not self.min_share and not self.max_share

    def to_json(self) -> dict[str, dict[str, float]]:
        return {"min_share": dict(self.min_share), "max_share": dict(self.max_share)}

    @classmethod
    def from_json(cls, space: DomainSpace, data: Mapping[str, Mapping[str, float]] | None) -> ShareBounds:
        data = data or {}
        return cls(space, data.get("min_share"), data.get("max_share"))

    def satisfied(self, weights: Weights, tol: float = 1e-9) -> bool:
        w = weights.as_array()
        return bool(((w >= self.low - tol) & (w <= self.high + tol)).all())

    def project(self, weights: Weights) -> Weights:
        """The mixture closest to ``weights`` (in KL) whose shares lie within the bounds."""
        if self.empty or self.satisfied(weights, tol=0.0):
            return weights
        v = weights.as_array()

        def total(log_c: float) -> float:
            return float(np.clip(math.exp(log_c) * v, self.low, self.high).sum())

        lo, hi = -60.0, 60.0  # shares are >= WEIGHT_FLOOR, so e^±60 reaches every clip
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            if total(mid) < 1:
                lo = mid
            else:
                hi = mid
        w = np.clip(math.exp(hi) * v, self.low, self.high)
        # the last bit of rounding goes to the domains strictly inside their bounds
        free = (w > self.low) & (w < self.high)
        if free.any():
            w[free] += (1 - w.sum()) * w[free] / w[free].sum()
        return Weights(values=tuple(float(x) for x in w))
