"""Fixtures of the trajectories tests: a synthetic trajectory (no env) and a small real dataset
generated on the tiny fixture setting (one trajectory per built-in family)."""

from __future__ import annotations

import numpy as np
import pytest

from mixagent.trajectories import (
    ActionSpec,
    DomainSpace,
    Feedback,
    History,
    Objective,
    Trajectory,
    TrajectoryHeader,
    Weights,
)

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["math"]}, {"web": 2.0})


def make_trajectory(stages: int = 4, seed: int = 0, trajectory_id: str = "constant-0123456789ab") -> Trajectory:
    """A contract-valid trajectory with seeded numbers (for storage and replay tests)."""
    rng = np.random.default_rng(seed)
    history = History(space=SPACE)
    for t in range(stages + 1):
        if t:
            history.record_weights(Weights.from_raw(rng.dirichlet(np.ones(SPACE.size))))
        history.record_feedback(
            Feedback(
                step=10 * t,
                tokens_seen=1000 * t,
                field_scores={"source": -3.0 - 0.01 * t + rng.normal(0, 0.01), "target": -4.0 + 0.05 * t},
                domain_losses={d: float(3 + rng.uniform()) for d in SPACE.names},
            )
        )
    header = TrajectoryHeader(
        trajectory_id=trajectory_id,
        setting_name="synthetic",
        setting_hash="0" * 16,
        model="none",
        space=SPACE,
        objective=Objective(),
        action=ActionSpec(),
        horizon=stages,
        interval=10,
        schedule="constant",
        schedule_params={"level": "field", "share": 0.3},
        seed=seed,
        package_version="test",
    )
    return Trajectory(header=header, history=history, stage_wall_s=[0.5] * stages)


@pytest.fixture()
def trajectory() -> Trajectory:
    return make_trajectory()
