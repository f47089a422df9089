"""The trainer side: what runs inside a user's training job and talks to the mixing server.

This package is the one import surface of the trainer side; everything a training loop needs is
here (names whose modules need torch or transformers load on first use, so importing the client never
loads torch)::

    from mixagent.service.trainer import (
        MixingClient, MixingRun, ServedDecision,               # the HTTP client and the run handle (httpx only)
        MixagentError, ServiceUnavailable, RequestRejected, AuthError, RunNotFound, StepConflict,
        DomainSpace, Domain, Feedback, Objective,           # the contract types a trainer builds
        continuation_log_likelihood, field_scores,          # the one field-score definition (numpy)
        LiveWeightSampler, LiveMixtureDataset,              # need torch (the second: a `datasets` mixture)
        LiveLitdataMixture, broadcast_decision,             # a litdata mixture; one decision for all ranks
        MixagentCallback, MixingTrainer, field_score_metrics,  # need transformers
    )

Modules: ``client`` (HTTP client, retries, typed errors, the background reporter), ``scores`` (the
field score), ``mixture`` (what every loader shares: the served weights and the decision they came
from, the live-weighted draw and its exact-resume state), ``sampler`` (a torch ``Sampler`` whose
weights change while a ``DataLoader`` iterates), ``hf_datasets`` (a live-weighted mixture of Hugging
Face ``datasets`` sources), ``litdata_mixture`` (the same over litdata ``StreamingDataset``\\ s),
``distributed`` (several ranks sampling under one decision), ``hf`` (Hugging Face ``Trainer``
integration), ``demo`` (a real CPT episode in ``mixagent.env`` against an in-process server; the one
module here that imports the server and the env). ``mixagent.service`` forwards the same names.

Must not be imported by ``mixagent.service.server``. ``client`` and ``scores`` must not import torch or
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixagent.service.trainer import client as _client
from mixagent.service.trainer.client import *  # noqa: F403 - the client is the surface's core (httpx only)
from mixagent.service.trainer.scores import continuation_log_likelihood, field_scores
from mixagent.trajectories.contract import Domain, DomainSpace, Feedback, Objective

_LAZY = {"LiveWeightSampler": "sampler", "LiveMixtureDataset": "hf_datasets", "LiveLitdataMixture": "litdata_mixture",
         "broadcast_decision": "distributed", "MixagentCallback": "hf", "MixingTrainer": "hf",
         "field_score_metrics": "hf"}
"""Names whose modules import torch / transformers: imported on first use."""

__all__ = [*_client.__all__, "Domain", "DomainSpace", "Feedback", "Objective", "continuation_log_likelihood",
           "field_scores", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
