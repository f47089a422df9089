"""Retention: drop finished runs older than a date from the service's database, exporting them as
trajectories first, so that bounded storage loses nothing the data flywheel needs.

A run is finished when it took its ``horizon + 1`` feedbacks; it finished when its last decision
was made. Runs still expecting feedback are never pruned, however old (a trainer may come back).
The export is written (atomically) before anything is deleted; the deletes of one batch of runs are
one transaction, so a crash leaves each run either whole or gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select

from mixagent.service.server.export import run_to_trajectory, write_jsonl
from mixagent.service.server.models import DecisionRow, RunRow
from mixagent.service.server.runs import RunStore
from mixagent.trajectories.contract import Trajectory

__all__ = ["PruneReport", "finished_before", "prune"]

BATCH = 200
"""Runs deleted per transaction."""


@dataclass(frozen=True)
class PruneReport:
    runs: int
    """Runs deleted."""
    decisions: int
    """Their decisions, deleted with them."""
    exported: int
    """Trajectories written to the export file (0 without one)."""


def finished_before(store: RunStore, cutoff: float) -> list[str]:
    """Ids of the runs that took all their feedbacks and whose last decision is older than ``cutoff``
    (Unix seconds), oldest first."""
    with store.sessions() as s:
        last = (select(DecisionRow.run_id, func.count().label("n"), func.max(DecisionRow.created_at).label("at"))
                .group_by(DecisionRow.run_id).subquery())
        q = (select(RunRow.id).join(last, last.c.run_id == RunRow.id)
             .where(last.c.n >= RunRow.horizon + 1, last.c.at < cutoff).order_by(last.c.at, RunRow.id))
        return list(s.scalars(q).all())


def prune(store: RunStore, cutoff: float, export: str | Path | None = None) -> PruneReport:
    """Delete the runs :func:`finished_before` ``cutoff``; with ``export``, write them to that JSON
    Lines file (the trajectory format of ``mixagent export-runs``) first."""
    ids = finished_before(store, cutoff)
    exported = 0
    if export is not None:

        def trajectories() -> Iterator[Trajectory]:
            for run_id in ids:
                yield run_to_trajectory(store.read(owner=None, run_id=run_id))

        exported = write_jsonl(trajectories(), export)
    decisions = 0
    for i in range(0, len(ids), BATCH):
        batch = ids[i:i + BATCH]
        with store.write_lock or contextlib.nullcontext(), store.engine.begin() as conn:
            decisions += conn.execute(delete(DecisionRow).where(DecisionRow.run_id.in_(batch))).rowcount or 0
            conn.execute(delete(RunRow).where(RunRow.id.in_(batch)))
        for run_id in batch:
            store.forget(run_id)
    return PruneReport(runs=len(ids), decisions=decisions, exported=exported)

