"""Several ranks, one mixture: under ``torch.distributed`` only one rank talks to the service, and
every rank samples under the decision it got.

    rank, world = rank_and_world()
    sampler = LiveWeightSampler(domain_indices, space.names, num_samples=...)  # this rank's shard
    run = client.start_run(space, horizon=..., interval=...) if rank == 0 else None
    broadcast_decision(run, sampler)                     # every rank: the run's initial mixture
    for each evaluation:
        if rank == 0:
            run.report(feedback)                         # only rank 0 asks the service
        broadcast_decision(run, sampler)                 # a collective: every rank calls it

Each loader reads the rank and world size when it is built (build it after
``init_process_group``) and draws from a disjoint shard of every domain: the sampler takes every
``world``-th index of each domain, the ``datasets`` mixture every ``world``-th example, and a litdata
``StreamingDataset`` shards itself by rank.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mixagent.console import missing_extra

try:
    import torch.distributed as dist
except ModuleNotFoundError as e:  # torch comes with the train extra
    raise ModuleNotFoundError(missing_extra(e, "mixagent.service.trainer.distributed") or str(e), name=e.name) from e

if TYPE_CHECKING:
    from mixagent.service.trainer.client import MixingRun
    from mixagent.service.trainer.mixture import ServedWeights

__all__ = ["broadcast_decision", "rank_and_world"]

log = logging.getLogger(__name__)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under ``torch.distributed`` (``(0, 1)`` without it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_decision(run: MixingRun | None, *loaders: ServedWeights, src: int = 0) -> dict[str, Any]:
    """Put rank ``src``'s current decision of ``run`` into ``loaders`` on every rank, and return it
    (``weights``, ``run_id``, ``decision``, ``policy``). A collective: every rank calls it at the same
    point; only rank ``src`` needs the run (others may pass None). Without ``torch.distributed`` it
    is ``loader.follow(run)``."""
    from mixagent.service.trainer.mixture import served_by  # noqa: PLC0415 - mixture imports this module

    rank, world = rank_and_world()
    box: list[Any] = [None]
    if rank == src:
        if run is None:
            raise ValueError(f"broadcast_decision: rank {src} holds the run and must pass it, got None")
        box[0] = {"weights": run.weights, **served_by(run)}
    if world > 1:
        dist.broadcast_object_list(box, src=src)
    decision: dict[str, Any] = box[0]
    for loader in loaders:
        loader.set_weights(decision["weights"], decision=decision["decision"], policy=decision["policy"],
                           run_id=decision["run_id"])
    log.info("mixagent: rank %d of %d samples under decision %s (%s)", rank, world, decision["decision"] or "priors",
             ", ".join(f"{n} {w:.3f}" for n, w in decision["weights"].items()))
    return decision
