"""A PyTorch ``Sampler`` whose domain weights can change while a ``DataLoader`` iterates.

Why a sampler: a ``DataLoader``'s sampler runs in the main process and only *indices* go to the
worker processes, so weights set in the main process (e.g. by :class:`MixagentCallback` after a
decision) take effect for the next indices drawn, however many workers load the data. Weights kept
inside an ``IterableDataset`` would be copied into each worker and never see the change.

**The delay.** Indices are drawn ahead of the batches the training loop takes, so after
:meth:`LiveWeightSampler.set_weights` the next batches still follow the old mixture:

* ``prefetch_factor × num_workers`` batches with worker processes (the ``DataLoader`` keeps that
  many batches of indices in flight; 0 with ``num_workers=0``);
* plus one batch under ``accelerate`` (its ``DataLoaderShard`` fetches one batch ahead to know which
  is the last), hence in the Hugging Face ``Trainer``, which always runs through accelerate;
* plus, when ``chunk`` does not divide the batch size, the rest of the chunk being drawn (at most
  ``chunk - 1`` indices).

With the defaults (``prefetch_factor=2``, 2 workers) that is 4 batches, 5 in the ``Trainer``; the
``Trainer``'s own default (``dataloader_num_workers=0``) gives 1. Against an interval of tens of
optimizer steps per decision this is small; set ``chunk`` to (a divisor of) the batch size to avoid
the partial chunk. Measured in ``tests/service/trainer/test_sampler.py`` (real workers, real
accelerate).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from mixagent.console import missing_extra

try:
    from torch.utils.data import Sampler
except ModuleNotFoundError as e:  # torch comes with the train extra
    raise ModuleNotFoundError(missing_extra(e, "mixagent.service.trainer.sampler") or str(e), name=e.name) from e

__all__ = ["LiveWeightSampler", "LiveWeights", "normalise_weights"]


class LiveWeights(Protocol):
    """What the trainer-side integrations put the served weights into (the sampler, the
    ``datasets`` mixture): the next examples drawn follow them."""

    def set_weights(self, weights: Mapping[str, float] | Sequence[float]) -> None: ...


def normalise_weights(weights: Mapping[str, float] | Sequence[float], names: Sequence[str]) -> np.ndarray:
    """``weights`` (``{name: share}`` over exactly ``names``, or one value per name) as shares
    summing to 1; ValueError naming the missing, unknown or bad values."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        missing = sorted(set(names) - set(weights))
        if unknown or missing:
            raise ValueError(f"weights: missing domains {missing}, unknown domains {unknown}")
        w = np.array([weights[n] for n in names], dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (len(names),):
            raise ValueError(f"weights: {w.size} values for {len(names)} domains")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights: need finite non-negative values with a positive sum, got {w.tolist()}")
    return w / w.sum()


class LiveWeightSampler(Sampler[int]):
    """Yield dataset indices: each draw picks a domain by the current weights, then an index of
    that domain uniformly (with replacement).

    Args:
        domain_indices: for each domain (in ``names`` order), the dataset indices of its examples.
        names: domain names, so weights can be given as ``{name: share}``.
        weights: initial weights (mapping or sequence); default uniform.
        num_samples: indices per epoch (``len(sampler)``).
        seed: the draws of epoch e use ``seed + e``.
        chunk: indices drawn per weights read (the weights are read once a chunk); a divisor of the
            batch size keeps every batch on one mixture (see the module's note on the delay).
    """

    def __init__(
        self,
        domain_indices: Sequence[Sequence[int]],
        names: Sequence[str],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        *,
        num_samples: int,
        seed: int = 0,
        chunk: int = 16,
    ):
        if len(domain_indices) != len(names):
            raise ValueError(f"domain_indices: {len(domain_indices)} lists for {len(names)} names")
        empty = [n for n, ix in zip(names, domain_indices, strict=True) if len(ix) == 0]
        if empty:
            raise ValueError(f"domain_indices: domain(s) {empty} have no examples")
        if num_samples < 1:
            raise ValueError(f"num_samples: must be >= 1, got {num_samples}")
        self.names = list(names)
        self._indices = [np.asarray(ix, dtype=np.int64) for ix in domain_indices]
        self.num_samples = num_samples
        self.seed = seed
        self.chunk = chunk
        self.epoch = 0
        self._weights = np.full(len(names), 1.0 / len(names))
        if weights is not None:
            self.set_weights(weights)

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self._weights.tolist(), strict=True))

    def set_weights(self, weights: Mapping[str, float] | Sequence[float]) -> None:
        """Replace the mixture (renormalised); the next indices drawn follow it."""
        self._weights = normalise_weights(weights, self.names)  # one assignment: iterators read old or new

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        left = self.num_samples
        while left > 0:
            n = min(self.chunk, left)
            domains = rng.choice(len(self._indices), size=n, p=self._weights)
            for k in domains:
                ix = self._indices[k]
                yield int(ix[rng.integers(len(ix))])
            left -= n
