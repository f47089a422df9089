"""Behaviour schedules: the mixing heuristics whose real CPT runs make up the offline dataset.

A *family* (``constant``, ``ramp_up``, …) draws its parameters from a seeded generator; a
*schedule* built from those parameters chooses the weights of every stage. Parameters are plain
JSON (they go into :attr:`TrajectoryHeader.schedule_params`), so a trajectory can be rebuilt from
its header alone.

Levels. ``level="field"`` schedules choose one share per field (the 2-D source/target action of the
default setting) and split each field over its domains by the priors; ``level="domain"`` schedules
choose one share per domain (the K-D action). Families built on a target share ``s_t`` (constant,
ramps, switches, cycles, uniform share) spread ``s_t`` over the target fields by their priors and, at
domain level, split each field over its domains by a per-trajectory Dirichlet draw (``split``).

Every mixture is projected onto the image of the action map of its level,
``(1-ε)·softmax(β·a) + ε·prior`` with the setting's β and ε, so
:func:`~mixagent.trajectories.encoding.weights_to_action` labels behaviour data exactly.

| family                | target share / mixture per stage t = 0 … T-1                          |
|-----------------------|-----------------------------------------------------------------------|
| ``constant``          | ``s`` from the grid 0, 0.1, …, 1 (the k-th draw takes grid point k)    |
| ``dirichlet``         | ``w_t ~ Dirichlet(α·n·prior)`` over fields/domains, α log-uniform     |
| ``uniform_share``     | ``s_t ~ U(0, 1)`` independently per stage                              |
| ``logit_walk``        | ``x_0 ~ N(0, 1)``, ``x_{t+1} = x_t + N(0, σ²)``, ``w_t = softmax(x_t)`` |
| ``ramp_up``           | ``s_0 + (s_1 - s_0)·(t/(T-1))^p`` with ``s_0 < 0.4``, ``s_1 > 0.6``     |
| ``ramp_down``         | the same with ``s_0 > 0.6``, ``s_1 < 0.4``                              |
| ``switch_target_first`` | ``hi`` for ``t < τ``, then ``lo`` (target first, replay last)         |
| ``switch_replay_first`` | ``lo`` for ``t < τ``, then ``hi``                                     |
| ``cycle``             | sine/square/triangle wave between ``lo`` and ``hi``, period ``P``      |
| ``dirichlet_ramp``    | from one ``Dirichlet(s·prior)`` mixture to another, ``w_t = (1-u_t)·a +  |
|                       | u_t·b`` with ``u_t = (t/(T-1))^p``: mixtures that move within fields  |
| ``static_dirichlet``  | one constant mixture ``w ~ Dirichlet(s·prior)``, ``s/n`` log-uniform in |
|                       | [0.1, 10]; every 11th draw a near-corner ``m`` on one unit (RegMix's data) |

Every schedule is an open-loop :class:`~mixagent.trajectories.policy.MixingPolicy` (it ignores the
feedback), and every family is a :class:`~mixagent.trajectories.policy.PolicyFamily` constant of
this module, published through the ``mixagent.policies`` entry-point group (``pyproject.toml``) like
every other policy. :func:`noisy_policy_family` turns any ``MixingPolicy`` into a "policy + logit
noise" behaviour family (``agent/behaviour.py`` does that for the online baselines).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixagent.trajectories.contract import (
    SOURCE_FIELD,
    ContractError,
    DomainSpace,
    History,
    Weights,
)
from mixagent.trajectories.encoding import action_to_weights, field_shares_to_weights, softmax, weights_to_action
from mixagent.trajectories.policy import (
    DrawFn,
    Level,
    MixingPolicy,
    PolicyContext,
    PolicyFamily,
)

__all__ = [
    "BUILTIN_FAMILIES",
    "SCHEDULE_FAMILIES",
    "CONSTANT_GRID",
    "Level",
    "StaticSchedule",
    "NoisyPolicy",
    "noisy_policy_family",
    "draw_params",
    "build_policy",
    "CONSTANT",
    "UNIFORM_SHARE",
    "RAMP_UP",
    "RAMP_DOWN",
    "SWITCH_TARGET_FIRST",
    "SWITCH_REPLAY_FIRST",
    "CYCLE",
    "DIRICHLET",
    "LOGIT_WALK",
    "STATIC_DIRICHLET",
    "DIRICHLET_RAMP",
]

CONSTANT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
"""Target shares of the ``constant`` family; the k-th constant trajectory takes point k mod 11."""

@dataclass(frozen=True)
class StaticSchedule:
    """A schedule fixed in advance: row t of ``matrix`` ``[T, K]`` is the mixture of stage t."""

    matrix: np.ndarray
    name: str = "static"

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(self.matrix[0])

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        t = len(history.weights)
        if t >= len(self.matrix):
            raise ContractError(f"schedule: stage {t} is past the horizon {len(self.matrix)}")
        return Weights.from_raw(self.matrix[t])


def draw_params(
    family: PolicyFamily, ctx: PolicyContext, seed: int, index: int = 0, level: Level = "field"
) -> dict[str, Any]:
    """The parameters of one member of ``family``, drawn from ``seed`` (deterministic)."""
    if family.draw is None:
        raise ContractError(f"schedule: family '{family.name}' has no parameter draw (it is not a behaviour family)")
    rng = np.random.default_rng(seed)
    params = family.draw(ctx, rng, index)
    params = {"level": level, **params}
    if level == "domain" and "split" not in params and family.shares:
        params["split"] = _draw_split(ctx, rng)
    return params


def build_policy(family: PolicyFamily, params: dict[str, Any], ctx: PolicyContext) -> MixingPolicy:
    """The member of ``family`` with ``params`` (checks the level first)."""
    level = params.get("level", "field")
    if level not in ("field", "domain"):
        raise ContractError(f"schedule_params.level: must be 'field' or 'domain', got {level!r}")
    return family.build(ctx, params)


# ----- helpers: from unit shares / target shares to projected domain weights -----------------------


def _project(ctx: PolicyContext, level: Level, unit_shares: np.ndarray) -> np.ndarray:
    """Domain weights for one stage: expand unit shares to domains, then map onto the action image."""
    u = np.maximum(np.asarray(unit_shares, dtype=np.float64), 0.0)
    u = u / u.sum()
    space = ctx.space
    raw = field_shares_to_weights(space, u) if level == "field" else u
    spec = ctx.spec(level)
    a = weights_to_action(Weights.from_raw(raw), space, spec)
    return action_to_weights(a, space, spec).as_array()


def _target_units(ctx: PolicyContext, level: Level, share: float, split: list[float] | None) -> np.ndarray:
    """Unit shares for target share ``share``: targets by field prior, then (domain level) ``split``."""
    space = ctx.space
    fp = space.field_priors()
    is_src = np.array([f == SOURCE_FIELD for f in space.fields])
    field = np.where(is_src, fp / fp[is_src].sum() * (1 - share), fp / fp[~is_src].sum() * share)
    if level == "field":
        return field
    if split is None:
        raise ContractError("schedule_params.split: a domain-level schedule needs a within-field split")
    within = np.asarray(split, dtype=np.float64)
    if within.shape != (space.size,) or not np.isfinite(within).all() or (within <= 0).any():
        raise ContractError(f"schedule_params.split: need {space.size} positive shares, got {split!r}")
    m = space.field_matrix()
    within = within / (m.T @ (m @ within))
    return (m.T @ field) * within


def _draw_split(ctx: PolicyContext, rng: np.random.Generator) -> list[float]:
    """A random within-field split of domains, around the priors (concentration log-uniform 1..30)."""
    c = float(np.exp(rng.uniform(math.log(1.0), math.log(30.0))))
    alpha = c * ctx.space.priors() * ctx.space.size
    return [round(float(x), 6) + 1e-6 for x in rng.dirichlet(alpha)]


def _share_schedule(name: str, ctx: PolicyContext, params: dict[str, Any], shares: np.ndarray) -> StaticSchedule:
    level: Level = params.get("level", "field")
    split = params.get("split")
    rows = [_project(ctx, level, _target_units(ctx, level, float(np.clip(s, 0, 1)), split)) for s in shares]
    return StaticSchedule(np.array(rows), name)


def _share_family(name: str, description: str, draw: DrawFn | None,
                  shares: Callable[[dict[str, Any], int], np.ndarray]) -> PolicyFamily:
    """A family defined by a target-share series ``shares(params, T)``."""
    return PolicyFamily(
        name=name,
        build=lambda ctx, p: _share_schedule(name, ctx, p, shares(p, ctx.horizon)),
        draw=draw,
        description=description,
        shares=True,
    )


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 4)


def _progress(horizon: int) -> np.ndarray:
    return np.arange(horizon) / max(horizon - 1, 1)


# ----- the built-in families ---------------------------------------------------------------------

CONSTANT = _share_family(
    "constant",
    "constant target share from a grid",
    lambda ctx, rng, k: {"share": CONSTANT_GRID[k % len(CONSTANT_GRID)]},
    lambda p, T: np.full(T, float(p["share"])),
)
UNIFORM_SHARE = _share_family(
    "uniform_share",
    "target share drawn uniformly per stage",
    lambda ctx, rng, k: {"seed": int(rng.integers(2**31))},
    lambda p, T: np.random.default_rng(p["seed"]).uniform(0, 1, T),
)


def _ramp(p: dict[str, Any], T: int) -> np.ndarray:
    return p["start"] + (p["end"] - p["start"]) * _progress(T) ** p["power"]


def _draw_ramp(up: bool) -> DrawFn:
    def draw(ctx: PolicyContext, rng: np.random.Generator, k: int) -> dict[str, Any]:
        lo, hi = _u(rng, 0.0, 0.4), _u(rng, 0.6, 1.0)
        power = round(float(np.exp(rng.uniform(math.log(0.5), math.log(2.0)))), 4)
        return {"start": lo, "end": hi, "power": power} if up else {"start": hi, "end": lo, "power": power}

    return draw


RAMP_UP = _share_family("ramp_up", "monotone ramp of the target share, low to high", _draw_ramp(True), _ramp)
RAMP_DOWN = _share_family("ramp_down", "monotone ramp of the target share, high to low", _draw_ramp(False), _ramp)


def _switch(p: dict[str, Any], T: int) -> np.ndarray:
    at = p["at"] if "at" in p else round(float(p["at_fraction"]) * T)
    return np.where(np.arange(T) < at, p["first"], p["then"])


def _draw_switch(target_first: bool) -> DrawFn:
    def draw(ctx: PolicyContext, rng: np.random.Generator, k: int) -> dict[str, Any]:
        lo, hi = _u(rng, 0.0, 0.4), _u(rng, 0.6, 1.0)
        at = int(rng.integers(1, max(ctx.horizon, 2)))
        return {"first": hi, "then": lo, "at": at} if target_first else {"first": lo, "then": hi, "at": at}

    return draw


SWITCH_TARGET_FIRST = _share_family(
    "switch_target_first", "target-heavy first, then replay (source-heavy)", _draw_switch(True), _switch
)
SWITCH_REPLAY_FIRST = _share_family(
    "switch_replay_first", "source-heavy first, then target-heavy", _draw_switch(False), _switch
)


def _cycle(p: dict[str, Any], T: int) -> np.ndarray:
    x = (np.arange(T) / p["period"] + p["phase"]) % 1.0
    if p["shape"] == "sine":
        wave = 0.5 - 0.5 * np.cos(2 * np.pi * x)
    elif p["shape"] == "square":
        wave = (x >= 0.5).astype(float)
    else:
        wave = 1 - np.abs(2 * x - 1)
    return p["lo"] + (p["hi"] - p["lo"]) * wave


CYCLE = _share_family(
    "cycle",
    "periodic target share (sine, square or triangle wave)",
    lambda ctx, rng, k: {
        "lo": _u(rng, 0.0, 0.4),
        "hi": _u(rng, 0.6, 1.0),
        "period": int(rng.integers(2, max(ctx.horizon // 2, 2) + 1)),
        "phase": _u(rng, 0.0, 1.0),
        "shape": str(rng.choice(["sine", "square", "triangle"])),
    },
    _cycle,
)


def _dirichlet(ctx: PolicyContext, p: dict[str, Any]) -> StaticSchedule:
    level: Level = p.get("level", "field")
    rng = np.random.default_rng(p["seed"])
    alpha = float(p["alpha"]) * ctx.units(level) * ctx.unit_priors(level)
    return StaticSchedule(
        np.array([_project(ctx, level, rng.dirichlet(alpha)) for _ in range(ctx.horizon)]), "dirichlet"
    )


DIRICHLET = PolicyFamily(
    "dirichlet",
    _dirichlet,
    lambda ctx, rng, k: {
        "alpha": round(float(np.exp(rng.uniform(math.log(0.2), math.log(5.0)))), 4),
        "seed": int(rng.integers(2**31)),
    },
    "independent Dirichlet(α·n·prior) mixture per stage",
)


def _logit_walk(ctx: PolicyContext, p: dict[str, Any]) -> StaticSchedule:
    level: Level = p.get("level", "field")
    rng = np.random.default_rng(p["seed"])
    n = ctx.units(level)
    x = np.log(ctx.unit_priors(level)) + rng.normal(0, 1, n)
    rows = []
    for _ in range(ctx.horizon):
        rows.append(_project(ctx, level, softmax(x)))
        x = x + rng.normal(0, float(p["sigma"]), n)
    return StaticSchedule(np.array(rows), "logit_walk")


LOGIT_WALK = PolicyFamily(
    "logit_walk",
    _logit_walk,
    lambda ctx, rng, k: {"sigma": _u(rng, 0.2, 1.0), "seed": int(rng.integers(2**31))},
    "Gaussian random walk of the logits, softmax per stage",
)

CORNER_EVERY = 11
"""Every ``CORNER_EVERY``-th draw of ``static_dirichlet`` (k ≡ 10 mod 11) is a near-corner mixture; the
j-th corner sits on unit ``j mod n``, so 140 draws hold 128 Dirichlet mixtures and one corner per
domain of a 12-domain space."""


def _draw_static_dirichlet(ctx: PolicyContext, rng: np.random.Generator, k: int) -> dict[str, Any]:
    if k % CORNER_EVERY == CORNER_EVERY - 1:
        return {"corner": k // CORNER_EVERY, "mass": _u(rng, 0.6, 0.9)}
    return {"concentration": round(float(np.exp(rng.uniform(math.log(0.1), math.log(10.0)))), 4),
            "seed": int(rng.integers(2**31))}


def _static_dirichlet(ctx: PolicyContext, p: dict[str, Any]) -> StaticSchedule:
    """A constant mixture: ``Dirichlet(s·n·prior)`` with ``s = concentration`` (normalised priors), or
    the near-corner ``mass`` on unit ``corner mod n`` with the rest spread by the priors."""
    level: Level = p.get("level", "field")
    n, prior = ctx.units(level), ctx.unit_priors(level)
    prior = prior / prior.sum()
    if "corner" in p:
        j = int(p["corner"]) % n
        rest = prior.copy()
        rest[j] = 0.0
        u = (1 - float(p["mass"])) * rest / rest.sum()
        u[j] = float(p["mass"])
    else:
        u = np.random.default_rng(p["seed"]).dirichlet(float(p["concentration"]) * n * prior)
    return StaticSchedule(np.tile(_project(ctx, level, u), (ctx.horizon, 1)), "static_dirichlet")


STATIC_DIRICHLET = PolicyFamily(
    "static_dirichlet",
    _static_dirichlet,
    _draw_static_dirichlet,
    "one constant Dirichlet(s·prior) mixture per run, s over a log range, plus near-corners",
)

def _dirichlet_ramp(ctx: PolicyContext, p: dict[str, Any]) -> StaticSchedule:
    """From one Dirichlet mixture to another along ``u_t = (t/(T-1))^power`` (projected per stage)."""
    level: Level = p.get("level", "field")
    rng = np.random.default_rng(p["seed"])
    alpha = float(p["concentration"]) * ctx.units(level) * ctx.unit_priors(level) / ctx.unit_priors(level).sum()
    a, b = rng.dirichlet(alpha), rng.dirichlet(alpha)
    u = _progress(ctx.horizon) ** float(p["power"])
    return StaticSchedule(np.array([_project(ctx, level, (1 - x) * a + x * b) for x in u]), "dirichlet_ramp")


DIRICHLET_RAMP = PolicyFamily(
    "dirichlet_ramp",
    _dirichlet_ramp,
    lambda ctx, rng, k: {
        "concentration": round(float(np.exp(rng.uniform(math.log(0.3), math.log(10.0)))), 4),
        "power": round(float(np.exp(rng.uniform(math.log(0.5), math.log(2.0)))), 4),
        "seed": int(rng.integers(2**31)),
    },
    "a ramp from one Dirichlet(s·prior) mixture to another (moves within fields over the run)",
)

SCHEDULE_FAMILIES: dict[str, PolicyFamily] = {
    f.name: f
    for f in (CONSTANT, UNIFORM_SHARE, RAMP_UP, RAMP_DOWN, SWITCH_TARGET_FIRST, SWITCH_REPLAY_FIRST, CYCLE,
              DIRICHLET, LOGIT_WALK)
}
"""The built-in behaviour schedules by name (each also declared as a ``mixagent.policies`` entry point)."""

BUILTIN_FAMILIES: tuple[str, ...] = tuple(SCHEDULE_FAMILIES)
"""The families every dataset covers by default, in the round-robin order of a generation plan."""


# ----- online policies with noise ------------------------------------------------------------------


@dataclass
class NoisyPolicy:
    """An online policy whose every mixture is perturbed in logit space: ``softmax(log w + N(0, σ²))``
    over fields or domains (``level``), then projected like every behaviour mixture."""

    policy: MixingPolicy
    ctx: PolicyContext
    level: Level
    sigma: float
    seed: int

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self.name = f"noisy-{self.policy.name}"

    def initial_weights(self, space: DomainSpace) -> Weights:
        return self._perturb(self.policy.initial_weights(space))

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        if not history.weights:
            w = self.policy.initial_weights(space)
        else:
            w = self.policy.next_weights(space, history)
        return self._perturb(w)

    def _perturb(self, w: Weights) -> Weights:
        space = self.ctx.space
        v = w.as_array()
        if self.level == "field":
            v = space.field_matrix() @ v
        x = np.log(np.maximum(v, 1e-12)) + self._rng.normal(0, self.sigma, v.size)
        return Weights.from_raw(_project(self.ctx, self.level, softmax(x)))


def noisy_policy_family(
    name: str,
    factory: Callable[[PolicyContext, dict[str, Any]], MixingPolicy],
    *,
    sigma: tuple[float, float] = (0.1, 0.6),
    draw_policy_params: DrawFn | None = None,
    description: str = "online policy with logit noise",
) -> PolicyFamily:
    """The family "policy + logit noise": ``factory(ctx, params)`` builds the policy (a fresh one per
    trajectory), ``σ`` is drawn uniformly from ``sigma``, and ``draw_policy_params`` may add the
    policy's own parameters. The policy must be deterministic given its parameters."""

    def draw(ctx: PolicyContext, rng: np.random.Generator, k: int) -> dict[str, Any]:
        extra = draw_policy_params(ctx, rng, k) if draw_policy_params else {}
        return {"sigma": _u(rng, *sigma), "seed": int(rng.integers(2**31)), **extra}

    def build(ctx: PolicyContext, p: dict[str, Any]) -> MixingPolicy:
        return NoisyPolicy(factory(ctx, p), ctx, p.get("level", "field"), float(p["sigma"]), int(p["seed"]))

    return PolicyFamily(name, build, draw, description)
