"""What every mixagent loader shares: the served mixture it samples under, and the live-weighted
draw over per-domain sources with its exact-resume state.

* :class:`ServedWeights` holds the weights (in shared memory: a ``DataLoader`` worker process sees
  a change at its next draw), the run, the decision they came from and the policy that made it.
  :class:`~mixagent.service.trainer.sampler.LiveWeightSampler` and every mixture keep one;
  :meth:`ServedWeights.follow` puts a run's current decision into it.
* :class:`LiveMixture` is the draw loop of the dataset mixtures (``hf_datasets`` over Hugging Face
  ``datasets``, ``litdata_mixture`` over litdata ``StreamingDataset``\\ s): each example comes from
  the domain the current weights draw; a subclass says only how to fetch a domain's ``cursor``-th
  example in this process's shard.

**State** (``state_dict()``, a JSON-able dict that goes into the trainer's checkpoint): the draw
generator's state, the per-domain cursors, the draws so far, the weights with the run, decision and
policy version they came from, the seed, rank and world size. ``load_state_dict`` refuses a state
of other domains, another seed, another rank layout or another release (naming what differs), and
then yields exactly what the uninterrupted loader would have, after any number of weight changes.

**Several ranks** (``torch.distributed`` initialised before the loader is built): each rank draws
its own stream from a disjoint shard of every source; :func:`~mixagent.service.trainer.distributed.
broadcast_decision` makes every rank sample under the decision rank 0 got from the service.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mixagent.console import missing_extra

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ModuleNotFoundError as e:  # torch comes with the train extra
    raise ModuleNotFoundError(missing_extra(e, "mixagent.service.trainer.mixture") or str(e), name=e.name) from e

from mixagent.service.trainer.distributed import rank_and_world

if TYPE_CHECKING:
    from mixagent.service.trainer.client import MixingRun

__all__ = ["LiveMixture", "LiveWeights", "ServedWeights", "STATE_VERSION", "normalise_weights", "served_by"]

log = logging.getLogger(__name__)

STATE_VERSION = 2
"""The layout of every loader's ``state_dict`` (2: the run, decision and policy, ranks, the datasets
mixture's per-shard order); a state of another version is refused."""
RECENT_DRAWS = 65_536
"""Draws remembered for ``state_dict(behind=...)`` (a batch or two ahead)."""


class LiveWeights(Protocol):
    """What the trainer-side integrations put the served weights into (the sampler, the
    mixtures): the next examples drawn follow them."""

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


def draw_domain(rng: np.random.Generator, weights: np.ndarray) -> int:
    """One domain index drawn with probabilities ``weights`` (non-negative, positive sum) from one
    uniform number: a quarter of ``Generator.choice``'s cost, which re-checks ``p`` at every call."""
    cumulative = np.cumsum(weights)
    k = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return k if k < len(weights) else int(np.flatnonzero(weights)[-1])  # a rounding at the very top


def served_by(run: MixingRun) -> dict[str, str | None]:
    """Where ``run``'s current weights came from: ``run_id``, ``decision`` (the mixture id, None for
    the priors of a run started offline) and ``policy`` (``name@version``)."""
    policy = f"{run.policy}@{run.policy_version}" if run.policy is not None else None
    return {"run_id": run.run_id, "decision": run.mixture_id, "policy": policy}


class ServedWeights:
    """The mixture a loader samples under: weights (shared memory), and the run, decision and
    policy they came from. Call :meth:`_init_weights` from ``__init__``."""

    names: list[str]
    seed: int
    rank: int
    world: int

    def _init_weights(self, names: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None) -> None:
        self.names = list(names)
        self._shared = torch.full((len(self.names),), 1.0 / len(self.names), dtype=torch.float64)
        self._shared.share_memory_()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.run_id: str | None = None
        """The run whose decisions this loader follows (None: none followed yet)."""
        self.decision: str | None = None
        """The id of the decision the current weights came from (None: not a served decision)."""
        self.policy: str | None = None
        """The policy (``name@version``) that made that decision."""
        self.rank, self.world = rank_and_world()
        if weights is not None:
            self.set_weights(weights)

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self._shared.tolist(), strict=True))

    def _current(self) -> np.ndarray:
        """The live weights (a view of the shared memory)."""
        return self._shared.numpy()

    def set_weights(self, weights: Mapping[str, float] | Sequence[float], *, decision: str | None = None,
                    policy: str | None = None, run_id: str | None = None) -> None:
        """Replace the mixture (renormalised); the next draw of every process follows it.
        ``decision``, ``policy`` and ``run_id`` say where it came from (kept in the state); weights of
        another run than the one followed so far are refused, naming both."""
        if run_id is not None and self.run_id is not None and run_id != self.run_id:
            raise ValueError(f"weights: of run {run_id}, but this loader samples for run {self.run_id}; "
                             "build a new loader for another run")
        self._shared.copy_(torch.from_numpy(normalise_weights(weights, self.names)))
        self.decision, self.policy = decision, policy
        self.run_id = run_id or self.run_id

    def follow(self, run: MixingRun) -> None:
        """Sample under ``run``'s current decision (call it after each ``run.report``); logged."""
        self.set_weights(run.weights, **served_by(run))
        log.info("mixagent: sampling under decision %s of run %s (%s): %s", self.decision or "priors", self.run_id,
                 self.policy or "no policy yet", ", ".join(f"{n} {w:.3f}" for n, w in self.weights.items()))

    def _served_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "kind": type(self).__name__, "names": list(self.names), "seed": self.seed,
                "rank": self.rank, "world": self.world, "weights": self._shared.tolist(), "run_id": self.run_id,
                "decision": self.decision, "policy": self.policy}

    def _load_served_state(self, state: Mapping[str, Any]) -> None:
        """Check that ``state`` belongs to this loader (naming what differs), then take its weights."""
        kind = type(self).__name__
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state: version {state.get('version')!r}, this release reads {STATE_VERSION}")
        if state.get("kind", kind) != kind:
            raise ValueError(f"state: saved by a {state['kind']}, this is a {kind}")
        if list(state["names"]) != self.names:
            raise ValueError(f"state: saved for domains {state['names']}, this {kind} has {self.names}")
        if state["seed"] != self.seed:
            raise ValueError(f"state: saved with seed {state['seed']}, this {kind} has seed {self.seed}")
        saved = (state.get("rank", 0), state.get("world", 1))
        if saved != (self.rank, self.world):
            raise ValueError(f"state: saved by rank {saved[0]} of {saved[1]}, this is rank {self.rank} of "
                             f"{self.world}; each rank loads its own state")
        self.run_id = None
        self.set_weights(list(state["weights"]), decision=state.get("decision"), policy=state.get("policy"),
                         run_id=state.get("run_id"))


