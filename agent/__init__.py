"""Mixing policies (the ``MixingPolicy`` interface, baselines, the learned agent) and the evaluation
harness that drives :mod:`mixagent.env` with them."""

from mixagent.agent.baselines import (
    BASELINES,
    FixedTargetSharePolicy,
    LossSoftmaxPolicy,
    PriorPolicy,
    UniformPolicy,
    build_baseline,
)
from mixagent.agent.policy import ArtifactError, MixingPolicy, PolicyCard, load_artifact

__all__ = [
    "MixingPolicy",
    "PolicyCard",
    "ArtifactError",
    "load_artifact",
    "BASELINES",
    "build_baseline",
    "UniformPolicy",
    "PriorPolicy",
    "FixedTargetSharePolicy",
    "LossSoftmaxPolicy",
]
