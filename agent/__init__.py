"""Policies and the loop that runs them: the ``MixingPolicy`` interface, the baselines, the learned
agent and its artifacts, the policy registry (``mixagent.policies`` entry points), the runner that
drives the env with any policy (trajectory generation and evaluation), and the evaluation report.

Importing this package loads only what serving needs (``policy``, ``baselines``: numpy, no torch).
The runner, generation, training and evaluation modules import ``mixagent.env`` (torch) and are
imported explicitly. Must not import ``mixagent.service``.
"""

from mixagent.agent.baselines import (
    BASELINES,
    FixedTargetSharePolicy,
    LossSoftmaxPolicy,
    PriorPolicy,
    UniformPolicy,
    build_baseline,
)
from mixagent.agent.policy import ArtifactError, PolicyCard, load_artifact
from mixagent.trajectories.policy import MixingPolicy, PolicyFactory

__all__ = [
    "MixingPolicy",
    "PolicyFactory",
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
