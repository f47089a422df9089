"""The online baselines as noisy behaviour families, so trajectories also cover feedback-driven runs.

Import this module (``mixagent trajectories generate --plugin mixagent.agent.behaviour``) and every
rule below becomes a schedule family: a fresh baseline per trajectory, its parameters drawn from the
trajectory's seed, and every mixture perturbed in logit space by ``N(0, σ²)`` (σ drawn per trajectory,
see :func:`~mixagent.trajectories.schedules.register_policy_family`). Noise matters: a deterministic
baseline visits one path through the state space, and offline RL needs actions around it.

| family                       | baseline (agent/baselines.py)        | drawn per trajectory              |
|------------------------------|--------------------------------------|-----------------------------------|
| ``noisy_fixed_target_share`` | ``fixed-target-share``               | ``target_share ~ U(0.05, 0.95)``  |
| ``noisy_loss_softmax``       | ``loss-softmax`` (relative form)     | ``temperature ~ logU(0.05, 1)``   |
| ``noisy_loss_softmax_plain`` | ``loss-softmax``, ``relative=false`` | ``temperature ~ logU(0.5, 5)``    |

The temperature ranges span "almost the prior" to "almost one-hot" for the losses of the shipped
settings (2–7 nats at the start of CPT). Parameters are rounded to 4 digits so that the headers, and
with them the trajectory ids, are readable and stable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mixagent.agent.baselines import build_baseline
from mixagent.trajectories.schedules import ScheduleContext, families, register_policy_family

__all__ = ["BEHAVIOUR_BASELINES", "register_all"]

DrawParams = Callable[[np.random.Generator], dict[str, Any]]


def _uniform(name: str, lo: float, hi: float) -> DrawParams:
    return lambda rng: {name: round(float(rng.uniform(lo, hi)), 4)}


def _log_uniform(name: str, lo: float, hi: float) -> DrawParams:
    return lambda rng: {name: round(float(math.exp(rng.uniform(math.log(lo), math.log(hi)))), 4)}


BEHAVIOUR_BASELINES: dict[str, tuple[str, dict[str, Any], DrawParams]] = {
    "noisy_fixed_target_share": ("fixed-target-share", {}, _uniform("target_share", 0.05, 0.95)),
    "noisy_loss_softmax": ("loss-softmax", {"relative": True}, _log_uniform("temperature", 0.05, 1.0)),
    "noisy_loss_softmax_plain": ("loss-softmax", {"relative": False}, _log_uniform("temperature", 0.5, 5.0)),
}
"""family → (baseline rule, fixed parameters, draw of the per-trajectory parameters)."""


def register_all() -> tuple[str, ...]:
    """Register every family of :data:`BEHAVIOUR_BASELINES` that is not registered yet."""
    for family, (rule, fixed, draw) in BEHAVIOUR_BASELINES.items():
        if family in families():
            continue
        names = tuple(draw(np.random.default_rng(0)))

        def factory(ctx: ScheduleContext, p: dict[str, Any], rule=rule, fixed=fixed, names=names):
            return build_baseline(rule, {**fixed, **{n: p[n] for n in names}})

        register_policy_family(family, factory, draw_policy_params=lambda ctx, rng, k, draw=draw: draw(rng))
    return tuple(BEHAVIOUR_BASELINES)


register_all()
