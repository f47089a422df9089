"""mixagent: learned data-mixing schedules for continual pre-training.

Parts, each its own top-level folder mapped into this namespace, imports pointing one way
(``tests/test_layering.py``): ``mixagent.trajectories`` (``trajectories/``, the ground floor: the
data contract, encoding, storage) <- ``mixagent.env`` (``env/``, the real CPT environment) <-
``mixagent.agent`` (``agent/``, policies and the runner) <- ``mixagent.service`` (``service/``, the
HTTP server and the trainer side); ``mixagent.configs`` (``configs/``) holds the settings as package
data.

This folder (``mixagent/``) is the roof: this module (``__version__``), ``console`` (terminal output
and the one-line hint for a missing extra) and ``cli`` (the ``mixagent`` command, which attaches
every part's command group). ``__init__`` and ``console`` must import nothing of mixagent, so every
floor may use them; only ``cli`` stands on the floors below.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mixagent")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
