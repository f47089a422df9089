"""A live-weighted mixture of Hugging Face ``datasets`` sources, one per domain, whose weights the
service changes during training; with an exact-resume state.

    mixture = LiveMixtureDataset({"web": web_ds, "code": code_ds, "proofs": proofs_ds}, run.weights, seed=0)
    trainer = MixingTrainer(model, args, train_dataset=mixture, callbacks=[MixagentCallback(run, mixture)], ...)
    # or, in a plain loop: for batch in DataLoader(mixture, batch_size=16): ...; mixture.set_weights(run.report(fb))

Every example comes from the domain drawn by the current weights (``datasets.interleave_datasets``
fixes its probabilities when it is built; this re-reads them at every draw). A map-style source is
walked through a seeded permutation per pass, an iterable one in its own order, restarting when it
ends; the example is yielded as the source gives it, plus ``domain_key`` (``"domain"``) naming its
domain unless that is None.

**Weights reach DataLoader workers.** They live in a shared-memory tensor, so
:meth:`set_weights` in the main process is seen by every worker process (fork or spawn) at its
next draw; each worker then draws from its own stream (seeded by its id) and a disjoint stride of
each map-style source.

**Exact resume** (``state_dict`` / ``load_state_dict``, single process: ``num_workers=0``, the
Trainer's default): the state is the draw generator's state, the per-domain cursors, the number of
draws and the weights, so a mixture restored from a checkpoint yields exactly the examples the
uninterrupted one would have, after any number of weight changes. With worker processes the
main process cannot see the workers' cursors; use ``num_workers=0`` where exact resume matters.
In the ``Trainer``, :func:`mixture_checkpoint_callback` does it with ``resume_from_checkpoint``: it
writes the state into every checkpoint folder, minus the batch accelerate has fetched ahead (whose
draws and weights are replayed on resume), and loads it before the first batch of a resumed run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mixagent.console import missing_extra
from mixagent.service.trainer.sampler import normalise_weights

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ModuleNotFoundError as e:  # torch comes with the train extra
    raise ModuleNotFoundError(missing_extra(e, "mixagent.service.trainer.hf_datasets") or str(e), name=e.name) from e

__all__ = ["LiveMixtureDataset", "MIXTURE_STATE_FILE", "mixture_checkpoint_callback"]

STATE_VERSION = 1
RECENT_DRAWS = 65_536
"""Draws remembered for :meth:`LiveMixtureDataset.state_dict` ``behind`` (a batch or two ahead)."""


class LiveMixtureDataset(IterableDataset):  # type: ignore[type-arg]  # torch's generic is unparametrised here
    """Examples from ``sources`` (domain name -> ``datasets.Dataset`` or ``IterableDataset``, or
    any sized and indexable or iterable collection), each from the domain the current weights draw.

    Args:
        sources: one source per domain, in the run's domain order.
        weights: initial shares (mapping or sequence); default uniform.
        seed: seeds the draws and each map-style source's permutations.
        num_samples: examples per iteration (None: endless; the Trainer then needs ``max_steps``).
        domain_key: the key added to each (dict) example naming its domain (None: none added).
    """

    def __init__(self, sources: Mapping[str, Any], weights: Mapping[str, float] | Sequence[float] | None = None,
                 *, seed: int = 0, num_samples: int | None = None, domain_key: str | None = "domain"):
        super().__init__()
        if not sources:
            raise ValueError("sources: give at least one domain")
        self.names = list(sources)
        self.sources = dict(sources)
        for name, src in self.sources.items():
            if hasattr(src, "__len__") and len(src) == 0:
                raise ValueError(f"sources: domain {name!r} is empty")
            if not hasattr(src, "__getitem__") and not hasattr(src, "__iter__"):
                raise ValueError(f"sources: domain {name!r} is neither indexable nor iterable ({type(src).__name__})")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples: must be >= 1 or None, got {num_samples}")
        self.seed, self.num_samples, self.domain_key = seed, num_samples, domain_key
        self._shared = torch.full((len(self.names),), 1.0 / len(self.names), dtype=torch.float64)
        self._shared.share_memory_()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        if weights is not None:
            self.set_weights(weights)
        self._rng = np.random.default_rng(seed)
        self._cursors = [0] * len(self.names)
        self._draws = 0
        self._epoch_start = 0
        """Draws before the current iteration (epoch): ``num_samples`` counts per iteration."""
        self._recent: deque[tuple[Mapping[str, Any], tuple[int, ...], list[float]]] = deque(maxlen=RECENT_DRAWS)
        """Per recent draw: the generator state and cursors before it, and the weights it used."""
        self._replay: list[list[float]] = []
        """Weights the next draws use instead of the live ones (a resume replaying drawn-ahead batches)."""

    # ----- the weights -------------------------------------------------------------------------
    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self._shared.tolist(), strict=True))

    def set_weights(self, weights: Mapping[str, float] | Sequence[float]) -> None:
        """Replace the mixture (renormalised); the next draw of every process follows it."""
        self._shared.copy_(torch.from_numpy(normalise_weights(weights, self.names)))

    # ----- iteration ---------------------------------------------------------------------------
    def _map_index(self, k: int, cursor: int, stride: int, offset: int) -> int:
        n = len(self.sources[self.names[k]])
        position = cursor * stride + offset
        epoch, i = divmod(position, n)
        return int(np.random.default_rng([self.seed, k, epoch]).permutation(n)[i])

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        stride, offset = (info.num_workers, info.id) if info is not None else (1, 0)
        rng = self._rng if info is None else np.random.default_rng([self.seed, 1 + offset, self._draws])
        cursors = self._cursors if info is None else [0] * len(self.names)
        iterators: dict[int, Iterator[Any]] = {}
        if info is None and self.num_samples is not None and self._draws - self._epoch_start >= self.num_samples:
            self._epoch_start = self._draws  # the last iteration was complete: a new one starts
        done = self._draws - self._epoch_start if info is None else 0  # a resumed iteration goes on
        budget = None if self.num_samples is None else max(0, self.num_samples - done)
        while budget is None or budget > 0:
            w = np.asarray(self._replay.pop(0)) if info is None and self._replay else self._shared.numpy()
            if info is None:
                self._recent.append((rng.bit_generator.state, tuple(cursors), w.tolist()))
            k = int(rng.choice(len(w), p=w / w.sum()))
            src = self.sources[self.names[k]]
            if hasattr(src, "__getitem__") and hasattr(src, "__len__"):
                example = src[self._map_index(k, cursors[k], stride, offset)]
            else:
                example = self._next_streamed(k, src, iterators, cursors[k], stride, offset)
            cursors[k] += 1
            if info is None:
                self._draws += 1
            if budget is not None:
                budget -= 1
            yield ({**example, self.domain_key: self.names[k]}
                   if self.domain_key is not None and isinstance(example, Mapping) else example)

    def _next_streamed(self, k: int, src: Any, iterators: dict[int, Iterator[Any]], cursor: int, stride: int,
                       offset: int) -> Any:
        """The ``cursor``-th example of this worker's stride of an iterable source (restarting it at
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
                raise ValueError(f"sources: an iterable domain gave no example to worker {offset} of {stride}")

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("LiveMixtureDataset: endless (num_samples=None) has no length")
        return self.num_samples

    # ----- exact resume ------------------------------------------------------------------------
    def state_dict(self, behind: int = 0) -> dict[str, Any]:
        """What a checkpoint keeps: the draw generator's state, per-domain cursors, draws so far and
        the current weights (single-process iteration; see the module docstring).

        ``behind``: the loader has drawn this many examples ahead of what was trained on (the
        ``Trainer`` fetches one batch ahead through accelerate); the state is then the one before
        them, and the weights they were drawn with are kept so that a resume draws them again
        exactly, before it follows the live weights."""
        if behind < 0 or behind > min(len(self._recent), self._draws):
            raise ValueError(f"behind: {behind} draws back, but {min(len(self._recent), self._draws)} are recorded")
        if behind == 0:
            rng, cursors, replay = self._rng.bit_generator.state, list(self._cursors), []
        else:
            recent = list(self._recent)[-behind:]
            rng, cursors = recent[0][0], list(recent[0][1])
            replay = [w for _, _, w in recent]
        return {"version": STATE_VERSION, "names": list(self.names), "rng": rng, "cursors": cursors,
                "draws": self._draws - behind, "epoch_start": min(self._epoch_start, self._draws - behind),
                "weights": self._shared.tolist(), "replay": replay, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (same sources, same domains in the same order)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state: version {state.get('version')!r}, this release reads {STATE_VERSION}")
        if list(state["names"]) != self.names:
            raise ValueError(f"state: saved for domains {state['names']}, this mixture has {self.names}")
        if state["seed"] != self.seed:
            raise ValueError(f"state: saved with seed {state['seed']}, this mixture has seed {self.seed}")
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._cursors = [int(c) for c in state["cursors"]]
        self._draws = int(state["draws"])
        self._epoch_start = int(state.get("epoch_start", 0))
        self._replay = [list(w) for w in state.get("replay", [])]
        self._recent.clear()
        self.set_weights(list(state["weights"]))


MIXTURE_STATE_FILE = "mixagent_mixture.json"
"""The mixture's state inside each of the Trainer's checkpoint folders."""


def mixture_checkpoint_callback(mixture: LiveMixtureDataset) -> Any:
    """A ``transformers`` callback that makes ``Trainer.train(resume_from_checkpoint=...)`` resume the
    mixture exactly: every checkpoint folder gets the mixture's :meth:`~LiveMixtureDataset.state_dict`
    (``mixagent_mixture.json``), and a resumed run loads it before the first batch. The mixture
    resumes its own stream, so the Trainer must not skip batches itself: ``ignore_data_skip=True``
    (a resume without it is refused, naming the flag)."""
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from transformers import TrainerCallback  # noqa: PLC0415 - the train extra

    class MixtureCheckpoint(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 0:
                return
            if not args.ignore_data_skip:
                raise ValueError("mixture_checkpoint_callback: resuming needs TrainingArguments(ignore_data_skip=True)"
                                 ": the mixture resumes its own stream, a skip would skip it twice")
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / MIXTURE_STATE_FILE
            if not path.is_file():
                raise ValueError(f"mixture_checkpoint_callback: {path} does not exist; the checkpoint was saved "
                                 "without this callback, so the mixture cannot resume exactly")
            mixture.load_state_dict(json.loads(path.read_text()))

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            # accelerate has fetched one batch beyond the last one trained on: keep the state before it
            ahead = args.per_device_train_batch_size * max(1, args.n_gpu)
            (folder / MIXTURE_STATE_FILE).write_text(json.dumps(mixture.state_dict(behind=ahead)))

    return MixtureCheckpoint()
