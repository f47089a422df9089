"""The ground floor: the data contract every part of mixagent speaks, and what stands on it alone.

Holds the contract types (domains, weights, feedback, history, objective, trajectory records), the
versioned observation/action/reward encoding, the ``MixingPolicy`` interface and the behaviour
schedules (open-loop policies), storage, reading, validation, replay, stats and plots of trajectory
datasets. ``env``, ``agent`` and ``service`` build on it; it imports none of them, nor torch, d3rlpy
or any web framework (``tests/test_layering.py`` checks every arrow).
"""

from mixagent.trajectories.contract import *  # noqa: F403
from mixagent.trajectories.contract import __all__ as _contract_all
from mixagent.trajectories.encoding import *  # noqa: F403
from mixagent.trajectories.encoding import __all__ as _encoding_all
from mixagent.trajectories.policy import MixingPolicy, PolicyContext, PolicyFactory, PolicyFamily

__all__ = [*_contract_all, *_encoding_all, "MixingPolicy", "PolicyContext", "PolicyFactory", "PolicyFamily"]
