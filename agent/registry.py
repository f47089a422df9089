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
]

ENTRY_POINT_GROUP = "mixagent.policies"



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
