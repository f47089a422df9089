"""The RL stage after behaviour cloning (agent/rl_stage.py): it starts at the BC actor exactly, its
drift from BC is bounded, Cal-QL sees the episodes' discounted returns, the card records the stage,
and a warm start that does not fit the run is refused naming both sides."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mixagent.agent.card import artifact_digest
from mixagent.agent.dataset import (
    DatasetError,
    EncodedEpisodes,
    all_copies,
    best_copies,
    load_runs,
    policy_action_spec,
    to_mdp_dataset,
)
from mixagent.trajectories import Objective
from mixagent.trajectories.contract import ObjectiveRange

FAST = {"bc_steps": 40, "rl_steps": 20, "fqe_steps": 0, "relabel_copies": 2, "bc_objective_draws": 2,
        "steps_per_epoch": 10, "batch_size": 32, "hidden_units": [16, 16], "bc_max_roughness": 1.0,
        "critic_warmup_steps": 0}


@pytest.fixture(scope="module")
def episodes(tiny_dataset):
    """(best copies for BC, all copies for RL, action size) of the tiny set, action-v2."""
    runs, _ = load_runs([tiny_dataset])
    spec = policy_action_spec(runs)
    rng = np.random.default_rng(0)
    bc = best_copies(runs, 3, 0.5, ObjectiveRange(), rng, spec, max_roughness=1.0)
    rl = all_copies(runs, 2, ObjectiveRange(), rng, spec)
    return bc, rl, rl.actions.shape[1]


def _config(**kw):
    from mixagent.agent.train import TrainConfig

    return TrainConfig(**{**FAST, **kw})


@pytest.mark.parametrize("kind", ["cql", "calql", "rebrac"])
def test_each_learner_starts_at_its_bc_actor_and_then_trains(kind, episodes):
    import d3rlpy

    from mixagent.agent.rl_stage import action_distance, fit_within_drift, train_bc_start, warm_started
    from mixagent.agent.train import make_algo

    bc, rl, n_a = episodes
    cfg = _config(drift_bound=None)
    d3rlpy.seed(0)
    start = train_bc_start(kind, bc, cfg, 2, n_a, progress=False)
    assert start.policy_type == ("deterministic" if kind == "rebrac" else "stochastic")
    states = rl.observations[rl.decision_rows]
    dataset = to_mdp_dataset(rl)
    learner = warm_started(kind, cfg, start, dataset, 2, n_a, states[:16])
    np.testing.assert_allclose(learner.predict(states), start.learner.predict(states), atol=1e-6)
    # why the start's scaler is taken: with its own (fitted on the RL data) the copied actor acts otherwise
    naive = make_algo(kind, cfg, 2, n_a)
    naive.build_with_dataset(dataset)
    naive.config.observation_scaler.fit_with_transition_picker(dataset.episodes, dataset.transition_picker)  # as fit
    naive.copy_policy_from(start.learner)
    assert np.abs(naive.predict(states) - start.learner.predict(states)).max() > 1e-3
    result = fit_within_drift(learner, start, dataset, cfg, states, {}, kind, progress=False)
    assert result.steps_kept == cfg.rl_steps
    assert action_distance(learner, start.learner, states) == pytest.approx(result.drift) and result.drift > 0


def test_the_drift_bound_keeps_the_actor_near_its_bc_start(episodes):
    import d3rlpy

    from mixagent.agent.rl_stage import action_distance, fit_within_drift, train_bc_start, warm_started

    bc, rl, n_a = episodes
    states = rl.observations[rl.decision_rows]
    dataset = to_mdp_dataset(rl)
    # ReBRAC with no actor penalty and a fast actor: pure Q ascent, it leaves BC within a few steps
    drifts = {}
    for bound in (None, 0.02):
        cfg = _config(rebrac_actor_beta=0.0, actor_learning_rate=3e-3, rl_steps=60, steps_per_epoch=5,
                      drift_bound=bound)
        d3rlpy.seed(0)
        start = train_bc_start("rebrac", bc, cfg, 2, n_a, progress=False)
        learner = warm_started("rebrac", cfg, start, dataset, 2, n_a, states)
        result = fit_within_drift(learner, start, dataset, cfg, states, {}, "rebrac", progress=False)
        drifts[bound] = (action_distance(learner, start.learner, states), result)
    unbounded, _ = drifts[None]
    bounded, result = drifts[0.02]
    assert unbounded > 0.02  # without the bound it goes past it ...
    assert bounded <= 0.02 and bounded == pytest.approx(result.drift)  # ... with it, the actor kept is within
    assert result.steps_kept < 60 and result.steps_kept % 5 == 0


def test_the_critic_learns_first_while_the_actor_stays_at_bc(episodes):
    import d3rlpy

    from mixagent.agent.rl_stage import action_distance, fit_within_drift, train_bc_start, warm_started

    bc, rl, n_a = episodes
    states = rl.observations[rl.decision_rows]
    dataset = to_mdp_dataset(rl)
    cfg = _config(critic_warmup_steps=30, rl_steps=10, drift_bound=None)
    d3rlpy.seed(0)
    start = train_bc_start("cql", bc, cfg, 2, n_a, progress=False)
    learner = warm_started("cql", cfg, start, dataset, 2, n_a, states)
    critic_before = [p.detach().clone() for p in learner.impl.q_function.parameters()]
    warm = _config(critic_warmup_steps=30, rl_steps=10, drift_bound=1e-9)  # stops at the first actor epoch
    result = fit_within_drift(learner, start, dataset, warm, states, {}, "cql", progress=False)
    assert result.steps_kept == 0 and action_distance(learner, start.learner, states) == 0.0  # actor: untouched
    assert any(not np.array_equal(a, b.detach()) for a, b in zip(critic_before, learner.impl.q_function.parameters(),
                                                                  strict=True))  # critic: trained
    assert learner.impl.modules.actor_optim.optim.param_groups[0]["lr"] == cfg.actor_learning_rate  # lr restored
    moved = fit_within_drift(learner, start, dataset, cfg, states, {}, "cql", progress=False)
    assert moved.steps_kept == 10 and moved.drift > 0


def test_calql_sees_each_rows_discounted_monte_carlo_return():
    import d3rlpy
    from d3rlpy.dataset import BasicTransitionPicker, TransitionMiniBatch
    from d3rlpy.preprocessing import MultiplyRewardScaler
    from d3rlpy.torch_utility import TorchMiniBatch

    from mixagent.agent.rl_stage import discounted_returns

    # one episode of 3 decisions and its final (timeout) row, then a second one of 2
    rewards = np.array([1.0, 2.0, 3.0, 0.0, -1.0, 4.0, 0.0], np.float32)
    episode = np.array([0, 0, 0, 0, 1, 1, 1])
    timeouts = np.array([False, False, False, True, False, False, True])
    ep = EncodedEpisodes(np.arange(14, dtype=np.float32).reshape(7, 2), np.zeros((7, 1), np.float32), rewards,
                         timeouts, episode, [("a", Objective()), ("b", Objective())])
    gamma = 0.9
    hand = [1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0, 0.0, -1 + 0.9 * 4, 4.0, 0.0]
    np.testing.assert_allclose(discounted_returns(ep, gamma), hand, rtol=1e-6)
    # and d3rlpy hands Cal-QL exactly these (times the reward scale), CQL none
    calql = d3rlpy.algos.CalQLConfig(gamma=gamma).create()
    assert calql.need_returns_to_go and not d3rlpy.algos.CQLConfig().create().need_returns_to_go
    mdp = to_mdp_dataset(ep)
    picker = BasicTransitionPicker()
    transitions = [picker(e, i) for e in mdp.episodes for i in range(e.transition_count)]
    batch = TorchMiniBatch.from_batch(TransitionMiniBatch.from_transitions(transitions), gamma=gamma,
                                      compute_returns_to_go=calql.need_returns_to_go, device="cpu:0",
                                      reward_scaler=MultiplyRewardScaler(100.0))
    np.testing.assert_allclose(batch.returns_to_go.numpy().ravel(), 100 * np.array(hand)[~timeouts], rtol=1e-5)


@pytest.fixture(scope="module")
def bc_artifacts(tiny_dataset, tmp_path_factory):
    """BC artifacts of the tiny set: deterministic and stochastic (action-v2), deterministic action-v1."""
    from mixagent.agent.train import train

    root = tmp_path_factory.mktemp("bc")
    out = {}
    for name, kw in {"det": {"bc_policy": "deterministic"}, "sto": {},
                     "det-v1": {"bc_policy": "deterministic", "action_map": "action-v1"}}.items():
        train([tiny_dataset], "bc", root / name, _config(validation_fraction=0.3, **kw), progress=False)
        out[name] = root / name
    return out


def test_the_card_says_which_stage_made_the_policy_and_what_it_started_from(tiny_dataset, bc_artifacts, tmp_path):
    from mixagent.agent.onnx_policy import load_artifact
    from mixagent.agent.train import train

    bc_card = json.loads((bc_artifacts["det"] / "card.json").read_text())
    assert bc_card["stage"] == "bc" and bc_card["warm_start"] is None
    out = tmp_path / "rebrac"
    report = train([tiny_dataset], "bc+rebrac", out,
                   _config(validation_fraction=0.3, warm_start=str(bc_artifacts["det"]), drift_bound=0.5),
                   progress=False)
    card = json.loads((out / "card.json").read_text())
    assert card["algorithm"] == "bc+rebrac/mlp" and card["stage"] == "offline-rl"
    ws = card["warm_start"]
    assert ws == {"algorithm": "bc/mlp", "policy_type": "deterministic", "ref": "agent@v1",
                  "digest": artifact_digest(bc_artifacts["det"]), "drift_bound": 0.5,
                  "rl_steps": report.metrics["rl/steps_kept"]}
    assert 0 <= report.metrics["val/action_distance_bc"] and np.isfinite(report.metrics["val/critic_initial_value"])
    load_artifact(out)  # served like any other
    # trained in the same run: no reference, and the same-run BC took its own time
    same = train([tiny_dataset], "bc+calql", tmp_path / "calql", _config(validation_fraction=0.3), progress=False)
    assert same.card.warm_start is not None and same.card.warm_start.ref is None
    assert same.card.warm_start.policy_type == "stochastic" and "bc" in same.seconds


def test_a_warm_start_that_does_not_fit_the_run_is_refused_naming_both(tiny_dataset, bc_artifacts, tmp_path):
    from mixagent.agent.train import train

    def refused(folder, algo="bc+rebrac", **kw):
        with pytest.raises(DatasetError) as e:
            train([tiny_dataset], algo, tmp_path / "out", _config(validation_fraction=0.3, warm_start=str(folder),
                                                                  **kw), progress=False)
        return str(e.value)

    assert "has action map action-v1; this run trains action-v2" in refused(bc_artifacts["det-v1"])
    assert "is a stochastic BC policy; rebrac starts from a deterministic one" in refused(bc_artifacts["sto"])
    assert "is a deterministic BC policy; cql starts from a stochastic one" in refused(bc_artifacts["det"], "bc+cql")
    card = json.loads((bc_artifacts["det"] / "card.json").read_text())
    for name, change, message in [
        ("transformer", {"algorithm": "bc/transformer"}, "has encoder transformer; this run's config has mlp"),
        ("domain", {"action": {**card["action"], "level": "domain"}, "domains": ["a", "b"]},
         "is a domain-level policy; this run trains a field-level one"),
        ("rl", {"algorithm": "bc+cql/mlp", "stage": "offline-rl"}, "was made by bc+cql/mlp (offline-rl)"),
    ]:
        folder = tmp_path / name
        shutil.copytree(bc_artifacts["det"], folder)
        (folder / "card.json").write_text(json.dumps({**card, **change}))
        assert message in refused(folder), name
    assert "nowhere/card.json: no policy card" in refused(tmp_path / "nowhere")
    assert "only an RL stage after BC (bc+cql, bc+calql, bc+rebrac)" in refused(bc_artifacts["det"], "bc")
    assert not (tmp_path / "out").exists()  # nothing written for a refused start
