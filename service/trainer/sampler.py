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

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixagent.console import missing_extra

try:
    from torch.utils.data import Sampler
except ModuleNotFoundError as e:  # torch comes with the train extra
    raise ModuleNotFoundError(missing_extra(e, "mixagent.service.trainer.sampler") or str(e), name=e.name) from e

from mixagent.service.trainer.mixture import LiveWeights, ServedWeights, normalise_weights

__all__ = ["LiveWeightSampler", "LiveWeights", "normalise_weights"]

RECENT_CHUNKS = 4096
"""Chunks remembered for :meth:`LiveWeightSampler.state_dict` ``behind`` (a few batches ahead)."""


@dataclass(frozen=True)
class _Chunk:
    """One chunk of draws: where it starts in the epoch, the generator's state before it, its weights."""

    start: int
    rng: Mapping[str, Any]
    weights: list[float]


class LiveWeightSampler(ServedWeights, Sampler[int]):
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

    Under ``torch.distributed`` (initialised before the sampler is built) each rank draws its own
    stream from every ``world``-th index of each domain (a disjoint shard).

    **Exact resume**: :meth:`state_dict` (the epoch, the indices yielded in it, the generator's state
    at the chunk being drawn and the weights with the decision they came from) and
    :meth:`load_state_dict`; the next iteration of the saved epoch goes on with exactly the indices
    the uninterrupted sampler would have yielded.
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
        if chunk < 1:
            raise ValueError(f"chunk: must be >= 1, got {chunk}")
        self.num_samples = num_samples
        self.seed = seed
        self.chunk = chunk
        self.epoch = 0
        self._init_weights(names, weights)
        too_few = [n for n, ix in zip(names, domain_indices, strict=True) if len(ix) < self.world]
        if too_few:
            raise ValueError(f"domain_indices: domain(s) {too_few} have fewer examples than the {self.world} ranks")
        self._indices = [np.asarray(ix, dtype=np.int64)[self.rank::self.world] for ix in domain_indices]
        self._yielded = 0
        """Indices yielded in the current epoch."""
        self._rng: np.random.Generator | None = None
        self._chunks: deque[_Chunk] = deque(maxlen=RECENT_CHUNKS)
        self._resume: dict[str, Any] | None = None
        """A loaded state the next iteration of its epoch goes on from."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def _generator(self) -> np.random.Generator:
        return np.random.default_rng(self.seed + self.epoch if self.world == 1 else [self.seed + self.epoch, self.rank])

    def __iter__(self) -> Iterator[int]:
        resume, self._resume = self._resume, None
        replay: list[list[float]] = []
        skip = 0
        rng = self._rng = self._generator()
        self._chunks.clear()
        position = 0
        if resume is not None and resume["epoch"] == self.epoch:
            rng.bit_generator.state = resume["rng"]
            position, skip, replay = int(resume["position"]), int(resume["skip"]), list(resume["replay"])
        self._yielded = position + skip
        while position < self.num_samples:
            n = min(self.chunk, self.num_samples - position)
            w = np.asarray(replay.pop(0)) if replay else self._current().copy()
            self._chunks.append(_Chunk(position, rng.bit_generator.state, w.tolist()))
            domains = rng.choice(len(self._indices), size=n, p=w / w.sum())
            for j, k in enumerate(domains):
                ix = self._indices[k]
                i = int(ix[rng.integers(len(ix))])
                if j < skip:
                    continue
                self._yielded += 1
                yield i
            skip = 0
            position += n

    # ----- exact resume ------------------------------------------------------------------------
    def state_dict(self, behind: int = 0) -> dict[str, Any]:
        """What a checkpoint keeps: the epoch, the indices yielded in it, the generator's state at
        the chunk being drawn, and the weights with the run, decision and policy they came from.

        ``behind``: the DataLoader has drawn this many indices ahead of what was trained on
        (``prefetch_factor x num_workers`` batches with workers, one more under accelerate); the
        state is then the one before them, and the weights of the chunks they came from are kept so
        that a resume draws them again exactly, before it follows the live weights."""
        at = self._yielded - behind
        recorded = self._yielded - (self._chunks[0].start if self._chunks else self._yielded)
        holding = [c for c in self._chunks if c.start <= at < c.start + min(self.chunk, self.num_samples - c.start)]
        if self._rng is None and behind == 0:  # never iterated: the epoch starts afresh
            rng, position, skip, replay = self._generator().bit_generator.state, 0, 0, []
        elif holding:  # the chunk drawn at that point, and every chunk after it, again with their weights
            first = holding[0]
            rng, position, skip = first.rng, first.start, at - first.start
            replay = [c.weights for c in self._chunks if c.start >= first.start]
        elif self._rng is not None and behind == 0:  # every chunk drawn is used up: the next one is new
            rng, position, skip, replay = self._rng.bit_generator.state, at, 0, []
        else:
            raise ValueError(f"behind: {behind} indices back, but {recorded} are recorded")
        return {**self._served_state(), "epoch": self.epoch, "position": position, "skip": skip, "rng": rng,
                "replay": replay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go on where ``state`` was taken: the next iteration of its epoch (``set_epoch`` it, or
        leave the epoch the state sets) yields exactly what the uninterrupted sampler would have."""
        self._load_served_state(state)
        self.epoch = int(state["epoch"])
        self._resume = {k: state[k] for k in ("epoch", "position", "skip", "rng", "replay")}
