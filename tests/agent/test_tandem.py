"""TANDEM (agent/tandem.py): the α update against hand-computed examples, the probe budget, the
accounting of the model's steps and determinism (its run through the harness:
test_trainer_side_harness.py)."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

import numpy as np
import pytest

from mixagent.agent.registry import ENTRY_POINT_GROUP, TRAINER_SIDE_METHODS, build_policy
from mixagent.agent.tandem import TandemMethod, project_simplex, resolve_steps
from mixagent.env.trainer_side import TrainerSideMethod
from mixagent.trajectories import WEIGHT_FLOOR, ActionSpec, ContractError, DomainSpace
from mixagent.trajectories.policy import PolicyContext
from tests.agent.method_episode import run_method_episode

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 2.0})  # .5/.25/.25


def test_simplex_projection_by_hand():
    # inside the positive orthant: subtract the same θ = (1.2 − 1)/3 from each
    assert project_simplex(np.array([0.5, 0.4, 0.3])) == pytest.approx([0.5 - 0.2 / 3, 0.4 - 0.2 / 3, 0.3 - 0.2 / 3])
    # sorted (0.6, 0.5, −0.1): ρ = 2 (0.5 − (1.1 − 1)/2 > 0, −0.1 − 0/3 < 0), θ = 0.05
    assert project_simplex(np.array([0.6, 0.5, -0.1])) == pytest.approx([0.55, 0.45, 0.0])
    # ρ = 1: one domain takes everything
    assert project_simplex(np.array([1.2, 0.1, -0.5])) == pytest.approx([1.0, 0.0, 0.0])
    # a point of the simplex is its own projection
    assert project_simplex(np.array([0.2, 0.3, 0.5])) == pytest.approx([0.2, 0.3, 0.5])
    # with a floor: the rest of the mass goes where the plain projection puts it
    f = 0.01
    assert project_simplex(np.array([1.2, 0.1, -0.5]), f) == pytest.approx([1 - 2 * f, f, f])
    with pytest.raises(ContractError, match=r"floor: 0\.5 leaves no mass for 3 domains"):
        project_simplex(np.zeros(3), 0.5)


def test_the_alpha_update_by_hand():
    alpha = np.array([0.5, 0.25, 0.25])
    gap = np.array([-0.1, 0.05, 0.2])  # L(w) − L(u): the extra validation data helped web, not the others
    # α − η·γ·gap = (0.6, 0.2, 0.05), sum 0.85: every share stays positive, θ = (0.85 − 1)/3 = −0.05
    want = [0.65, 0.25, 0.10]
    assert TandemMethod(eta_alpha=1.0, gamma=1.0).update(alpha, gap, np.zeros(3)) == pytest.approx(want)
    assert TandemMethod(eta_alpha=2.0, gamma=0.5).update(alpha, gap + 1.0, np.ones(3)) == pytest.approx(want)
    # a large step clips at the contract's floor, never below
    big = TandemMethod(eta_alpha=10.0).update(alpha, gap, np.zeros(3))
    assert big == pytest.approx([1 - 2 * WEIGHT_FLOOR, WEIGHT_FLOOR, WEIGHT_FLOOR])
    m = TandemMethod()
    m.reset(SPACE)
    assert m._alpha == pytest.approx([0.5, 0.25, 0.25])  # α₀ = the priors


def test_probe_budget_is_scaled_to_the_interval_and_a_larger_one_is_refused():
    assert resolve_steps(15, None, None) == (5, 10)  # the paper's K = 5, E = 10
    assert resolve_steps(50, None, None) == (17, 33)
    assert resolve_steps(4, None, None) == (1, 3)
    assert resolve_steps(1, None, None) == (1, 0)
    assert resolve_steps(50, 5, None) == (5, 45)
    assert resolve_steps(50, None, 20) == (30, 20)
    assert resolve_steps(50, 5, 45) == (5, 45)
    assert resolve_steps(50, 50, None) == (50, 0)
    with pytest.raises(ContractError, match=r"probe_steps: a probe budget of 60 steps is larger than the interval "
                                            r"of 50 steps \(cpt.interval\)"):
        TandemMethod(probe_steps=60).check_interval(50, SPACE)
    with pytest.raises(ContractError, match=r"5 \+ 20 = 25 is not the interval of 50 steps"):
        resolve_steps(50, 5, 20)
    with pytest.raises(ContractError, match="free_steps: 50 free steps leave no probe step"):
        resolve_steps(50, None, 50)
    for bad in ({"probe_steps": 0}, {"probe_steps": 2.5}, {"free_steps": -1}, {"gamma": -1.0}, {"eta_alpha": 0},
                {"probe_rows": True}):
        with pytest.raises(ContractError, match=next(iter(bad))):
            TandemMethod(**bad)


def test_trainer_side_names_are_the_entry_points_that_build_trainer_side_methods():
    ctx = PolicyContext(SPACE, 4, ActionSpec())
    for name in TRAINER_SIDE_METHODS:
        assert isinstance(build_policy(name, {"level": "field"}, ctx), TrainerSideMethod)
    loaded = {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found = {name for name, obj in loaded.items() if inspect.isclass(obj) and hasattr(obj, "train_interval")}
    assert found == set(TRAINER_SIDE_METHODS)


def test_tandem_in_the_env_takes_the_intervals_steps_moves_alpha_by_its_rule_and_is_deterministic(
        tiny_setting, tiny_backend):
    from mixagent.env.mixing_env import DataMixingEnv

    env = DataMixingEnv(tiny_setting, backend=tiny_backend)
    interval, horizon = tiny_setting.cpt.interval, tiny_setting.cpt.horizon
    method = TandemMethod(eta_alpha=5.0)
    h, logs = run_method_episode(env, method, seed=11)
    # accounting: probe steps of u are the model's own; K + E = the interval, every interval
    assert [fb.step for fb in h.feedback] == [interval * t for t in range(horizon + 1)]
    assert [fb.tokens_seen for fb in h.feedback] == [interval * t * tiny_backend.tokens_per_step
                                                      for t in range(horizon + 1)]
    assert {int(s["step"]) for s in tiny_backend.optimizer.state.values()} == {interval * horizon}
    for t, log in enumerate(logs):
        k, e = log["probe_steps"], log["free_steps"]
        assert (k, e) == (1, 3)
        alpha, new, gap = (np.array(log[x]) for x in ("alpha", "next_alpha", "loss_gap"))
        assert new == pytest.approx(project_simplex(alpha - 5.0 * 1.0 * gap, WEIGHT_FLOOR))
        assert new.sum() == pytest.approx(1.0) and (new >= WEIGHT_FLOOR * (1 - 1e-9)).all()
        # the stage's weights: the effective mixture of its K steps on α and E steps on the new α
        assert np.array(h.weights[t].values) == pytest.approx((k * alpha + e * new) / interval)
        if t:
            assert log["alpha"] == logs[t - 1]["next_alpha"]
    assert logs[0]["alpha"] == pytest.approx(list(tiny_setting.space.priors()))
    assert any(np.abs(np.array(log["loss_gap"])).max() > 0 for log in logs)
    # same seed, same trajectory (a fresh method object: state starts over at reset)
    h2, logs2 = run_method_episode(env, TandemMethod(eta_alpha=5.0), seed=11)
    assert h2 == h and logs2 == logs
    h3, _ = run_method_episode(env, method, seed=12)
    assert h3.feedback[1:] != h.feedback[1:]
