"""The data contract shared by every part of mixagent, and its encodings.

``env`` and ``agent`` build on these types; ``service`` speaks them over HTTP. Nothing here imports
torch, d3rlpy or any web framework.
"""

from mixagent.trajectories.contract import *  # noqa: F403
from mixagent.trajectories.contract import __all__ as _contract_all
from mixagent.trajectories.encoding import *  # noqa: F403
from mixagent.trajectories.encoding import __all__ as _encoding_all

__all__ = [*_contract_all, *_encoding_all]
