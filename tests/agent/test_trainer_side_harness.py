"""Trainer-side methods (TANDEM, Aioli) run through the same harness and runner as every policy: a
tiny evaluation with them as candidates makes records whose header names the method and its
parameters and whose metadata holds the overhead of every decision; a probe budget larger than a
setting's interval is refused before any run."""

from __future__ import annotations

import numpy as np
import pytest

from mixagent.trajectories import ContractError


def test_trainer_side_methods_through_the_harness_are_recorded_runs_with_their_overhead(
        tiny_setting, cache_dir, tmp_path):
    from mixagent.agent.catalogue import EvaluationConfig, parse_policies
    from mixagent.agent.evaluate import evaluate
    from mixagent.agent.runner import RunnerConfig
    from mixagent.trajectories.storage import FileStore

    runner = RunnerConfig(threads=1, cache_dir=cache_dir, progress=False)
    policies = parse_policies(["uniform", "tandem:eta_alpha=5", "aioli"])
    cfg = EvaluationConfig(out=tmp_path / "eval", policies=tuple(policies), settings=(tiny_setting,), seeds=2,
                           selection_seeds=0, runner=runner)
    [res] = evaluate(cfg)
    assert set(res["objectives"]["lam0.5"]["policies"]) == {"uniform", "tandem-eta_alpha5", "aioli"}
    assert "| tandem-eta_alpha5 |" in (tmp_path / "eval" / "report.md").read_text()
    store = FileStore(tmp_path / "eval" / "runs" / tiny_setting.name)
    stored = [store.read(i) for i in store.list()]
    plain = {s.trajectory.header.seed: s for s in stored if s.trajectory.header.schedule == "uniform"}
    expected = {
        "tandem-eta_alpha5": ("tandem", {"gamma": 1.0, "probe_steps": None, "free_steps": None, "eta_alpha": 5.0,
                                         "probe_rows": None}, {"alpha", "next_alpha", "loss_gap"}),
        "aioli": ("aioli", {"eta": 0.2, "probe_steps": None, "rounds": 1, "one_hot": 1.0, "probe_rows": None},
                  {"p", "next_p", "interaction"}),
    }
    for label, (name, params, logged) in expected.items():
        runs = [s for s in stored if s.trajectory.header.schedule == label]
        assert len(runs) == 2
        for st in runs:
            hd = st.trajectory.header
            assert hd.schedule_params == {"level": "field", **params}
            method = st.meta.method
            assert method["name"] == name and len(method["decisions"]) == hd.horizon
            for t, d in enumerate(method["decisions"]):
                assert d["t"] == t and d["overhead_cpu_s"] > 0 and d["train_cpu_s"] > 0 and d["overhead_wall_s"] > 0
                assert logged | {"probe_steps", "free_steps"} <= set(d)
            assert method["overhead_cpu_s_per_decision"] == pytest.approx(
                np.mean([d["overhead_cpu_s"] for d in method["decisions"]]))
            # the model took the same steps and tokens as the plain run of the same seed, from the same start
            same_seed = plain[hd.seed].trajectory.history.feedback
            assert [(fb.step, fb.tokens_seen) for fb in st.trajectory.history.feedback] == [
                (fb.step, fb.tokens_seen) for fb in same_seed]
            assert st.trajectory.history.feedback[0] == same_seed[0]
    assert all(p.meta.method == {} for p in plain.values())
    # a probe budget larger than a setting's interval is refused before any run, naming both numbers
    for token, message in [
        ("tandem:probe_steps=5", r"tandem-probe_steps5 on synthetic-tiny: probe_steps: a probe budget of 5 steps is "
                                 r"larger than the interval of 4 steps"),
        ("aioli:probe_steps=2", r"aioli-probe_steps2 on synthetic-tiny: probe_steps: a probe budget of 4 domains × 2 "
                                r"steps × 1 round\(s\) = 8 steps is larger than the interval of 4 steps"),
    ]:
        bad = EvaluationConfig(out=tmp_path / "bad", policies=tuple(parse_policies(["uniform", token])),
                               settings=(tiny_setting,), seeds=2, selection_seeds=0, runner=runner)
        with pytest.raises(ContractError, match=message):
            evaluate(bad)
        assert not (tmp_path / "bad" / "runs").exists()
