"""Served runs as :class:`~mixagent.trajectories.Trajectory` records (the data flywheel).

``export_trajectories`` is the one place that turns stored runs into trajectories; the HTTP route and
``mixagent export-runs`` both write its output as JSON Lines (one ``Trajectory.model_dump_json()``
per line), which the offline dataset builder reads like generated trajectories.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mixagent import __version__
from mixagent.service.server.runs import RunState, RunStore
from mixagent.trajectories.contract import ActionSpec, History, Trajectory, TrajectoryHeader

__all__ = ["run_to_trajectory", "export_trajectories", "write_jsonl", "SERVED_SOURCE"]

SERVED_SOURCE = "mixagent-service"


def run_to_trajectory(state: RunState) -> Trajectory:
    """The run's raw history as a trajectory; the schedule is the policy that served it.

    Only completed stages are kept: the trailing decision (trained on after the last feedback, but
    never evaluated) is dropped so ``weights[i]`` is always followed by the feedback it led to.
    Stage wall times are the times between consecutive feedbacks as the service received them.
    """
    full = state.history if state.history is not None else state.rebuild_history()
    n = len(full.feedback)
    history = History(space=state.space, feedback=list(full.feedback), weights=list(full.weights[: max(n - 1, 0)]))
    received = np.array([d.created_at for d in state.decisions], dtype=float)
    wall = np.maximum(np.diff(received), 0.0).tolist() if n > 1 else []
    entry = state.policy
    header = TrajectoryHeader(
        trajectory_id=state.id,
        setting_name=str(state.meta.get("setting_name", "served")),
        setting_hash=state.space.hash(),
        model=str(state.meta.get("model", "unknown")),
        space=state.space,
        objective=state.objective,
        action=entry.action if entry is not None else ActionSpec(),
        horizon=state.horizon,
        interval=state.interval,
        schedule=state.policy_name,
        schedule_params={
            "policy_version": state.policy_version,
            "source": SERVED_SOURCE,
            **(entry.params if entry is not None else {}),
        },
        seed=int(state.meta.get("seed", 0)),
        package_version=__version__,
    )
    return Trajectory(header=header, history=history, stage_wall_s=wall)


def export_trajectories(
    store: RunStore, *, owner: str | None = None, run_ids: Iterable[str] | None = None,
    finished_only: bool = False,
) -> Iterator[Trajectory]:
    """Trajectories of the runs of ``owner`` (all owners when None), oldest first.

    ``run_ids`` restricts the export (unknown or foreign ids raise NotFound); ``finished_only``
    skips runs that still expect feedback. Runs with no feedback yet carry no data and are skipped.
    """
    ids = list(run_ids) if run_ids is not None else store.run_ids(owner=owner)
    for run_id in ids:
        state = store.read(owner=owner, run_id=run_id)
        if not state.decisions or (finished_only and not state.done):
            continue
        yield run_to_trajectory(state)


def write_jsonl(trajectories: Iterable[Trajectory], path: str | Path) -> int:
    """Write one trajectory per line to ``path`` (atomically: a temp file then a rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with tmp.open("w") as f:
        for t in trajectories:
            f.write(t.model_dump_json() + "\n")
            n += 1
    tmp.replace(out)
    return n
