"""The real continual-pre-training environment, one floor above the ground (``mixagent.trajectories``).

Holds setting files and their validation (``setting``), the corpus sources and their extraction
(``sources``, ``corpus``), tokenisation (``data``), models (``model``), pre-training of the base
(``base``), the CPT backend with its held-out evaluation (``backend``), content-keyed caches
(``cache``), provenance digests (``provenance``), the gymnasium ``DataMixingEnv`` (``mixing_env``)
and the ``corpus`` / ``env`` commands (``cli``). The env takes actions (weights), never policies;
methods that act inside the training interval (TANDEM, Aioli) come in through the backend's
trainer-side hook (``trainer_side``).

Must not import ``mixagent.agent`` or ``mixagent.service`` (no policies, no HTTP) nor d3rlpy;
``tests/test_layering.py`` checks every arrow. Importing this package is cheap (no torch); the
torch-backed names load on first use.
"""

from typing import Any

from mixagent.env.registration import ENV_ID, register
from mixagent.env.setting import DEFAULT_SETTING, Setting, SettingError, load_setting

__all__ = ["DEFAULT_SETTING", "Setting", "SettingError", "load_setting", "DataMixingEnv", "ENV_ID", "register"]

def __getattr__(name: str) -> Any:
    if name == "DataMixingEnv":
        from mixagent.env.mixing_env import DataMixingEnv  # noqa: PLC0415 - torch loads on first use

        return DataMixingEnv
    raise AttributeError(f"module 'mixagent.env' has no attribute {name!r}")


try:  # registering needs gymnasium, which only the `train` extra installs
    register()
except ImportError:  # pragma: no cover - service-only install
    pass
