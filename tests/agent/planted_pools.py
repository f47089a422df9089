"""Static runs with drawn pools and a planted pool-dependent effect, written as real records on the
tiny setting's space (no env): CausalMix's tests and the bench smoke test fit on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixagent.agent.causalmix import EPSILON
from mixagent.env.pools import PoolSpec
from mixagent.trajectories import Feedback, History, Trajectory, TrajectoryHeader, Weights
from mixagent.trajectories.contract import ActionSpec
from mixagent.trajectories.storage import FileStore, default_meta


def planted_folder(out: Path, setting, n: int, seed: int = 0) -> None:
    """``n`` static records on the tiny setting's space, each with a drawn pool: tgt_a's share helps
    (θ = +0.05) when its pool holds at least a third of its text and hurts (-0.05) below; src_a
    always helps a little, src_b and tgt_b hurt a little. Both fields gain alike (B = gain at any λ)."""
    rng = np.random.default_rng(seed)
    space = setting.space
    names = list(space.names)
    spec = PoolSpec(low=0.05, high=1.0)
    store = FileStore(out)
    for i in range(n):
        caps = spec.caps_for(names, i)
        w = Weights.from_raw(rng.dirichlet(np.ones(len(names)))).as_array()
        t = np.log(w + EPSILON)
        theta = {"src_a": 0.02, "src_b": -0.02, "tgt_a": 0.05 if caps["tgt_a"] >= 1 / 3 else -0.05, "tgt_b": -0.02}
        gain = 0.3 + sum(theta[d] * t[k] for k, d in enumerate(names)) + 0.003 * rng.normal()
        losses = {d: 3.0 + 0.1 * k for k, d in enumerate(names)}
        first = Feedback(step=0, tokens_seen=0, field_scores={"source": -2.0, "target": -3.0}, domain_losses=losses)
        last = Feedback(step=20, tokens_seen=640, field_scores={"source": -2.0 + 2 * gain, "target": -3.0 + 3 * gain},
                        domain_losses=losses)
        history = History(space=space, feedback=[first])
        for fb in (first.model_copy(update={"step": 10, "tokens_seen": 320}), last):
            history.record_weights(Weights.from_raw(w))
            history.record_feedback(fb)
        header = TrajectoryHeader(
            trajectory_id=f"static_dirichlet-{i:012d}", setting_name=setting.name, setting_hash=setting.hash(),
            model="planted", space=space, objective=setting.objective, action=ActionSpec(level="domain"), horizon=2,
            interval=10, schedule="static_dirichlet", schedule_params={"level": "domain", "pool": caps}, seed=i,
            package_version="test")
        store.write(Trajectory(header=header, history=history, stage_wall_s=[1.0, 1.0]), default_meta(2.0, 0.1))
    (out / "setting.json").write_text(json.dumps(setting.model_dump(mode="json")))
