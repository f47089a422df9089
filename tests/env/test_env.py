import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mixagent.env import ENV_ID
from mixagent.trajectories import balanced_scores


def test_check_env_passes(tiny_env):
    check_env(tiny_env, skip_render_check=True)


def test_registered_with_gymnasium(tiny_setting, tiny_backend):
    assert ENV_ID in gym.registry
    env = gym.make(ENV_ID, setting=tiny_setting, backend=tiny_backend, disable_env_checker=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def rollout(env, seed, action):
    _obs, info = env.reset(seed=seed)
    out = [info["feedback"]]
    truncated = False
    rewards = []
    while not truncated:
        _obs, r, terminated, truncated, info = env.step(action)
        assert not terminated
        rewards.append(r)
        out.append(info["feedback"])
    return out, rewards


def test_same_seed_gives_identical_feedback_and_other_seeds_differ(tiny_env):
    a, ra = rollout(tiny_env, 7, np.array([0.3, -0.3], dtype=np.float32))
    b, rb = rollout(tiny_env, 7, np.array([0.3, -0.3], dtype=np.float32))
    assert a == b and ra == rb
    c, _ = rollout(tiny_env, 8, np.array([0.3, -0.3], dtype=np.float32))
    assert c[0] == a[0]  # the same base model, evaluated on the same fixed windows
    assert c[1:] != a[1:]


def test_episode_shape_rewards_and_history(tiny_env, tiny_setting):
    fbs, rewards = rollout(tiny_env, 0, np.array([-1.0, 1.0], dtype=np.float32))
    horizon = tiny_setting.cpt.horizon
    assert len(rewards) == horizon
    h = tiny_env.history
    assert len(h.feedback) == horizon + 1 and len(h.weights) == horizon
    assert [fb.step for fb in h.feedback] == [tiny_setting.cpt.interval * t for t in range(horizon + 1)]
    # the reward, by hand from the raw feedback: B = mean gain - λ·std of gains
    def balanced(fb):
        start = fbs[0]["field_scores"]
        g = [(fb["field_scores"][f] - start[f]) / abs(start[f]) for f in ("source", "target")]
        return np.mean(g) - tiny_setting.objective.spread_penalty * np.std(g)

    for t in range(horizon):
        assert rewards[t] == pytest.approx(balanced(fbs[t + 1]) - balanced(fbs[t]), abs=1e-12)
    assert balanced_scores(h, tiny_setting.objective)[-1] == pytest.approx(balanced(fbs[-1]))
    # a target-heavy action puts most weight on the target field
    w = h.weights[0].as_dict(h.space)
    assert w["tgt_a"] + w["tgt_b"] > 0.95
    with pytest.raises(RuntimeError, match="truncated"):
        tiny_env.step(np.zeros(2, dtype=np.float32))


def test_bad_actions_are_rejected_with_clear_errors(tiny_env):
    with pytest.raises(RuntimeError, match="call reset"):
        type(tiny_env)(tiny_env.setting, backend=tiny_env.backend).step(np.zeros(2))
    tiny_env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action: expected 2 values \(field level, action-v1\), got shape \(3,\)"):
        tiny_env.step(np.zeros(3))
    with pytest.raises(ValueError, match=r"action: non-finite value\(s\) in \[nan, 0.0\]"):
        tiny_env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="weights: expected 4 values"):
        tiny_env.step_weights(np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        tiny_env.step_weights(np.array([1.0, -1.0, 1.0, 1.0]))
    # nothing was consumed by the rejected calls
    assert tiny_env.history.stages == 0


def test_domain_level_action(tiny_setting, tiny_backend):
    from mixagent.env.mixing_env import DataMixingEnv

    s = tiny_setting.model_copy(update={"action": tiny_setting.action.model_copy(update={"level": "domain"})})
    env = DataMixingEnv(s, backend=tiny_backend)
    assert env.action_space.shape == (4,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape
    _, _, _, _, info = env.step(np.array([1, -1, -1, -1], dtype=np.float32))
    assert info["weights"]["src_a"] > 0.9


def test_weights_within_contract_tolerance_train_fine(tiny_env):
    from mixagent.trajectories import Weights

    tiny_env.reset(seed=0)
    w = Weights(values=(0.2500004, 0.25, 0.25, 0.25))  # sums to 1 within the contract's 1e-6
    tiny_env.step_weights(w)
    assert tiny_env.history.stages == 1


def test_a_failed_stage_requires_reset(tiny_env, monkeypatch):
    tiny_env.reset(seed=0)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_env.backend, "train", boom)
    with pytest.raises(KeyboardInterrupt):
        tiny_env.step(np.zeros(2, dtype=np.float32))
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="call reset"):
        tiny_env.step(np.zeros(2, dtype=np.float32))
    tiny_env.reset(seed=0)
    tiny_env.step(np.zeros(2, dtype=np.float32))
    assert tiny_env.history.stages == 1


def test_a_new_env_loading_the_base_from_disk_reproduces_the_feedback(tiny_setting, tiny_env, cache_dir):
    from mixagent.env.mixing_env import DataMixingEnv

    a, _ = rollout(tiny_env, 5, np.array([0.5, -0.5], dtype=np.float32))
    fresh = DataMixingEnv(tiny_setting, cache_dir=cache_dir)  # new backend: base read from the cache
    assert fresh.backend is not tiny_env.backend
    b, _ = rollout(fresh, 5, np.array([0.5, -0.5], dtype=np.float32))
    assert a == b
