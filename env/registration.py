"""The environment's gymnasium id and its registration (idempotent, needs the ``train`` extra).

A module of its own so that ``mixing_env`` and the package ``__init__`` both take the id from
here, and ``import mixagent.env`` stays cheap: gymnasium is imported only to register.
"""

from __future__ import annotations

__all__ = ["ENV_ID", "register"]

ENV_ID = "mixagent/DataMixing-v0"
"""The id ``gymnasium.make`` knows the env by (bump the version when its spaces change)."""


def register() -> None:
    """Register :data:`ENV_ID` with gymnasium (idempotent)."""
    import gymnasium  # noqa: PLC0415 - the train extra; importing mixagent.env stays cheap without it

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(ENV_ID, entry_point="mixagent.env.mixing_env:DataMixingEnv")
