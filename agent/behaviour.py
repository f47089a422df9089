"""The online baselines as noisy behaviour families, so trajectories also cover feedback-driven runs.

Each family below is a ``mixagent.policies`` entry point (``pyproject.toml``): a fresh baseline per
trajectory, its parameters drawn from the trajectory's seed, and every mixture perturbed in logit
space by ``N(0, σ²)`` (σ drawn per trajectory, see
:func:`~mixagent.trajectories.schedules.noisy_policy_family`). Noise matters: a deterministic
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
from typing import Any, Literal, NamedTuple

import numpy as np

from mixagent.agent.baselines import build_baseline
from mixagent.trajectories.policy import MixingPolicy, PolicyContext, PolicyFamily
from mixagent.trajectories.schedules import noisy_policy_family

__all__ = [
    "BehaviourBaseline",
    "BEHAVIOUR_BASELINES",
    "NOISY_FIXED_TARGET_SHARE",
    "NOISY_LOSS_SOFTMAX",
    "NOISY_LOSS_SOFTMAX_PLAIN",
    "BEHAVIOUR_FAMILIES",
]


class BehaviourBaseline(NamedTuple):
    """A baseline rule with fixed parameters and one parameter drawn per trajectory in [lo, hi]."""

    rule: str
    fixed: dict[str, Any]
    param: str
    lo: float
    hi: float
    scale: Literal["linear", "log"] = "linear"

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        if self.scale == "log":
            value = math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))
        else:
            value = rng.uniform(self.lo, self.hi)
        return {self.param: round(float(value), 4)}

    def build(self, ctx: PolicyContext, params: dict[str, Any]) -> MixingPolicy:
        return build_baseline(self.rule, {**self.fixed, self.param: params[self.param]})

    def family(self, name: str) -> PolicyFamily:
        return noisy_policy_family(name, self.build, draw_policy_params=lambda ctx, rng, k: self.draw(rng),
                                   description=f"{self.rule} {self.fixed or ''} with logit noise")


BEHAVIOUR_BASELINES: dict[str, BehaviourBaseline] = {
    "noisy_fixed_target_share": BehaviourBaseline("fixed-target-share", {}, "target_share", 0.05, 0.95),
    "noisy_loss_softmax": BehaviourBaseline("loss-softmax", {"relative": True}, "temperature", 0.05, 1.0, "log"),
    "noisy_loss_softmax_plain": BehaviourBaseline("loss-softmax", {"relative": False}, "temperature", 0.5, 5.0, "log"),
}

NOISY_FIXED_TARGET_SHARE = BEHAVIOUR_BASELINES["noisy_fixed_target_share"].family("noisy_fixed_target_share")
NOISY_LOSS_SOFTMAX = BEHAVIOUR_BASELINES["noisy_loss_softmax"].family("noisy_loss_softmax")
NOISY_LOSS_SOFTMAX_PLAIN = BEHAVIOUR_BASELINES["noisy_loss_softmax_plain"].family("noisy_loss_softmax_plain")
BEHAVIOUR_FAMILIES: dict[str, PolicyFamily] = {
    f.name: f for f in (NOISY_FIXED_TARGET_SHARE, NOISY_LOSS_SOFTMAX, NOISY_LOSS_SOFTMAX_PLAIN)
}
