"""What chooses a mixture: the ``MixingPolicy`` interface and the ``PolicyFamily`` that builds one.

Everything that picks domain weights implements :class:`MixingPolicy`, whether it reads feedback
(baselines, the learned agent) or not (behaviour schedules, hand schedules, a fixed share). The
interface lives on the ground floor so that open-loop schedules (here) and every policy above
(``agent/``) share one definition; the runner, the evaluation harness and the service use nothing
else.

A :class:`PolicyFamily` is a named way to build policies from JSON parameters, optionally with a
``draw`` that samples parameters from a seed (behaviour data covers a family by drawing many
members). Families are published through the ``mixagent.policies`` entry-point group (see
``agent/registry.py``); a third-party package adds one by declaring it in its own metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mixagent.trajectories.contract import ActionSpec, DomainSpace, History, Level, Objective, Weights

__all__ = [
    "Level",
    "MixingPolicy",
    "PolicyFactory",
    "PolicyContext",
    "PolicyFamily",
    "DrawFn",
    "BuildFn",
]


@runtime_checkable
class MixingPolicy(Protocol):
    """Chooses the mixture of the next stage from the raw history of a run.

    ``initial_weights`` is the mixture before any feedback; ``next_weights`` is called after each
    feedback (``history.feedback[-1]`` is the newest, ``len(history.weights)`` stages are done) and
    returns the mixture for the next stage. Implementations are deterministic given their
    parameters and never mutate ``history``.
    """

    @property
    def name(self) -> str:
        """A short name for logs, records and the service's answers."""

    def initial_weights(self, space: DomainSpace) -> Weights: ...

    def next_weights(self, space: DomainSpace, history: History) -> Weights: ...


class PolicyFactory(Protocol):
    """Builds the policy of one run from its domain space, horizon and objective (default:
    ``Objective()``): learned policies check the objective against the fields of the run's space,
    encode progress ``t / T`` and the objective they optimise; rules ignore what they do not need."""

    def __call__(self, space: DomainSpace, horizon: int, objective: Objective | None = None, /) -> MixingPolicy: ...


@dataclass(frozen=True)
class PolicyContext:
    """What building a policy for one problem may use: the domains, the horizon (decisions per
    run), the action map of the setting (β, ε, level) and the run's objective."""

    space: DomainSpace
    horizon: int
    action: ActionSpec
    objective: Objective = field(default_factory=Objective)

    def spec(self, level: Level) -> ActionSpec:
        """The action map at ``level`` with the setting's β and ε."""
        return self.action.model_copy(update={"level": level})

    def units(self, level: Level) -> int:
        return len(self.space.fields) if level == "field" else self.space.size

    def unit_priors(self, level: Level) -> np.ndarray:
        return self.space.field_priors() if level == "field" else self.space.priors()


DrawFn = Callable[[PolicyContext, np.random.Generator, int], dict[str, Any]]
"""``draw(ctx, rng, index)``: JSON parameters of one member (``index``: the k-th draw of the family
in a dataset, for grids)."""
BuildFn = Callable[[PolicyContext, dict[str, Any]], MixingPolicy]


@dataclass(frozen=True)
class PolicyFamily:
    """A named policy builder: ``build(ctx, params)`` gives the policy, ``draw`` (behaviour families
    only) samples its parameters from a seed. ``shares`` marks families defined by a target-share
    series, which a domain-level plan gives a within-field split."""

    name: str
    build: BuildFn
    draw: DrawFn | None = None
    description: str = ""
    shares: bool = False
