"""Baseline mixing policies: one small class each, the update rule in its docstring (numpy only).

Every rule builds raw non-negative shares and hands them to :meth:`Weights.from_raw`, which
renormalises once and lifts every domain to the contract's floor, so no domain is ever starved
(an "empty" domain keeps the floor share and stays observable).

| name                 | rule                                                              |
|----------------------|-------------------------------------------------------------------|
| `uniform`            | ``w_k = 1/K``                                                     |
| `prior`              | ``w_k ∝ prior_k``                                                 |
| `fixed-target-share` | target fields get ``s`` in total, the source field ``1-s``        |
| `loss-softmax`       | ``w_k ∝ prior_k · exp(ℓ_k(t) / (τ · ℓ_k(0)))``                    |
| `doremi`, `odm`, `ado`, `velocitune` | the online rules of :mod:`mixagent.agent.online_rules` |
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from mixagent.trajectories.contract import SOURCE_FIELD, ContractError, DomainSpace, History, Weights
from mixagent.trajectories.policy import MixingPolicy

__all__ = [
    "UniformPolicy",
    "PriorPolicy",
    "FixedTargetSharePolicy",
    "LossSoftmaxPolicy",
    "BASELINES",
    "build_baseline",
]


class _Static:
    """A policy whose mixture never depends on feedback."""

    name: ClassVar[str]

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def _weights(self, space: DomainSpace) -> np.ndarray:
        raise NotImplementedError

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(self._weights(space))

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        return Weights.from_raw(self._weights(space))


class UniformPolicy(_Static):
    """Uniform: every domain gets the same share, ``w_k = 1/K``, at every decision."""

    name = "uniform"

    def _weights(self, space: DomainSpace) -> np.ndarray:
        return np.full(space.size, 1.0 / space.size)


class PriorPolicy(_Static):
    """Prior-proportional: ``w_k = prior_k / Σ prior`` (e.g. natural token shares), at every decision."""

    name = "prior"

    def _weights(self, space: DomainSpace) -> np.ndarray:
        return space.priors()


class FixedTargetSharePolicy(_Static):
    """Fixed target share: the target fields together get ``target_share`` of every batch, the
    source field ``1 - target_share``; within each part domains keep their prior proportions
    (several target fields split the target part by their prior mass). A space with no target
    field cannot be served (ContractError); a space with no source field gets its priors.
    """

    name = "fixed-target-share"

    def __init__(self, target_share: float = 0.5):
        if not (isinstance(target_share, int | float) and not isinstance(target_share, bool)) or not (
            0.0 < float(target_share) < 1.0
        ):
            raise ContractError(f"target_share: must be a number in (0, 1), got {target_share!r}")
        self.target_share = float(target_share)

    @property
    def params(self) -> dict[str, Any]:
        return {"target_share": self.target_share}

    def _weights(self, space: DomainSpace) -> np.ndarray:
        p = space.priors()
        is_target = np.array([d.field != SOURCE_FIELD for d in space.domains])
        if not is_target.any():
            raise ContractError(f"space: {self.name} needs a target field, got only {list(space.fields)}")
        if is_target.all():
            return p
        w = np.where(is_target, self.target_share * p / p[is_target].sum(), 0.0)
        return w + np.where(~is_target, (1 - self.target_share) * p / p[~is_target].sum(), 0.0)


class LossSoftmaxPolicy:
    """Loss-softmax: upweight the domains with the highest held-out loss.

    ``relative=True`` (default): ``w_k ∝ prior_k · exp(ℓ_k(t) / (τ · ℓ_k(0)))`` with ``ℓ_k(t)`` the
    newest held-out loss of domain k, ``ℓ_k(0)`` its loss at the first feedback and
    ``τ = temperature``. Dividing by the start loss makes the rule scale-free across domains (an
    intrinsically hard domain does not dominate); a domain whose loss rose (forgetting) gains share.
    Before any feedback, and right after the first, the mixture is the prior. Non-positive start
    losses are treated as 1e-8.

    ``relative=False``: the plain heuristic of docs/methods.md, ``w_k ∝ softmax(ℓ_k(t) / τ)`` (no prior,
    no reference), which pours the mixture into the hardest domains (in CPT, the new field's).
    """

    name = "loss-softmax"

    def __init__(self, temperature: float = 0.1, relative: bool = True):
        if not (isinstance(temperature, int | float) and not isinstance(temperature, bool)) or not (
            float(temperature) > 0 and np.isfinite(temperature)
        ):
            raise ContractError(f"temperature: must be a positive finite number, got {temperature!r}")
        if not isinstance(relative, bool):
            raise ContractError(f"relative: must be true or false, got {relative!r}")
        self.temperature = float(temperature)
        self.relative = relative

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "relative": self.relative}

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(space.priors())

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        if not history.feedback:
            return self.initial_weights(space)
        first, last = history.feedback[0].domain_losses, history.feedback[-1].domain_losses
        loss = np.array([last[n] for n in space.names])
        if not self.relative:
            logits = loss / self.temperature
            return Weights.from_raw(np.exp(logits - logits.max()))
        l0 = np.array([first[n] for n in space.names])
        logits = np.log(space.priors()) + loss / (self.temperature * np.maximum(l0, 1e-8))
        return Weights.from_raw(np.exp(logits - logits.max()))


def _online_rules() -> tuple[type[Any], ...]:
    from mixagent.agent.online_rules import (  # noqa: PLC0415 - a module of their own
        ADOPolicy,
        DoReMiPolicy,
        ODMPolicy,
        VelocitunePolicy,
    )

    return DoReMiPolicy, ODMPolicy, ADOPolicy, VelocitunePolicy


_RULES: tuple[Any, ...] = (UniformPolicy, PriorPolicy, FixedTargetSharePolicy, LossSoftmaxPolicy, *_online_rules())
BASELINES: dict[str, type[Any]] = {cls.name: cls for cls in _RULES}
"""Built-in rules by name; their parameters are their constructor's keyword arguments."""


def build_baseline(rule: str, params: Mapping[str, Any] | None = None) -> MixingPolicy:
    """The baseline ``rule`` with ``params``; ContractError names an unknown rule or parameter."""
    cls = BASELINES.get(rule)
    if cls is None:
        raise ContractError(f"rule: unknown baseline {rule!r}; known: {sorted(BASELINES)}")
    try:
        policy: MixingPolicy = cls(**dict(params or {}))
    except TypeError:
        known = sorted(inspect.signature(cls).parameters)
        raise ContractError(
            f"params: {sorted(params or {})} are not parameters of {rule!r} (it takes {known})"
        ) from None
    return policy
