"""The mixing service, in two rooms that share nothing but the data contract.

``mixagent.service.server``
    The HTTP server: the FastAPI app (``server.main.create_app``), wire schemas, the run store and
    its database tables, auth, metrics, errors, the policy registry, the export of served runs as
    trajectories, and the ``serve`` / ``export-runs`` commands. It must not import torch,
    transformers, d3rlpy, ``mixagent.env`` or the trainer room (checked by
    ``tests/service/test_layering.py``); it loads policies through ``mixagent.agent.card``,
    ``mixagent.agent.onnx_policy`` and ``mixagent.agent.baselines`` only.

``mixagent.service.trainer``
    What runs inside a user's training job: the HTTP client (``trainer.client``, httpx only), the
    PyTorch sampler (``trainer.sampler``), the Hugging Face callback (``trainer.hf``) and the
    ``demo`` command, which drives ``mixagent.env`` against an in-process server. torch and
    transformers are imported only by the modules that need them.

The trainer side's import surface is ``mixagent.service.trainer`` (see its docstring and
docs/service.md); this package forwards the same names on first use (``from mixagent.service
import MixingClient``) without importing the trainer room, or torch, at ``import mixagent.service``.

``mixagent.service.cli`` registers ``serve``, ``export-runs``, ``db`` and ``demo`` on the root command
and imports each room only when its command runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_TRAINER = "mixagent.service.trainer"
TRAINER_NAMES = frozenset({
    "MixagentError", "ServiceUnavailable", "RequestRejected", "AuthError", "RunNotFound", "StepConflict",
    "ServedDecision", "MixingClient", "MixingRun", "Domain", "DomainSpace", "Feedback", "Objective",
    "continuation_log_likelihood", "field_scores", "LiveWeightSampler", "LiveMixtureDataset", "MixagentCallback",
    "MixingTrainer", "LiveLitdataMixture", "broadcast_decision",
    "field_score_metrics",
})
"""The names of :mod:`mixagent.service.trainer` (its ``__all__``; tests/service/test_layering.py keeps the two
equal). Only these import the trainer room, so ``import mixagent.service.server`` never does."""


def __getattr__(name: str) -> Any:
    """The trainer side's names (``MixingClient``, ``LiveWeightSampler``, ...), from
    :mod:`mixagent.service.trainer`, imported on first use."""
    if name not in TRAINER_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_TRAINER), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *TRAINER_NAMES])
