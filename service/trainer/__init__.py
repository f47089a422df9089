"""The trainer side: what runs inside a user's training job and talks to the mixing server.

One import surface (names are imported lazily, so ``from mixagent.service.trainer import
MixingClient`` never loads torch)::

    from mixagent.service.trainer import MixingClient, MixingRun        # httpx only
    from mixagent.service.trainer import LiveWeightSampler              # needs torch
    from mixagent.service.trainer import MixagentCallback, MixingTrainer  # needs transformers

``client`` (HTTP client, retries, typed errors), ``sampler`` (a torch ``Sampler`` whose weights
change while a ``DataLoader`` iterates), ``hf`` (Hugging Face ``Trainer`` callback), ``demo`` (a real
CPT episode in ``mixagent.env`` against an in-process server; the one module here that imports the
server and the env).

Must not be imported by ``mixagent.service.server``. ``client`` must not import torch or
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixagent.service.trainer import client as _client
from mixagent.service.trainer.client import *  # noqa: F403 - the client is the surface's core (httpx only)

_LAZY = {"LiveWeightSampler": "sampler", "MixagentCallback": "hf", "MixingTrainer": "hf"}
"""Names whose modules import torch / transformers: imported on first use."""

__all__ = [*_client.__all__, *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
