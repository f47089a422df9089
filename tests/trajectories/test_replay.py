import numpy as np
import pytest

from mixagent.trajectories import ContractError, History, action_to_weights, balanced_scores, encode
from mixagent.trajectories.replay import history_prefix, replay, replay_trajectory


def test_replay_gives_one_transition_per_stage(trajectory):
    tr = replay_trajectory(trajectory)
    h, hd = trajectory.history, trajectory.header
    n = h.stages
    assert len(tr) == n
    assert tr.observations.shape == tr.next_observations.shape == (n, len(encode(h, hd.horizon, hd.action)))
    np.testing.assert_array_equal(tr.observations[1:], tr.next_observations[:-1])
    np.testing.assert_array_equal(tr.next_observations[-1], encode(h, hd.horizon, hd.action))
    # the observation before decision t sees exactly t mixtures
    np.testing.assert_array_equal(tr.observations[2], encode(history_prefix(h, 2), hd.horizon, hd.action))
    # rewards telescope to the final balanced score
    assert tr.rewards.sum() == pytest.approx(balanced_scores(h, hd.objective)[-1], abs=1e-5)
    assert tr.timeouts.tolist() == [False] * (n - 1) + [True] and not tr.terminals.any()


def test_replay_uses_the_encoders_passed_in(trajectory):
    seen = []

    def enc(h: History) -> np.ndarray:
        seen.append(len(h.feedback))
        return np.array([len(h.weights)], dtype=float)

    tr = replay(trajectory.history, enc, lambda w: w.as_array()[:1], lambda h: np.arange(h.stages, dtype=float))
    assert seen == list(range(1, trajectory.history.stages + 2))
    assert tr.observations[:, 0].tolist() == list(range(trajectory.history.stages))
    assert tr.rewards.tolist() == list(range(trajectory.history.stages))
    with pytest.raises(ContractError, match="expected 4 rewards"):
        replay(trajectory.history, enc, lambda w: w.as_array(), lambda h: np.zeros(3))


def test_behaviour_actions_reproduce_the_mixtures_of_a_real_dataset(tiny_dataset):
    from mixagent.trajectories.storage import FileStore

    for stored in FileStore(tiny_dataset).load_all():
        t = stored.trajectory
        tr = replay_trajectory(t)
        for a, w in zip(tr.actions, t.history.weights, strict=True):
            np.testing.assert_allclose(action_to_weights(a, t.header.space, t.header.action).as_array(),
                                       w.as_array(), atol=1e-5)


def test_replay_reproduces_what_the_env_returned_online(tiny_env, tiny_setting):
    from mixagent.agent.generate import make_plan
    from mixagent.agent.registry import build_policy
    from mixagent.trajectories import Trajectory
    from mixagent.trajectories.policy import PolicyContext

    item = make_plan(tiny_setting, n=3)[2]
    schedule = build_policy(item.policy, item.params, PolicyContext(tiny_setting.space, tiny_env.horizon,
                                                                     tiny_setting.action))
    obs, _ = tiny_env.reset(seed=item.seed)
    observations, rewards, truncated = [obs], [], False
    while not truncated:
        obs, r, _, truncated, _ = tiny_env.step_weights(schedule.next_weights(tiny_setting.space, tiny_env.history))
        observations.append(obs)
        rewards.append(r)
    traj = Trajectory.model_construct(header=make_trajectory_header(tiny_setting, item), history=tiny_env.history)
    tr = replay_trajectory(traj)
    np.testing.assert_array_equal(tr.observations, np.array(observations[:-1]))
    np.testing.assert_array_equal(tr.next_observations[-1], observations[-1])
    np.testing.assert_allclose(tr.rewards, rewards, rtol=1e-5, atol=1e-7)


def make_trajectory_header(setting, item):
    from mixagent.trajectories import TrajectoryHeader

    return TrajectoryHeader(
        trajectory_id=item.run_id, setting_name=setting.name, setting_hash=setting.hash(), model="tiny",
        space=setting.space, objective=setting.objective, action=setting.action, horizon=setting.cpt.horizon,
        interval=setting.cpt.interval, schedule=item.policy, schedule_params=item.params, seed=item.seed,
        package_version="test",
    )
