"""The field score, one definition for every integration (numpy only).

A field score is the mean per-token log-likelihood of the field's held-out *continuations*: each
held-out window of ``n`` next-token predictions is cut after its first ``c = round(context_fraction·n)``
predictions (half by default), and the score of a domain is the mean of ``log p(token | everything
before it)`` over the remaining predictions of all its windows (the second half of each window given
the first half); a field's score is the plain mean of its domains' scores. Nats per token, higher is
better. ``mixagent.env``'s backend computes exactly this (``CPTBackend.feedback_from_nll``); the
Hugging Face integration computes it with :func:`continuation_log_likelihood` from the per-token
log-probabilities of its evaluation (``tests/service/trainer/test_hf.py`` checks the two agree on the
same model and windows).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mixagent.trajectories.contract import DomainSpace

__all__ = ["CONTEXT_FRACTION", "IGNORE_INDEX", "continuation_log_likelihood", "field_scores"]

CONTEXT_FRACTION = 0.5
"""The share of each window's predictions that is context only (the env's ``eval.context_fraction``)."""
IGNORE_INDEX = -100
"""A label that is not predicted (padding), as in Hugging Face models."""


def continuation_log_likelihood(token_logprobs: np.ndarray, labels: np.ndarray,
                                context_fraction: float = CONTEXT_FRACTION) -> float:
    """The mean log-likelihood of the continuations of one domain's windows.

    ``token_logprobs[r, i]`` is ``log p(labels[r, i + 1] | labels[r, :i + 1])`` (``[rows, n]``, the
    model's log-probability of each next token); ``labels`` (``[rows, n + 1]``) mark with
    :data:`IGNORE_INDEX` what is not predicted (padding). Per row, the valid predictions after the
    first ``round(context_fraction · valid)`` count, pooled over all rows."""
    token_logprobs = np.asarray(token_logprobs, dtype=np.float64)
    valid = np.asarray(labels)[:, 1:] != IGNORE_INDEX
    if token_logprobs.shape != valid.shape:
        raise ValueError(f"token_logprobs: shape {token_logprobs.shape}, labels give {valid.shape} predictions")
    picked = []
    for row, ok in zip(token_logprobs, valid, strict=True):
        idx = np.flatnonzero(ok)
        picked.append(row[idx[round(context_fraction * len(idx)):]])
    values = np.concatenate(picked) if picked else np.zeros(0)
    if values.size == 0:
        raise ValueError("no continuation tokens: every window is padding or shorter than 2 predictions")
    return float(values.mean())


def field_scores(space: DomainSpace, domain_scores: Mapping[str, float]) -> dict[str, float]:
    """Each field's score: the plain mean of its domains' continuation log-likelihoods."""
    return {f: float(np.mean([domain_scores[d] for d in space.domains_of(f)])) for f in space.fields}
