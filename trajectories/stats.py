"""Per-trajectory summaries, the dataset card, and the per-family table of ``trajectories stats``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixagent.trajectories.contract import SCHEMA_VERSION, SOURCE_FIELD, DomainSpace, Trajectory
from mixagent.trajectories.encoding import balanced_scores, relative_gains
from mixagent.trajectories.environment import start_drift
from mixagent.trajectories.storage import RECORD_SUFFIX, RecordMeta, StoredTrajectory

__all__ = ["TrajectorySummary", "summarise", "build_card", "environments", "family_rows", "family_notes",
           "prior_target_share", "FAMILY_COLUMNS", "FAMILY_LEGEND"]


@dataclass(frozen=True)
class TrajectorySummary:
    trajectory_id: str
    family: str
    level: str
    setting_name: str
    setting_hash: str
    model: str
    package_version: str
    stages: int
    final_balanced: float
    final_gains: dict[str, float]
    mean_target_share: float
    wall_s: float
    finished_at: str
    start_losses: dict[str, float]
    provenance: dict[str, str]


def summarise(x: StoredTrajectory | Trajectory, meta: RecordMeta | None = None) -> TrajectorySummary:
    """The numbers the card and the stats table need from one trajectory."""
    if isinstance(x, StoredTrajectory):
        traj, meta = x.trajectory, x.meta
    else:
        traj = x
    meta = meta or RecordMeta()
    h, hd = traj.history, traj.header
    b = balanced_scores(h, hd.objective)
    g = relative_gains(h)
    space = h.space
    target_rows = [i for i, f in enumerate(space.fields) if f != SOURCE_FIELD]
    shares = (space.field_matrix() @ h.weight_matrix().T)[target_rows].sum(axis=0) if h.weights else np.zeros(0)
    return TrajectorySummary(
        trajectory_id=hd.trajectory_id,
        family=hd.schedule,
        level=str(hd.schedule_params.get("level", hd.action.level)),
        setting_name=hd.setting_name,
        setting_hash=hd.setting_hash,
        model=hd.model,
        package_version=hd.package_version,
        stages=h.stages,
        final_balanced=float(b[-1]),
        final_gains={f: float(g[-1, j]) for j, f in enumerate(space.fields)},
        mean_target_share=float(shares.mean()) if shares.size else float("nan"),
        wall_s=meta.wall_s or float(sum(traj.stage_wall_s)),
        finished_at=meta.finished_at,
        start_losses=dict(h.feedback[0].domain_losses),
        provenance=dict(meta.provenance),
    )


def _one_or_all(values: list[str]) -> str | dict[str, int]:
    c = Counter(values)
    return next(iter(c)) if len(c) == 1 else dict(sorted(c.items()))


def _describe(x: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(x.mean()), 6), "std": round(float(x.std()), 6),
            "min": round(float(x.min()), 6), "max": round(float(x.max()), 6)}


def environments(summaries: list[TrajectorySummary]) -> list[dict[str, Any]]:
    """The environments a folder's runs come from, oldest first: one per distinct first evaluation
    (runs on one corpus and base with the same numerics start bit for bit alike), with its
    ``start_drift`` from the oldest (largest per-domain difference, nats) and its provenance."""
    groups: dict[tuple[tuple[str, float], ...], list[TrajectorySummary]] = {}
    for s in sorted(summaries, key=lambda s: s.finished_at):
        groups.setdefault(tuple(sorted(s.start_losses.items())), []).append(s)
    ref = dict(next(iter(groups), ()))
    out = []
    for start, group in groups.items():
        row: dict[str, Any] = {
            "trajectories": len(group),
            "start_drift": round(start_drift(dict(start), ref), 6),
        }
        for key in ("corpus", "base", "numerics"):
            row[key] = _one_or_all([s.provenance.get(key, "unrecorded") for s in group])
        out.append(row)
    return out


def build_card(summaries: list[TrajectorySummary]) -> dict[str, Any]:
    """The dataset card: what the folder holds, from which setting and model, and at what cost."""
    summaries = sorted(summaries, key=lambda s: s.trajectory_id)
    card: dict[str, Any] = {
        "format": f"records/<trajectory_id>{RECORD_SUFFIX}: gzipped JSON Lines, one record per trajectory",
        "schema_version": SCHEMA_VERSION,
        "counts": {
            "trajectories": len(summaries),
            "stages": sum(s.stages for s in summaries),
            "feedbacks": sum(s.stages + 1 for s in summaries),
        },
    }
    if not summaries:
        return card
    stages = np.array([s.stages for s in summaries])
    walls = np.array([s.wall_s for s in summaries])
    finished = sorted(s.finished_at for s in summaries if s.finished_at)
    by_family: dict[str, list[float]] = {}
    for s in summaries:
        by_family.setdefault(s.family, []).append(s.final_balanced)
    card.update(
        {
            "setting_name": _one_or_all([s.setting_name for s in summaries]),
            "setting_hash": _one_or_all([s.setting_hash for s in summaries]),
            "model": _one_or_all([s.model for s in summaries]),
            "package_version": _one_or_all([s.package_version for s in summaries]),
            "levels": dict(sorted(Counter(s.level for s in summaries).items())),
            "stages_per_trajectory": {"min": int(stages.min()), "max": int(stages.max())},
            "families": dict(sorted(Counter(s.family for s in summaries).items())),
            "wall_time_s": {
                "total": round(float(walls.sum()), 1),
                "per_trajectory_mean": round(float(walls.mean()), 2),
                "per_stage_mean": round(float(walls.sum() / max(stages.sum(), 1)), 3),
            },
            "final_balanced_score": {f: _describe(np.array(v)) for f, v in sorted(by_family.items())},
            "environments": environments(summaries),
            "finished": {"first": finished[0] if finished else "", "last": finished[-1] if finished else ""},
        }
    )
    return card


FAMILY_COLUMNS = ("family", "n", "T", "B mean", "B std", "B max", "B min", "tgt share", "s/traj")
FAMILY_LEGEND = (
    "n: trajectories; T: stages (decisions) per trajectory; B mean/std/max/min: final balanced score, "
    "the objective's combination of each field's relative score gain since the start (higher is better); "
    "tgt share: mean share of the target field(s) in the mixtures of all stages; s/traj: wall seconds "
    "per trajectory."
)
"""What the columns of :data:`FAMILY_COLUMNS` mean (printed under the table)."""


def family_notes(families: set[str] | list[str], prior_share: float) -> list[str]:
    """One-line reasons for numbers of the table that look odd without them."""
    notes = []
    if "dirichlet" in families:
        notes.append(
            f"dirichlet: each stage draws its mixture from Dirichlet(α·n·prior), whose mean is the prior, so its "
            f"tgt share sits near the target field's prior share ({prior_share:.2f} here), not near 0.5."
        )
    return notes


def prior_target_share(space: DomainSpace) -> float:
    """The share of every field but ``source`` in the space's priors."""
    shares = space.field_priors()
    return float(sum(p for f, p in zip(space.fields, shares, strict=True) if f != SOURCE_FIELD))


def family_rows(summaries: list[TrajectorySummary]) -> list[tuple[str, ...]]:
    """One row per family (then ``all``) with the columns :data:`FAMILY_COLUMNS`."""
    groups: dict[str, list[TrajectorySummary]] = {}
    for s in summaries:
        groups.setdefault(s.family, []).append(s)
    rows: list[tuple[str, ...]] = []
    for name, group in [*sorted(groups.items()), ("all", summaries)]:
        if not group:
            continue
        b = np.array([s.final_balanced for s in group])
        rows.append(
            (
                name,
                str(len(group)),
                f"{np.mean([s.stages for s in group]):.1f}",
                f"{b.mean():+.3f}",
                f"{b.std():.3f}",
                f"{b.max():+.3f}",
                f"{b.min():+.3f}",
                f"{np.nanmean([s.mean_target_share for s in group]):.2f}",
                f"{np.mean([s.wall_s for s in group]):.1f}",
            )
        )
    return rows
