"""Per-run data pools: each domain's available training text capped at a fraction of its train split.

CausalMix (``agent/causalmix.py``) claims to carry the best mixture over to a data pool it was not
fitted on, so the pool has to vary from run to run, and be known before training. A *pool* is one
cap ``c_k ∈ (0, 1]`` per domain: the run trains on the first ``round(c_k·n_k)`` tokens of domain k's
train split (a prefix, so a smaller pool lies inside every larger one). Windows are still drawn
uniformly from what is left, so a small pool repeats its text: a domain capped at 1% of math-tiny's
~550k tokens, given a twelfth of a ~1M-token run, is seen ~15 times. Held-out evaluation is never
capped, so scores stay comparable across pools.

A :class:`PoolSpec` says how a plan chooses each run's pool: *drawn* (every domain's cap
log-uniform in ``[low, high]``, independently, from the run's own seed) or *fixed* (the same caps
for every run: the test pools, e.g. the full pool). The run's caps go into its trajectory header
(``schedule_params["pool"]``), so a record says which text it trained on. Runs without a pool
are untouched (the env never rebuilds its sampler for them).

Pool covariates (:data:`COVARIATES`) are statistics of a pool known before training, per domain:
the base model's held-out loss, the pool's size, its compression ratio and its token entropy.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["POOL_PARAM", "POOL_STREAM", "COVARIATES", "ZLIB_LEVEL", "PoolError", "PoolSpec", "parse_pool", "pool_of",
           "cap_arrays", "domain_statistics", "pool_covariates"]

POOL_PARAM = "pool"
"""The key of a run's caps in its header's ``schedule_params``."""
POOL_STREAM = 0x9001
"""Second word of a pool's seed, ``[run seed, POOL_STREAM]``: the pool's draws are independent of
the schedule's and the sampler's, which use the run's seed alone."""
COVARIATES = ("heldout_loss", "log10_tokens", "zlib_ratio", "entropy_bits")
"""Per domain, in this order: the base model's mean held-out loss (nats per token; its first
evaluation, before any training), log10 of the pool's token count, the zlib ratio of the pool's
token stream (compressed / raw bytes: how repetitive its text is as the model sees it; no
tokenizer needed, so pretrained checkpoints work too) and the Shannon entropy of its unigram token
distribution (bits per token: how varied its vocabulary is)."""


ZLIB_LEVEL = 1
"""zlib's fastest level: 6x faster than its default on a 550k-token domain, and what the covariate
needs is the ordering of pools by redundancy, not the best compression."""


class PoolError(ValueError):
    """A pool that cannot be used: an unknown domain, a cap outside (0, 1], or a cap that leaves a
    domain without a single training window."""


@dataclass(frozen=True)
class PoolSpec:
    """How a plan chooses each run's pool: ``caps`` fixed (domains left out keep their full train
    split), or each domain's cap drawn log-uniform in ``[low, high]`` from the run's seed."""

    low: float = 0.01
    """Smallest drawn cap (a drawn pool only)."""
    high: float = 1.0
    """Largest drawn cap (a drawn pool only)."""
    caps: tuple[tuple[str, float], ...] | None = None
    """The fixed caps by domain (None: drawn per run)."""

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high <= 1:
            raise PoolError(f"pool: need 0 < low <= high <= 1, got low={self.low}, high={self.high}")
        for name, cap in self.caps or ():
            _check_cap(name, cap)

    def caps_for(self, names: Sequence[str], seed: int) -> dict[str, float]:
        """The caps of the run with ``seed`` over the domains ``names`` (4 significant digits, so
        the JSON record holds exactly the caps the run used)."""
        if self.caps is not None:
            fixed = dict(self.caps)
            unknown = sorted(set(fixed) - set(names))
            if unknown:
                raise PoolError(f"pool: {unknown} are not domains of this setting (it has {list(names)})")
            return {n: fixed.get(n, 1.0) for n in names}
        rng = np.random.default_rng([seed, POOL_STREAM])
        logs = rng.uniform(math.log(self.low), math.log(self.high), size=len(names))
        return {n: min(1.0, float(f"{math.exp(x):.4g}")) for n, x in zip(names, logs, strict=True)}

    def pinned(self) -> dict[str, Any]:
        """What a generation folder pins (``generate.json``)."""
        if self.caps is not None:
            return {"caps": dict(self.caps)}
        return {"low": self.low, "high": self.high}


