"""mixagent: learned data-mixing schedules for continual pre-training.

Parts (each its own top-level folder, mapped into this namespace): ``mixagent.env`` (real CPT
environment), ``mixagent.trajectories`` (the data contract), ``mixagent.agent`` (policies),
``mixagent.service`` (HTTP API).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mixagent")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
