"""The learned agent end to end on the tiny synthetic setting: dataset -> d3rlpy -> ONNX -> served
decisions -> the evaluation harness on the real env (tiny model, seconds per run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixagent.agent.dataset import (
    DatasetError,
    all_copies,
    best_copies,
    load_runs,
    policy_action_spec,
    split_runs,
    to_mdp_dataset,
)
from mixagent.agent.onnx_policy import load_artifact
from mixagent.trajectories import ContractError, DomainSpace, Feedback, History, Objective
from mixagent.trajectories.contract import ObjectiveRange
from mixagent.trajectories.encoding import encode, stage_rewards

FAST = {"bc_steps": 60, "rl_steps": 40, "fqe_steps": 20, "relabel_copies": 3, "bc_objective_draws": 4,
        "steps_per_epoch": 20, "batch_size": 32, "hidden_units": [16, 16],
        "bc_max_roughness": 1.0,  # the tiny set's 9 runs are mostly noisy schedules; keep them all for BC
        "critic_warmup_steps": 0}


@pytest.fixture(scope="module")
def tiny_runs(tiny_dataset):
    return load_runs([tiny_dataset])


def test_split_is_by_trajectory_seeded_and_disjoint(tiny_runs):
    runs, data = tiny_runs
    assert data[0].trajectories == len(runs) == 9
    train, val = split_runs(runs, 0.3, seed=0)
    assert len(val) == 3 and len(train) == 6
    assert not {r.run_id for r in train} & {r.run_id for r in val}
    assert [r.run_id for r in split_runs(runs, 0.3, seed=0)[1]] == [r.run_id for r in val]
    assert [r.run_id for r in split_runs(runs, 0.3, seed=1)[1]] != [r.run_id for r in val]
    with pytest.raises(DatasetError, match="validation_fraction: must be in"):
        split_runs(runs, 1.0, 0)


def test_relabelled_copies_carry_their_objective_and_rewards(tiny_runs):
    runs, _ = tiny_runs
    spec = policy_action_spec(runs)
    rng = np.random.default_rng(0)
    ep = all_copies(runs[:2], 3, ObjectiveRange(), rng, spec)
    assert ep.n_episodes == 6
    horizon = runs[0].trajectory.header.horizon
    assert len(ep.observations) == 6 * (horizon + 1) and ep.timeouts.sum() == 6
    for e, (rid, objective) in enumerate(ep.sources):
        run = next(r for r in runs if r.run_id == rid)
        rows = np.flatnonzero(ep.episode == e)
        h = run.trajectory.history
        np.testing.assert_allclose(ep.rewards[rows][:-1], stage_rewards(h, objective), rtol=1e-6)
        assert ep.rewards[rows][-1] == 0 and ep.timeouts[rows][-1] and not ep.timeouts[rows][:-1].any()
        np.testing.assert_array_equal(ep.observations[rows][-1], encode(h, horizon, spec, objective))
        assert ep.observations[rows][0][-5] == pytest.approx(objective.spread_penalty)  # the objective slice
    assert ep.sources[0][1] == runs[0].trajectory.header.objective  # its own objective first
    assert len({o.spread_penalty for _, o in ep.sources}) > 2  # the others are drawn
    mdp = to_mdp_dataset(ep)
    assert mdp.transition_count == 6 * horizon  # every decision has a next observation


def test_bc_data_keeps_the_best_runs_under_each_objective(tiny_runs):
    runs, _ = tiny_runs
    spec = policy_action_spec(runs)
    bc = best_copies(runs, draws=5, top_fraction=0.2, objective_range=ObjectiveRange(), rng=np.random.default_rng(1),
                     spec=spec)
    from mixagent.agent.dataset import final_score

    for rid, objective in bc.sources:
        scores = sorted((final_score(r, objective) for r in runs), reverse=True)
        mine = final_score(next(r for r in runs if r.run_id == rid), objective)
        assert mine >= scores[1] - 1e-12  # top 2 of 9 (round(9 * 0.2) = 2)


def test_bc_data_leaves_out_schedules_rougher_than_the_bound(tiny_runs):
    from mixagent.agent.dataset import roughness

    runs, _ = tiny_runs
    spec = policy_action_spec(runs)
    rough = sorted(roughness(r) for r in runs)
    assert rough[0] < rough[-1]  # the tiny set holds both smooth and jumpy schedules
    bound = (rough[0] + rough[-1]) / 2
    bc = best_copies(runs, draws=5, top_fraction=1.0, objective_range=ObjectiveRange(),
                     rng=np.random.default_rng(1), spec=spec, max_roughness=bound)
    kept = {rid for rid, _ in bc.sources}
    assert kept == {r.run_id for r in runs if roughness(r) <= bound}
    with pytest.raises(DatasetError, match="bc_max_roughness"):
        best_copies(runs, draws=1, top_fraction=1.0, objective_range=ObjectiveRange(),
                    rng=np.random.default_rng(1), spec=spec, max_roughness=-1.0)  # nothing passes


def test_objective_range_refuses_and_names_the_range():
    rng = ObjectiveRange(spread_penalty_max=0.9, max_weight_ratio=2.0)
    space = DomainSpace.from_fields({"source": ["a"], "target": ["b"]})
    rng.check(Objective(spread_penalty=0.9, field_weights={"source": 1, "target": 2}), space)
    with pytest.raises(ContractError, match=r"spread_penalty: 1.5 is outside the range .* \[0, 0.9\]"):
        rng.check(Objective(spread_penalty=1.5), space)
    with pytest.raises(ContractError, match=r"field_weights: .* 3x more weight .* within a factor 2"):
        rng.check(Objective(field_weights={"source": 1, "target": 3}), space)
    draws = [rng.sample(np.random.default_rng(i), space.fields) for i in range(50)]
    for o in draws:
        rng.check(o, space)


@pytest.mark.parametrize("algo", ["bc", "bc+cql", "iql", "td3+bc", "cql"])
def test_every_algorithm_trains_exports_and_serves_the_same_actions(algo, tiny_dataset, tmp_path):
    from mixagent.agent.train import TrainConfig, train

    out = tmp_path / algo.replace("+", "_")
    report = train([tiny_dataset], algo, out, TrainConfig(**FAST, validation_fraction=0.3), progress=False)
    card = json.loads((out / "card.json").read_text())
    assert card["algorithm"] == f"{algo}/mlp" and card["encoder_version"] == "obs-v2"
    assert card["training_data"][0]["trajectories"] == 9 and card["training_data_hash"]
    assert card["metrics"]["export/max_abs_diff_onnx_vs_torch"] <= 1e-5
    assert len(card["observation_low"]) == len(card["observation_high"]) == 28
    assert "val/fqe_return" in report.metrics and "train/action_error_best" in report.metrics
    assert (out / "learner.d3").is_file() and json.loads((out / "training.json").read_text())["split"]["validation"]
    # the served policy (onnxruntime, no torch) makes the torch policy's decisions
    import d3rlpy

    learner = d3rlpy.load_learnable(str(out / "learner.d3"))
    _, factory = load_artifact(out)
    space = DomainSpace.from_fields({"source": ["src_a", "src_b"], "target": ["tgt_a", "tgt_b"]})
    policy = factory(space, 5, Objective(spread_penalty=0.3))
    h = History(space=space)
    for t in range(3):
        h.record_feedback(Feedback(step=t, tokens_seen=t,
                                   field_scores={"source": -3 - 0.01 * t, "target": -5 + 0.1 * t},
                                   domain_losses=dict.fromkeys(space.names, 3.0)))
        obs = encode(h, 5, policy.card.action, Objective(spread_penalty=0.3))
        want = learner.predict(obs[None])[0]
        np.testing.assert_allclose(policy.act(obs), want, atol=1e-5)
        h.record_weights(policy.next_weights(space, h))
    with pytest.raises(ContractError, match="outside the range"):
        factory(space, 5, Objective(spread_penalty=2.0))


def test_candidates_of_one_seed_are_validated_on_the_same_data(tiny_dataset, tmp_path):
    """Offline selection compares FQE returns across algorithms: they must be estimated on the same
    relabelled validation trajectories, whatever the algorithm draws for training."""
    from mixagent.agent.train import TrainConfig, train

    bc = train([tiny_dataset], "bc", tmp_path / "bc", TrainConfig(**FAST, validation_fraction=0.3), progress=False)
    rl = train([tiny_dataset], "td3+bc", tmp_path / "td3", TrainConfig(**FAST, validation_fraction=0.3),
               progress=False)
    assert bc.metrics["val/behaviour_return"] == rl.metrics["val/behaviour_return"]
    assert bc.card.observation_low == rl.card.observation_low and bc.card.observation_high == rl.card.observation_high


def test_transformer_encoder_trains_and_exports(tiny_dataset, tmp_path):
    from mixagent.agent.train import TrainConfig, train

    report = train([tiny_dataset], "bc", tmp_path / "tf", TrainConfig(**FAST, encoder="transformer",
                                                                        transformer_d_model=16), progress=False)
    assert report.card.algorithm == "bc/transformer"
    assert report.card.metrics["export/max_abs_diff_onnx_vs_torch"] <= 1e-5
    # re-exported from a fresh process (how the bundled agent is installed): d3rlpy must find the
    # encoder by name there too
    import subprocess
    import sys

    from mixagent.agent.onnx_policy import load_artifact

    out = subprocess.run([sys.executable, "-c", "from mixagent.cli import app; app()", "agent", "export",
                          str(tmp_path / "tf"), "--out", str(tmp_path / "bundled"), "--version", "v9"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    card, _ = load_artifact(tmp_path / "bundled")
    assert card.version == "v9" and card.algorithm == "bc/transformer"


def test_bad_training_input_is_refused_with_the_field(tiny_dataset, tmp_path):
    from mixagent.agent.train import load_config, train

    with pytest.raises(DatasetError, match="--algo: must be one of"):
        train([tiny_dataset], "ppo", tmp_path / "x")
    with pytest.raises(DatasetError, match="no such folder"):
        train([tmp_path / "nope"], "bc", tmp_path / "x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bc_steps: -3\nunknown_field: 1\n")
    with pytest.raises(DatasetError, match=r"bc_steps: .*got -3.*unknown_field"):
        load_config(cfg)


def test_out_of_range_observations_go_to_the_fallback(tiny_dataset, tmp_path):
    from mixagent.agent.onnx_policy import decide
    from mixagent.agent.train import TrainConfig, train

    train([tiny_dataset], "bc", tmp_path / "p", TrainConfig(**FAST), progress=False)
    _, factory = load_artifact(tmp_path / "p")
    space = DomainSpace.from_fields({"source": ["a", "b"], "target": ["c"]})
    policy = factory(space, 5, Objective())
    h = History(space=space)
    h.record_feedback(Feedback(step=0, tokens_seen=0, field_scores={"source": -3.0, "target": -5.0},
                               domain_losses=dict.fromkeys(space.names, 3.0)))
    assert decide(policy, space, h).fallback is None
    h.record_weights(policy.next_weights(space, h))
    h.record_feedback(Feedback(step=1, tokens_seen=1, field_scores={"source": -30.0, "target": -0.5},
                               domain_losses=dict.fromkeys(space.names, 3.0)))  # far outside training
    d = decide(policy, space, h)
    assert d.fallback == "uniform" and "outside the range seen in training" in d.reason
    np.testing.assert_allclose(d.weights.as_array(), 1 / 3)
    three = DomainSpace.from_fields({"source": ["a"], "math": ["m"], "code": ["c"]})
    h3 = History(space=three)
    d3 = decide(policy, three, h3)
    assert d3.fallback == "uniform" and "reads 2 fields" in d3.reason


def test_the_harness_runs_every_policy_on_paired_seeds_and_reports(tiny_dataset, tiny_setting, cache_dir, tmp_path):
    from mixagent.agent.catalogue import EvaluationConfig, parse_objective, parse_policies
    from mixagent.agent.evaluate import evaluate
    from mixagent.agent.runner import RunnerConfig
    from mixagent.agent.train import TrainConfig, train

    train([tiny_dataset], "bc", tmp_path / "agent", TrainConfig(**FAST), progress=False)
    policies = parse_policies(["baselines", "hand", f"agent={tmp_path / 'agent'}", f"twin={tmp_path / 'agent'}"])
    policies += [p for p in parse_policies(["grid"]) if p.label in ("grid-0.2", "grid-0.5")]
    cfg = EvaluationConfig(out=tmp_path / "eval", policies=tuple(policies), settings=(tiny_setting,),
                           objectives=(parse_objective("default"), parse_objective("spread_penalty=0.2")),
                           seeds=2, selection_seeds=1,
                           runner=RunnerConfig(threads=1, cache_dir=cache_dir, progress=False))
    [res] = evaluate(cfg)
    runs = list((tmp_path / "eval" / "runs" / tiny_setting.name / "records").iterdir())
    # 2 + 2 domains with equal priors: uniform == prior == fixed-0.5 == grid-0.5, one run per seed
    # for all four; 2 loss-softmax, 3 hand, grid-0.2 (+1 selection seed each for the grid), and the
    # agent and its twin once per objective each
    assert len(runs) == 2 * (1 + 2 + 3 + 1) + 2 * 1 + 2 * 2 * 2
    r = res["objectives"]["lam0.5"]
    assert r["policies"]["uniform"]["B"] == r["policies"]["prior"]["B"] == r["policies"]["grid-0.5"]["B"]
    assert r["selected_grid"] in ("grid-0.2", "grid-0.5")
    # the same network under two names: seeded and paired, the two run the same episodes exactly
    assert r["learned_pairs"]["agent - twin"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    goals = r["comparisons"]["agent"]["goals"]
    assert {"beats uniform", f"beats {r['best_hand']}"} <= set(goals)
    for p in r["policies"].values():
        assert p["lo"] <= p["mean"] <= p["hi"] and len(p["B"]) == 2
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## synthetic-tiny · lam0.2" in report and "| agent |" in report
    assert (tmp_path / "eval" / "plots" / "synthetic-tiny-shares.png").is_file()
    assert set(res["learned_share_by_objective"]["agent"]) == {"lam0.5", "lam0.2"}
    assert (tmp_path / "eval" / "plots" / "synthetic-tiny-agent-shares-by-objective.png").is_file()
    # results.json says which seeds and which command made it
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["comparison_seed_list"] == [1000, 1001] and saved["selection_seed_list"] == [2000]
    assert saved["command"].startswith(("pytest", "python", "__main__"))
    # the runner pinned the folder to its setting: another setting's runs are refused there
    from dataclasses import replace

    from mixagent.agent.runner import RunnerError

    other = tiny_setting.model_copy(update={"seed": tiny_setting.seed + 1})
    with pytest.raises(RunnerError, match=r"evaluation.json: setting_hash is .* in this folder but .* in this run"):
        evaluate(replace(cfg, settings=(other,), command="mixagent agent evaluate ..."))
    # resumable: a second call runs nothing new and reports the same numbers
    again = evaluate(cfg)
    assert again[0]["objectives"]["lam0.5"]["policies"]["agent"]["B"] == r["policies"]["agent"]["B"]


def test_grid_compare_selected_runs_only_the_chosen_grid_point_on_the_comparison_seeds(
        tiny_setting, cache_dir, tmp_path):
    from dataclasses import replace

    from mixagent.agent.catalogue import EvaluationConfig, parse_objective, parse_policies
    from mixagent.agent.evaluate import evaluate
    from mixagent.agent.runner import RunnerConfig

    grid = [p for p in parse_policies(["grid"]) if p.label in ("grid-0.1", "grid-0.9")]
    cfg = EvaluationConfig(out=tmp_path / "eval", policies=(*parse_policies(["uniform"]), *grid),
                           settings=(tiny_setting,), objectives=(parse_objective("default"),), seeds=2,
                           selection_seeds=1, grid_compare="selected",
                           runner=RunnerConfig(threads=1, cache_dir=cache_dir, progress=False))
    [res] = evaluate(cfg)
    r = res["objectives"]["lam0.5"]
    chosen = r["selected_grid"]
    assert chosen == max(r["grid_selection_means"], key=r["grid_selection_means"].get)
    assert set(r["grid_selection_means"]) == {"grid-0.1", "grid-0.9"}
    assert set(r["policies"]) == {"uniform", chosen}  # the other point ran on the selection seed only
    assert r["hindsight_grid"] is None  # not knowable without the whole grid on the comparison seeds
    runs = list((tmp_path / "eval" / "runs" / tiny_setting.name / "records").iterdir())
    assert len(runs) == 2 * 1 + 2 + 2  # grid on the selection seed, uniform and the chosen point on 2 seeds
    from mixagent.env.provenance import numerics

    assert res["numerics"] == {numerics(): len(runs)}  # every run the report reads, all made by this machine
    assert "Grid on the selection seeds" in (tmp_path / "eval" / "report.md").read_text()
    with pytest.raises(ContractError, match="--grid-compare: 'selected' needs --selection-seeds"):
        replace(cfg, selection_seeds=0).check()
    # an interrupted evaluation: an interim report of what is complete, naming what is not
    from mixagent.agent.runner import RunnerError

    next(p for p in runs if "-s1001" in p.name).unlink()  # one comparison run of uniform or the chosen point
    missing_one = [p for p in runs if not p.exists()]
    assert len(missing_one) == 1
    with pytest.raises(RunnerError, match="missing"):
        evaluate(cfg, run=False)
    [interim] = evaluate(cfg, run=False, allow_missing=True)
    assert interim["incomplete"] and set(interim["objectives"]["lam0.5"]["policies"]) < {"uniform", chosen}
    assert "interim report" in (tmp_path / "eval" / "report.md").read_text()
    # a second report from the same runs keeps its tables and plots apart from the first's
    before = (tmp_path / "eval" / "report.md").read_text()
    other = tmp_path / "eval" / "reports" / "other"
    [only_uniform] = evaluate(replace(cfg, report_dir=other, policies=cfg.policies[:1]), run=False, allow_missing=True)
    assert (tmp_path / "eval" / "report.md").read_text() == before
    # its rollout cost is that of the runs it uses (uniform's), not of everything in the folder
    from mixagent.trajectories.storage import FileStore

    wall = {st.path.name: st.meta.wall_s for st in FileStore(runs[0].parent.parent).load_all()}
    assert interim["rollout_seconds"] == pytest.approx(sum(wall.values()))
    assert 0 < only_uniform["rollout_seconds"] < interim["rollout_seconds"]
    assert "uniform" in (other / "report.md").read_text() and (other / "results.json").is_file()
    assert any((other / "plots").iterdir())


def test_a_selection_study_runs_on_its_own_seed_block(tiny_setting, tmp_path):
    from dataclasses import replace

    from mixagent.agent.catalogue import COMPARE_SEED, SELECT_SEED, EvaluationConfig, parse_policies
    from mixagent.agent.evaluate import plan_setting

    cfg = EvaluationConfig(out=tmp_path / "eval", policies=tuple(parse_policies(["uniform", "grid"])),
                           settings=(tiny_setting,), seeds=2, selection_seeds=1, first_seed=3000)
    cfg.check()
    seeds = {seed for (label, _, seed) in plan_setting(tiny_setting, cfg).runs if label == "uniform"}
    assert seeds == {3000, 3001}  # none of the benchmark's comparison seeds (COMPARE_SEED..)
    assert COMPARE_SEED not in seeds
    with pytest.raises(ContractError, match=r"first_seed: comparison seeds 1999\.\.2000 must be >= 0 and apart"):
        replace(cfg, first_seed=SELECT_SEED - 1).check()


def test_runs_are_ordered_so_an_interrupted_evaluation_holds_whole_paired_cells(tiny_setting, tmp_path):
    from mixagent.agent.catalogue import EvaluationConfig, objective_key, parse_objective, parse_policies
    from mixagent.agent.evaluate import plan_setting
    from mixagent.agent.suite import AGENT_V2

    objectives = tuple(parse_objective(f"spread_penalty={lam}") for lam in (0.0, 0.5))
    cfg = EvaluationConfig(out=tmp_path / "eval", policies=tuple(parse_policies([f"a={AGENT_V2}", f"b={AGENT_V2}",
                                                                                 "uniform"])),
                           settings=(tiny_setting,), objectives=objectives, seeds=2, selection_seeds=0)
    order = [(e.label, e.params.get("objective"), e.seed) for e in plan_setting(tiny_setting, cfg).episodes]
    lam0, lam5 = (objective_key(o) for o in objectives)
    assert order == [("uniform", None, 1000), ("uniform", None, 1001),  # every cell needs it: first
                     ("a", lam0, 1000), ("b", lam0, 1000), ("a", lam0, 1001), ("b", lam0, 1001),
                     ("a", lam5, 1000), ("b", lam5, 1000), ("a", lam5, 1001), ("b", lam5, 1001)]
    assert [e.index for e in plan_setting(tiny_setting, cfg).episodes] == list(range(10))


def test_an_objective_outside_the_agents_range_is_refused_before_any_run(tiny_dataset, tiny_setting, tmp_path):
    from mixagent.agent.catalogue import EvaluationConfig, parse_objective, parse_policies
    from mixagent.agent.train import TrainConfig, train

    train([tiny_dataset], "bc", tmp_path / "agent", TrainConfig(**FAST), progress=False)
    policies = tuple(parse_policies(["uniform", f"agent={tmp_path / 'agent'}"]))
    cfg = EvaluationConfig(out=tmp_path / "eval", policies=policies, settings=(tiny_setting,),
                           objectives=(parse_objective("spread_penalty=1.5"),), seeds=2)
    with pytest.raises(ContractError, match=r"lam1.5 for agent: objective.spread_penalty: 1.5 is outside the range"):
        cfg.check()


def test_intervals_are_the_t_intervals_of_the_paired_differences():
    from scipy import stats

    from mixagent.agent.report import mean_interval, paired_interval, unpaired_halfwidth

    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.01, 6)  # what pairing removes
    a = 0.100 + seed_effect + rng.normal(0, 0.001, 6)
    b = 0.098 + seed_effect + rng.normal(0, 0.001, 6)
    d, lo, hi = paired_interval(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d == pytest.approx(np.mean(a - b)) and (lo, hi) == pytest.approx((ci.low, ci.high))
    m, mlo, mhi = mean_interval(a)
    assert mlo < m < mhi and m == pytest.approx(a.mean())
    # the seed effect is shared: the paired interval is far narrower than the unpaired one
    assert (hi - lo) / 2 < 0.5 * unpaired_halfwidth(a, b)
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert unpaired_halfwidth(a, b) == pytest.approx((welch.high - welch.low) / 2)
