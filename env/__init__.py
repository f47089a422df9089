"""The real continual-pre-training environment: corpora, tokenizer, base model, CPT backend,
evaluation and the gymnasium ``DataMixingEnv``.

Importing this package is cheap (no torch); the torch-backed names load on first use.
"""

from typing import Any

from mixagent.env.setting import DEFAULT_SETTING, Setting, SettingError, load_setting

__all__ = ["DEFAULT_SETTING", "Setting", "SettingError", "load_setting", "DataMixingEnv", "ENV_ID", "register"]

ENV_ID = "mixagent/DataMixing-v0"


def register() -> None:
    """Register ``mixagent/DataMixing-v0`` with gymnasium (idempotent)."""
    import gymnasium  # noqa: PLC0415

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(ENV_ID, entry_point="mixagent.env.mixing_env:DataMixingEnv")


def __getattr__(name: str) -> Any:
    if name == "DataMixingEnv":
        from mixagent.env.mixing_env import DataMixingEnv  # noqa: PLC0415

        return DataMixingEnv
    raise AttributeError(f"module 'mixagent.env' has no attribute {name!r}")


try:  # registering needs gymnasium, which only the `train` extra installs
    register()
except ImportError:  # pragma: no cover - service-only install
    pass