def _check_cap(name: str, cap: float) -> None:
    if not isinstance(cap, (int, float)) or isinstance(cap, bool) or not 0 < cap <= 1:
        raise PoolError(f"pool.{name}: a cap must be a fraction in (0, 1], got {cap!r}")


def parse_pool(text: str) -> PoolSpec | None:
    """``--pool``: ``""`` (no pool), ``draw`` or ``draw:LOW`` or ``draw:LOW:HIGH`` (drawn caps),
    ``full`` (every cap 1) or ``NAME=CAP,NAME=CAP`` (fixed caps; other domains full)."""
    text = text.strip()
    if not text:
        return None
    if text == "full":
        return PoolSpec(caps=())
    if text == "draw" or text.startswith("draw:"):
        parts = text.split(":")[1:]
        try:
            bounds = [float(p) for p in parts]
        except ValueError:
            raise PoolError(f"--pool: {text!r}: expected draw[:LOW[:HIGH]] with numbers") from None
        if len(bounds) > 2:
            raise PoolError(f"--pool: {text!r}: expected draw[:LOW[:HIGH]]")
        default = PoolSpec()
        return PoolSpec(bounds[0] if bounds else default.low, bounds[1] if len(bounds) > 1 else default.high)
    caps = []
    for item in text.split(","):
        name, eq, value = item.partition("=")
        try:
            cap = float(value)
        except ValueError:
            cap = math.nan
        if not eq or not name.strip() or math.isnan(cap):
            raise PoolError(f"--pool: {item!r}: expected NAME=CAP (e.g. coq=0.05), 'full' or 'draw[:LOW[:HIGH]]'")
        caps.append((name.strip(), cap))
    return PoolSpec(caps=tuple(caps))


def pool_of(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The caps a run trained on, from its header's ``schedule_params`` (no pool: every cap 1)."""
    caps = params.get(POOL_PARAM)
    if caps is None:
        return dict.fromkeys(names, 1.0)
    if not isinstance(caps, Mapping) or set(caps) != set(names):
        raise PoolError(f"schedule_params.pool: expected one cap per domain of {list(names)}, got {caps!r}")
    for name, cap in caps.items():
        _check_cap(name, cap)
    return {n: float(caps[n]) for n in names}


def cap_arrays(arrays: Mapping[str, np.ndarray], caps: Mapping[str, float], min_tokens: int) -> dict[str, np.ndarray]:
    """Each domain's train tokens cut to its cap (a prefix; views, no copy). A cap that leaves fewer
    than ``min_tokens`` (one training window) is refused naming the domain."""
    unknown = sorted(set(caps) - set(arrays))
    if unknown:
        raise PoolError(f"pool: {unknown} are not domains of this setting (it has {list(arrays)})")
    out = {}
    for name, a in arrays.items():
        cap = caps.get(name, 1.0)
        _check_cap(name, cap)
        n = round(cap * a.size)
        if n < min_tokens:
            raise PoolError(f"pool.{name}: cap {cap} leaves {n} of its {a.size} train tokens; a training window "
                            f"needs {min_tokens} (cpt.seq_len + 1): the domain would be empty")
        out[name] = a[:n]
    return out


def domain_statistics(tokens: np.ndarray) -> tuple[float, float, float]:
    """``(log10 tokens, zlib ratio, entropy bits)`` of one domain's pool (see :data:`COVARIATES`)."""
    if tokens.size == 0:
        raise PoolError("pool: an empty domain has no statistics")
    raw = np.ascontiguousarray(tokens.astype(np.uint32 if tokens.max() > 65535 else np.uint16)).tobytes()
    ratio = len(zlib.compress(raw, ZLIB_LEVEL)) / len(raw)
    p = np.bincount(tokens.astype(np.int64)).astype(np.float64)
    p = p[p > 0] / tokens.size
    return math.log10(tokens.size), ratio, float(-(p * np.log2(p)).sum())


def pool_covariates(arrays: Mapping[str, np.ndarray], caps: Mapping[str, float], heldout_loss: Mapping[str, float],
                    min_tokens: int) -> np.ndarray:
    """The covariates ``[K, len(COVARIATES)]`` of the pool ``caps`` over the full train arrays
    ``arrays`` (domains in their order), the base model's held-out losses beside them."""
    missing = sorted(set(arrays) - set(heldout_loss))
    if missing:
        raise PoolError(f"heldout_loss: no base held-out loss for domains {missing}")
    pooled = cap_arrays(arrays, caps, min_tokens)
    return np.array([[float(heldout_loss[n]), *domain_statistics(pooled[n])] for n in arrays])
