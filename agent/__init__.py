"""Policies and the loop that runs them, above the env: the baselines (``baselines``), the noisy
baselines as behaviour families (``behaviour``), policy artifacts and their loading (``policy``),
the policy registry over the ``mixagent.policies`` entry points (``registry``), the runner that
drives the env with any policy (``runner``), trajectory generation (``generate``) and evaluation
(``evaluate``) on that runner, the learned agent's dataset, networks, training and ONNX export
(``dataset``, ``networks``, ``train``, ``export``), and the ``agent`` / ``trajectories generate``
commands (``cli``). The ``MixingPolicy`` interface it re-exports lives on the ground floor
(``mixagent.trajectories.policy``).

Importing this package loads only what serving needs (``policy``, ``baselines``: numpy, no torch).
The runner, generation, training and evaluation modules import ``mixagent.env`` (torch) and are
imported explicitly. Must not import ``mixagent.service``; ``policy`` and ``baselines``, which the
server loads, must not import torch, d3rlpy or gymnasium (``tests/test_layering.py``).
"""

from mixagent.agent.baselines import (
    BASELINES,
    FixedTargetSharePolicy,
    LossSoftmaxPolicy,
    PriorPolicy,
    UniformPolicy,
    build_baseline,
)
from mixagent.agent.card import ArtifactError, PolicyCard
from mixagent.agent.onnx_policy import load_artifact
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
