"""Every policy by name: the ``mixagent.policies`` entry-point group.

A package publishes policies by declaring entry points in that group; each names either a
:class:`~mixagent.trajectories.policy.PolicyFamily` (behaviour schedules, noisy baselines, hand
schedules) or a policy class whose keyword arguments are its parameters (the baselines of
``agent/baselines.py``). mixagent declares its own the same way (``pyproject.toml``), so a
third-party family is found exactly like a built-in one, in the driver and in every worker, with
no import side effects::

    [project.entry-points."mixagent.policies"]
    my_schedule = "my_package.schedules:MY_FAMILY"
"""

from __future__ import annotations

import inspect
import warnings
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from mixagent.agent.errors import RegistryError
from mixagent.trajectories.contract import ContractError
from mixagent.trajectories.policy import Level, MixingPolicy, PolicyContext, PolicyFamily
from mixagent.trajectories.schedules import build_policy as _build
from mixagent.trajectories.schedules import draw_params as _draw

__all__ = [
    "ENTRY_POINT_GROUP",
    "RegistryError",
    "policy_families",
    "get_family",
    "draw_params",
    "build_policy",
    "family_of_class",
    "TRAINER_SIDE_METHODS",
    "trainer_side_refusal",
]

ENTRY_POINT_GROUP = "mixagent.policies"

TRAINER_SIDE_METHODS: dict[str, str] = {
    "tandem": "it trains a twin copy of the model beside it inside every interval",
    "aioli": "it probes the model with short runs on each domain inside every interval",
    "airrep": "it scores each domain's influence from the hidden states of the model under CPT at every decision",
}
"""The ``mixagent.policies`` names that are trainer-side methods (``env/trainer_side.py``), with why
they need the trainer's model. Plain names, so that the HTTP service (which never imports torch) can
refuse them clearly instead of calling them unknown; a test checks this table against the entry points."""


def trainer_side_refusal(name: str) -> str:
    """Why ``name``, a trainer-side method, cannot be served from feedback alone."""
    return (f"policy: {name!r} is a trainer-side method: {TRAINER_SIDE_METHODS[name]}, so it needs the trainer's "
            "model, which a service that only sees feedback does not have; run it inside the CPT backend "
            f"(mixagent agent evaluate --policies {name})")



def family_of_class(name: str, cls: type[Any]) -> PolicyFamily:
    """A family whose members are ``cls(**params)`` (``level`` is not a constructor argument)."""

    def build(ctx: PolicyContext, params: dict[str, Any]) -> MixingPolicy:
        kwargs = {k: v for k, v in params.items() if k != "level"}
        try:
            policy: MixingPolicy = cls(**kwargs)
        except TypeError:
            known = sorted(inspect.signature(cls).parameters)
            raise ContractError(f"params: {sorted(kwargs)} are not parameters of {name!r} (it takes {known})") from None
        return policy

    return PolicyFamily(name=name, build=build, description=(inspect.getdoc(cls) or "").split("\n")[0])


@cache
def _entry_point_families() -> dict[str, PolicyFamily]:
    found: dict[str, PolicyFamily] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:
            warnings.warn(f"entry point {ep.name!r} = {ep.value!r} ({ENTRY_POINT_GROUP}) does not load: {e}",
                          RuntimeWarning, stacklevel=2)
            continue
        if isinstance(obj, PolicyFamily):
            family = obj
        elif inspect.isclass(obj):
            family = family_of_class(ep.name, obj)
        else:
            warnings.warn(f"entry point {ep.name!r} = {ep.value!r} is neither a PolicyFamily nor a policy class",
                          RuntimeWarning, stacklevel=2)
            continue
        if family.name != ep.name:
            family = PolicyFamily(ep.name, family.build, family.draw, family.description, family.shares)
        found.setdefault(ep.name, family)
    return found


def policy_families() -> dict[str, PolicyFamily]:
    """Every family by name (the entry points of every installed package)."""
    return dict(_entry_point_families())


def get_family(name: str) -> PolicyFamily:
    fams = policy_families()
    try:
        return fams[name]
    except KeyError:
        raise RegistryError(f"policy: unknown policy or family {name!r} (known: {', '.join(sorted(fams))})") from None


def draw_params(family: str, ctx: PolicyContext, seed: int, index: int = 0, level: Level = "field") -> dict[str, Any]:
    """Parameters of one member of the behaviour family ``family``, drawn from ``seed``."""
    return _draw(get_family(family), ctx, seed, index, level)


def build_policy(name: str, params: dict[str, Any], ctx: PolicyContext) -> MixingPolicy:
    """The policy ``name`` with ``params`` for the problem ``ctx``."""
    return _build(get_family(name), params, ctx)