class LiveMixture(ServedWeights, IterableDataset):  # type: ignore[type-arg]  # torch's generic is unparametrised
    """Examples from ``sources`` (domain name -> source), each from the domain the current weights
    draw. A subclass implements :meth:`_fetcher`; everything else (weights, draws, budget, state) is
    here.

    Args:
        sources: one source per domain, in the run's domain order.
        weights: initial shares (mapping or sequence); default uniform.
        seed: seeds the draws (and whatever a subclass shuffles).
        num_samples: examples per iteration (None: endless; the Trainer then needs ``max_steps``).
        domain_key: the key added to each (dict) example naming its domain (None: none added).
    """

    def __init__(self, sources: Mapping[str, Any], weights: Mapping[str, float] | Sequence[float] | None = None,
                 *, seed: int = 0, num_samples: int | None = None, domain_key: str | None = "domain"):
        super().__init__()
        if not sources:
            raise ValueError("sources: give at least one domain")
        self.sources = dict(sources)
        for name, src in self.sources.items():
            self._check_source(name, src)
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples: must be >= 1 or None, got {num_samples}")
        self.seed, self.num_samples, self.domain_key = seed, num_samples, domain_key
        self._init_weights(list(self.sources), weights)
        self._rng = np.random.default_rng(seed if self.world == 1 else [seed, 0, self.rank])
        self._cursors = [0] * len(self.names)
        self._draws = 0
        self._epoch_start = 0
        """Draws before the current iteration (epoch): ``num_samples`` counts per iteration."""
        self._recent: deque[tuple[Mapping[str, Any], tuple[int, ...], list[float]]] = deque(maxlen=RECENT_DRAWS)
        """Per recent draw: the generator state and cursors before it, and the weights it used."""
        self._replay: list[list[float]] = []
        """Weights the next draws use instead of the live ones (a resume replaying drawn-ahead batches)."""

    # ----- what a subclass says --------------------------------------------------------------
    def _check_source(self, name: str, src: Any) -> None:
        """ValueError naming ``name`` when ``src`` cannot serve as a domain."""
        if hasattr(src, "__len__") and len(src) == 0:
            raise ValueError(f"sources: domain {name!r} is empty")

    def _fetcher(self, stride: int, offset: int) -> Callable[[int, int], Any]:
        """For one iteration of this process (shard ``offset`` of ``stride``: rank x worker), the
        function ``fetch(k, cursor)`` giving domain ``k``'s ``cursor``-th example of the shard; a
        resumed iteration's first fetch of a domain comes with that domain's saved cursor."""
        raise NotImplementedError

    # ----- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        main = info is None
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        stride, offset = self.world * workers, self.rank * workers + worker
        rng = self._rng if main else np.random.default_rng([self.seed, 1 + offset, self._draws])
        cursors = self._cursors if main else [0] * len(self.names)
        fetch = self._fetcher(stride, offset)
        if main and self.num_samples is not None and self._draws - self._epoch_start >= self.num_samples:
            self._epoch_start = self._draws  # the last iteration was complete: a new one starts
        done = self._draws - self._epoch_start if main else 0  # a resumed iteration goes on
        budget = None if self.num_samples is None else max(0, self.num_samples - done)
        while budget is None or budget > 0:
            w = np.asarray(self._replay.pop(0)) if main and self._replay else self._current()
            if main:
                self._recent.append((rng.bit_generator.state, tuple(cursors), w.tolist()))
            k = draw_domain(rng, w)
            example = fetch(k, cursors[k])
            cursors[k] += 1
            if main:
                self._draws += 1
            if budget is not None:
                budget -= 1
            yield ({**example, self.domain_key: self.names[k]}
                   if self.domain_key is not None and isinstance(example, Mapping) else example)

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError(f"{type(self).__name__}: endless (num_samples=None) has no length")
        return self.num_samples

    # ----- exact resume ------------------------------------------------------------------------
    def state_dict(self, behind: int = 0) -> dict[str, Any]:
        """What a checkpoint keeps (single-process iteration: ``num_workers=0``): the draw
        generator's state, per-domain cursors, draws so far, and the weights with the run, decision
        and policy they came from.

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
        return {**self._served_state(), "rng": rng, "cursors": cursors, "draws": self._draws - behind,
                "epoch_start": min(self._epoch_start, self._draws - behind), "replay": replay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (same sources, same domains in the same order)."""
        self._load_served_state(state)
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._cursors = [int(c) for c in state["cursors"]]
        self._draws = int(state["draws"])
        self._epoch_start = int(state.get("epoch_start", 0))
        self._replay = [list(w) for w in state.get("replay", [])]
        self._recent.clear()
