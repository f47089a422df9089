"""The offline ranking of RL-stage candidates (agent/offline_ranking.py) on the tiny set's validation split."""

from __future__ import annotations

import numpy as np
import pytest

from mixagent.agent.dataset import DatasetError, load_runs, split_runs
from mixagent.trajectories.contract import ObjectiveRange


@pytest.fixture(scope="module")
def val_and_bc(tiny_dataset, tmp_path_factory):
    import d3rlpy

    from mixagent.agent.offline_ranking import validation_set
    from mixagent.agent.train import TrainConfig, train

    cfg = TrainConfig(bc_steps=40, fqe_steps=0, relabel_copies=2, bc_objective_draws=2, steps_per_epoch=20,
                      batch_size=32, hidden_units=(16, 16), bc_max_roughness=1.0, validation_fraction=0.5)
    val = validation_set([tiny_dataset], 0.5, 0, 3, ObjectiveRange(), cfg.action_map)
    out = tmp_path_factory.mktemp("bc") / "bc"
    train([tiny_dataset], "bc", out, cfg, progress=False)
    return val, d3rlpy.load_learnable(str(out / "learner.d3"))


def test_validation_runs_share_their_settings_objectives(tiny_dataset, val_and_bc):
    val, _ = val_and_bc
    runs, _ = load_runs([tiny_dataset])
    _, held_out = split_runs(runs, 0.5, 0)
    assert val.runs == len(held_out) and val.episodes.n_episodes == 3 * len(held_out)
    assert {rid for rid, _ in val.episodes.sources} == {r.run_id for r in held_out}
    for g in np.unique(val.groups):  # one objective per group, every held-out run in it once
        members = np.flatnonzero(val.groups == g)
        objectives = [val.episodes.sources[e][1] for e in members]
        assert all(o == objectives[0] for o in objectives) and len(members) == len(held_out)
    from mixagent.agent.offline_ranking import validation_set

    with pytest.raises(DatasetError, match="no validation trajectory"):
        validation_set([tiny_dataset], 0.0, 0, 3, ObjectiveRange(), "action-v2")


def test_the_scores_read_returns_of_the_trajectories_the_policy_acts_like(val_and_bc):
    from mixagent.agent.offline_ranking import offline_scores

    val, bc = val_and_bc
    ep = val.episodes
    everyone = offline_scores(bc, bc, val, k=val.runs, reward_scale=100.0, critic=False)
    assert everyone["nearest_behaviour_return"] == pytest.approx(everyone["behaviour_mean_return"])
    assert everyone["drift_from_bc"] == 0.0 and "critic_value" not in everyone
    one = offline_scores(bc, None, val, k=1, reward_scale=100.0, critic=False)
    assert "drift_from_bc" not in one
    # by hand: per group, the return of the episode whose actions are nearest the policy's
    returns, picked, to_best = ep.returns(), [], []
    for g in np.unique(val.groups):
        dist = {}
        for e in np.flatnonzero(val.groups == g):
            rows = np.flatnonzero((ep.episode == e) & ep.decision_rows)
            dist[e] = float(np.abs(bc.predict(ep.observations[rows]) - ep.actions[rows]).mean())
        picked.append(returns[min(dist, key=dist.__getitem__)])
        to_best.append(dist[max(dist, key=lambda e: returns[e])])
    assert one["nearest_behaviour_return"] == pytest.approx(np.mean(picked), rel=1e-6)
    assert one["action_distance_best"] == pytest.approx(np.mean(to_best), rel=1e-5)
    assert one["behaviour_best_return"] >= one["nearest_behaviour_return"] >= min(returns)
