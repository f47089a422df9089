"""A live-weighted mixture of Hugging Face ``datasets`` sources, one per domain, whose weights the
service changes during training; with an exact-resume state.

    mixture = LiveMixtureDataset({"web": web_ds, "code": code_ds, "proofs": proofs_ds}, run.weights, seed=0)
    trainer = MixingTrainer(model, args, train_dataset=mixture, callbacks=[MixagentCallback(run, mixture)], ...)
    # or, in a plain loop: for batch in DataLoader(mixture, batch_size=16): ...; run.report(fb); mixture.follow(run)

Every example comes from the domain drawn by the current weights (``datasets.interleave_datasets``
fixes its probabilities when it is built; this re-reads them at every draw). A map-style source is
walked through a seeded permutation per pass, an iterable one in its own order, restarting when it
ends; the example is yielded as the source gives it, plus ``domain_key`` (``"domain"``) naming its
domain unless that is None.

**Weights reach DataLoader workers.** They live in a shared-memory tensor, so
:meth:`set_weights` in the main process is seen by every worker process (fork or spawn) at its
next draw; each worker (and each rank under ``torch.distributed``) then draws from its own stream
and a disjoint shard of each source (a fixed stride of one seeded permutation of a map-style source,
of the examples of an iterable one).

**Exact resume** (``state_dict`` / ``load_state_dict``, single process: ``num_workers=0``, the
Trainer's default): the state is the draw generator's state, the per-domain cursors, the number of
draws and the weights with the decision they came from (the scheme every mixagent loader shares:
:mod:`~mixagent.service.trainer.mixture`), so a mixture restored from a checkpoint yields exactly the examples the
uninterrupted one would have, after any number of weight changes. With worker processes the
main process cannot see the workers' cursors; use ``num_workers=0`` where exact resume matters.
In the ``Trainer``, :func:`mixture_checkpoint_callback` does it with ``resume_from_checkpoint``: it
writes the state into every checkpoint folder, minus the batch accelerate has fetched ahead (whose
draws and weights are replayed on resume), and loads it before the first batch of a resumed run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.service.trainer.mixture import LiveMixture
from mixagent.service.trainer.sampler import LiveWeightSampler

__all__ = ["LiveMixtureDataset", "MIXTURE_STATE_FILE", "mixture_checkpoint_callback", "read_checkpoint_state",
           "write_checkpoint_state"]


class LiveMixtureDataset(LiveMixture):
    """Examples from ``sources`` (domain name -> ``datasets.Dataset`` or ``IterableDataset``, or
    any sized and indexable or iterable collection), each from the domain the current weights draw.

    Args:
        sources: one source per domain, in the run's domain order.
        weights: initial shares (mapping or sequence); default uniform.
        seed: seeds the draws and each map-style source's permutations.
        num_samples: examples per iteration (None: endless; the Trainer then needs ``max_steps``).
        domain_key: the key added to each (dict) example naming its domain (None: none added).
    """

    def _check_source(self, name: str, src: Any) -> None:
        super()._check_source(name, src)
        if not hasattr(src, "__getitem__") and not hasattr(src, "__iter__"):
            raise ValueError(f"sources: domain {name!r} is neither indexable nor iterable ({type(src).__name__})")

    def _fetcher(self, stride: int, offset: int) -> Callable[[int, int], Any]:
        iterators: dict[int, Iterator[Any]] = {}
        orders: dict[int, tuple[int, np.ndarray]] = {}

        def fetch(k: int, cursor: int) -> Any:
            src = self.sources[self.names[k]]
            if hasattr(src, "__getitem__") and hasattr(src, "__len__"):
                return src[self._map_index(k, cursor, stride, offset, orders)]
            return self._next_streamed(k, src, iterators, cursor, stride, offset)

        return fetch

    def _map_index(self, k: int, cursor: int, stride: int, offset: int,
                   orders: dict[int, tuple[int, np.ndarray]]) -> int:
        """The ``cursor``-th index of this shard of map-style domain ``k``: the shard is every
        ``stride``-th index of one seeded permutation (fixed, so shards stay disjoint), walked in a
        fresh seeded order each pass (``orders`` keeps the current pass's order per domain)."""
        n = len(self.sources[self.names[k]])
        size = len(range(offset, n, stride))
        if size == 0:
            raise ValueError(f"sources: domain {self.names[k]!r} has {n} examples, fewer than the {stride} "
                             "shards (ranks x workers) that read it")
        epoch, i = divmod(cursor, size)
        if k not in orders or orders[k][0] != epoch:
            shard = np.random.default_rng([self.seed, k]).permutation(n)[offset::stride]
            orders[k] = (epoch, shard[np.random.default_rng([self.seed, k, epoch]).permutation(size)])
        return int(orders[k][1][i])

    def _next_streamed(self, k: int, src: Any, iterators: dict[int, Iterator[Any]], cursor: int, stride: int,
                       offset: int) -> Any:
        """The ``cursor``-th example of this shard's stride of an iterable source (restarting it at
        its end); on a fresh iterator (a resume) the examples before ``cursor`` are skipped."""
        it = iterators.get(k)
        if it is None:
            it = iterators[k] = self._strided(src, stride, offset)
            for _ in range(cursor):
                next(it)
        return next(it)

    def _strided(self, src: Any, stride: int, offset: int) -> Iterator[Any]:
        while True:
            seen = False
            for i, example in enumerate(src):
                if i % stride == offset:
                    seen = True
                    yield example
            if not seen:
                raise ValueError(f"sources: an iterable domain gave no example to shard {offset} of {stride}")


MIXTURE_STATE_FILE = "mixagent_mixture.json"
"""The loader's state inside each of the Trainer's checkpoint folders."""


def state_file(loader: LiveMixture | LiveWeightSampler) -> str:
    """The file of ``loader``'s state in a checkpoint folder (one per rank under ``torch.distributed``)."""
    return MIXTURE_STATE_FILE if loader.world == 1 else f"mixagent_mixture.rank{loader.rank}.json"


def write_checkpoint_state(loader: LiveMixture | LiveWeightSampler, args: Any, state: Any) -> None:
    """Write ``loader``'s state into the Trainer's checkpoint folder of ``state.global_step``; accelerate
    has fetched one batch beyond the last one trained on, so the state is the one before it."""
    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
    folder.mkdir(parents=True, exist_ok=True)
    ahead = args.per_device_train_batch_size * max(1, args.n_gpu)
    (folder / state_file(loader)).write_text(json.dumps(loader.state_dict(behind=ahead)))


def read_checkpoint_state(loader: LiveMixture | LiveWeightSampler, args: Any, state: Any, who: str) -> None:
    """Load into ``loader`` the state of the checkpoint a Trainer resumes from (``who`` names the caller
    in the errors: a resume without ``ignore_data_skip=True``, a checkpoint without the state)."""
    if not args.ignore_data_skip:
        raise ValueError(f"{who}: resuming needs TrainingArguments(ignore_data_skip=True): the loader resumes its "
                         "own stream, a skip would skip it twice")
    path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / state_file(loader)
    if not path.is_file():
        raise ValueError(f"{who}: {path} does not exist; the checkpoint was saved without it, so the loader cannot "
                         "resume exactly")
    loader.load_state_dict(json.loads(path.read_text()))


def mixture_checkpoint_callback(mixture: LiveMixture | LiveWeightSampler) -> Any:
    """A ``transformers`` callback that makes ``Trainer.train(resume_from_checkpoint=...)`` resume the
    mixture (or sampler) exactly: every checkpoint folder gets its ``state_dict``
    (``mixagent_mixture.json``), and a resumed run loads it before the first batch. The loader
    resumes its own stream, so the Trainer must not skip batches itself: ``ignore_data_skip=True``
    (a resume without it is refused, naming the flag). :class:`~mixagent.service.trainer.hf.
    MixagentCallback` does the same for the loader it feeds; this one is for a run without it."""
    from transformers import TrainerCallback  # noqa: PLC0415 - the train extra

    class MixtureCheckpoint(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step > 0:
                read_checkpoint_state(mixture, args, state, "mixture_checkpoint_callback")

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            write_checkpoint_state(mixture, args, state)

    return MixtureCheckpoint()
