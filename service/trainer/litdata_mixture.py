"""A live-weighted mixture of litdata ``StreamingDataset``\\ s, one per domain, whose weights the
service changes during training; with an exact-resume state.

    sources = {d: StreamingDataset(f"s3://bucket/{d}", shuffle=True, seed=0) for d in space.names}
    mixture = LiveLitdataMixture(sources, run.weights, seed=0)
    for batch in DataLoader(mixture, batch_size=16): ...; run.report(fb); mixture.follow(run)

Each example comes from the domain the current weights draw (litdata's ``CombinedStreamingDataset``
fixes its weights when it is built; this re-reads them at every draw). A domain is read the way
litdata reads it at scale: chunk by chunk in the dataset's own (shuffled or not) order, pass after
pass (pass p is litdata's epoch p + 1, so a shuffled dataset reshuffles per pass), each rank and
each DataLoader worker on litdata's own disjoint shard (build the datasets after
``init_process_group``).

**Exact resume** (``state_dict`` / ``load_state_dict``, ``num_workers=0``): the shared scheme of
:mod:`~mixagent.service.trainer.mixture` (draw generator, per-domain cursors, weights and the
decision they came from); a resumed domain starts at its saved cursor through litdata's own resume
(``StreamingDataset.load_state_dict``: it seeks to the chunk and index, reading nothing before).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mixagent.console import missing_extra

try:
    from litdata import StreamingDataset
except ModuleNotFoundError as e:  # litdata comes with the train extra
    raise ModuleNotFoundError(missing_extra(e, "mixagent.service.trainer.litdata_mixture") or str(e),
                              name=e.name) from e

from mixagent.service.trainer.mixture import LiveMixture

__all__ = ["LiveLitdataMixture"]


class LiveLitdataMixture(LiveMixture):
    """Examples from ``sources`` (domain name -> litdata ``StreamingDataset``), each from the domain
    the current weights draw.

    Args:
        sources: one ``StreamingDataset`` per domain, in the run's domain order.
        weights: initial shares (mapping or sequence); default uniform.
        seed: seeds the draws (each dataset shuffles with its own ``seed``).
        num_samples: examples per iteration (None: endless; the Trainer then needs ``max_steps``).
        domain_key: the key added to each (dict) example naming its domain (None: none added).
    """

    def _check_source(self, name: str, src: Any) -> None:
        if not isinstance(src, StreamingDataset):
            raise ValueError(f"sources: domain {name!r} is a {type(src).__name__}, not a litdata StreamingDataset")
        super()._check_source(name, src)
        world = src.distributed_env.world_size
        if world != self._world_now():
            raise ValueError(f"sources: domain {name!r} was built for {world} rank(s), this process is one of "
                             f"{self._world_now()}; build the StreamingDatasets after init_process_group")

    @staticmethod
    def _world_now() -> int:
        from mixagent.service.trainer.distributed import rank_and_world  # noqa: PLC0415

        return rank_and_world()[1]

    def _fetcher(self, stride: int, offset: int) -> Callable[[int, int], Any]:
        streams: dict[int, Iterator[Any]] = {}

        def fetch(k: int, cursor: int) -> Any:
            it = streams.get(k)
            if it is None:
                it = streams[k] = self._passes(k, cursor)
            return next(it)

        return fetch

    def _passes(self, k: int, cursor: int) -> Iterator[Any]:
        """Domain ``k`` pass after pass, from its ``cursor``-th example (litdata shards by rank and
        worker itself; a resume, in the main process only, seeks through litdata's own state)."""
        src: StreamingDataset = self.sources[self.names[k]]
        length = len(src)  # this rank's examples per pass
        passes, within = divmod(cursor, length)
        while True:
            src.reset_state_dict()
            src.current_epoch = 1 + passes  # litdata's epochs count from 1; a shuffled one reshuffles each
            if within:
                src.load_state_dict(src.state_dict(num_samples_yielded=within, num_workers=1, batch_size=1))
            seen = False
            for example in src:
                seen = True
                yield example
            if not seen:
                raise ValueError(f"sources: domain {self.names[k]!r} gave this worker no example; give it more "
                                 "chunks than workers x ranks")
            passes, within = passes + 1, 0
