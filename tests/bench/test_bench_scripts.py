"""The benchmark scripts end to end on the tiny synthetic setting (tiny budgets), as subprocesses:
a script that fails after hours of real rollouts is caught here in a minute."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FAST = """bc_steps: 40
critic_warmup_steps: 0
rl_steps: 30
fqe_steps: 20
relabel_copies: 2
bc_objective_draws: 4
bc_max_roughness: 1.0
steps_per_epoch: 10
batch_size: 32
hidden_units: [16, 16]
transformer_d_model: 16
"""


def run(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MIXAGENT_HOME": str(cache_dir)}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def trained(tiny_dataset, tiny_setting_file, cache_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agent-training")
    (root / "fast.yaml").write_text(FAST)
    out = run(["bench/agent_training.py", "--data", str(tiny_dataset), "--only", "bc-mlp", "bc+cql-w2", "bc-lam0.5",
               "--config", str(root / "fast.yaml"), "--out", str(root / "policies"), "--results", str(root),
               "--rollouts", "2", "--rollout-setting", str(tiny_setting_file), "--workers", "1"], cache_dir)
    assert "Selected:" in out.stdout
    return root


def test_agent_training_trains_selects_offline_and_sets_rollouts_beside(trained):
    data = json.loads((trained / "agent_training.json").read_text())
    assert set(data["candidates"]) == {"bc-mlp", "bc+cql-w2", "bc-lam0.5"}
    assert data["candidates"]["bc-mlp"]["share_drift_from_bc"] == 0
    assert data["selected"] in (None, "bc-mlp", "bc+cql-w2")  # never the one-objective policy
    one = data["candidates"]["bc-lam0.5"]["start_share"]
    assert len(set(one.values())) == 1  # asked with its only objective, whatever λ
    for name, row in data["candidates"].items():
        assert row["fqe_return"] is not None and len(row["rollout_B"]) == 3, name
        assert len(row["rollout_share"]) == 5  # the tiny setting's horizon
        assert row["share_drift_from_bc"] >= 0 and row["roughness"] >= 0
    assert (trained / "agent_training.png").is_file() and "| bc+cql-w2 |" in (trained / "agent_training.md").read_text()


def test_selection_shortlists_offline_then_prefers_the_selection_rollouts():
    spec = importlib.util.spec_from_file_location("agent_training", REPO / "bench" / "agent_training.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    falling = {f"lam{lam:g}": 0.8 - 0.5 * lam for lam in mod.LAMBDAS}
    flat = {f"lam{lam:g}": 0.3 for lam in mod.LAMBDAS}

    def row(fqe: float, shares: dict[str, float] = falling, **extra: object) -> dict:
        return {"fqe_return": fqe, "behaviour_return": 0.09, "start_share": shares, **extra}

    rows = {"high-fqe": row(0.11), "lower-fqe": row(0.10), "below-behaviour": row(0.089),
            "flat": row(0.2, flat), mod.SINGLE: row(0.5)}
    assert mod.shortlist(rows) == ["high-fqe", "lower-fqe"]  # never the one-objective policy
    assert mod.select(rows) == "high-fqe"  # offline only: the highest FQE of the shortlist
    rows["high-fqe"]["select_B"] = [0.095, 0.09, 0.1]
    rows["lower-fqe"]["select_B"] = [0.101, 0.1, 0.102]
    assert mod.select(rows) == "lower-fqe"  # rollouts made: the best real B of the shortlist
    assert mod.select({"flat": row(0.2, flat), "worse": row(0.08)}) is None


def test_mixing_quality_reports_every_setting_and_objective(trained, tiny_setting_file, cache_dir, tmp_path):
    out = tmp_path / "mq" / "mixing_quality"
    proc = run(["bench/mixing_quality.py", "--settings", str(tiny_setting_file), "--agent",
                str(trained / "policies" / "bc-mlp"), "--single", str(trained / "policies" / "bc-lam0.5"),
                "--objectives", "spread_penalty=0.5", "spread_penalty=0.2", "--seeds", "2",
                "--selection-seeds", "1", "--workers", "1", "--out", str(out)], cache_dir)
    summary = json.loads((out.parent / "mixing_quality.json").read_text())
    rows = {(r["setting"], r["objective"], r["policy"]) for r in summary["summary"]}
    assert rows == {("synthetic-tiny", o, p) for o in ("lam0.5", "lam0.2") for p in ("agent", "agent-lam0.5")}
    for r in summary["summary"]:
        assert r["vs_reference"][1] <= r["vs_reference"][0] <= r["vs_reference"][2]
        assert 0.0 <= r["fallback_share"] <= 1.0
    # the one-objective agent runs once per seed and is scored under both objectives
    records = list((out / "runs" / "synthetic-tiny" / "records").glob("agent-lam0.5-*"))
    assert len(records) == 2
    assert "synthetic-tiny" in proc.stdout and (out.parent / "mixing_quality.md").is_file()
    # resumable: nothing is run twice
    again = run(["bench/mixing_quality.py", "--settings", str(tiny_setting_file), "--agent",
                 str(trained / "policies" / "bc-mlp"), "--single", str(trained / "policies" / "bc-lam0.5"),
                 "--objectives", "spread_penalty=0.5", "spread_penalty=0.2", "--seeds", "2",
                 "--selection-seeds", "1", "--workers", "1", "--out", str(out), "--report-only"], cache_dir)
    assert again.stdout.splitlines()[-1] == proc.stdout.splitlines()[-1]
    # more seeds on a few policies (--only): the runs made are reused, only the kept policies run
    before = {f.name for f in (out / "runs" / "synthetic-tiny" / "records").iterdir()}
    run(["bench/mixing_quality.py", "--settings", str(tiny_setting_file), "--agent",
         str(trained / "policies" / "bc-mlp"), "--single", str(trained / "policies" / "bc-lam0.5"),
         "--objectives", "spread_penalty=0.2", "--seeds", "3", "--selection-seeds", "1", "--workers", "1",
         "--out", str(out), "--only", "agent", "grid", "--report-name", "more_seeds"], cache_dir)
    new = {f.name for f in (out / "runs" / "synthetic-tiny" / "records").iterdir()} - before
    assert len(new) == 3 and all(n.endswith("-s1002.jsonl.gz") for n in new)  # agent, selected grid point, uniform
    assert sum(n.startswith("agent-") for n in new) == 1
    study = json.loads((out.parent / "more_seeds.json").read_text())
    assert [(r["policy"], r["objective"]) for r in study["summary"]] == [("agent", "lam0.2")]
    assert len(study["settings"][0]["objectives"]["lam0.2"]["policies"]["agent"]["B"]) == 3
    kept = set(study["settings"][0]["objectives"]["lam0.2"]["policies"])
    assert kept == {"agent", "uniform", study["summary"][0]["selected_grid"]}
    assert (out / "reports" / "more_seeds" / "report.md").is_file()
    assert json.loads((out.parent / "mixing_quality.json").read_text()) == summary  # the main report untouched
    # the feedback probe on these runs: a setting against itself, so no swap may change a decision
    probe = tmp_path / "probe"
    run(["bench/feedback_probe.py", "--setting", "synthetic-tiny", "--reference", "synthetic-tiny", "--agent",
         str(trained / "policies" / "bc-mlp"), "--objective", "spread_penalty=0.2", "--runs", str(out / "runs"),
         "--out", str(probe)], cache_dir)
    variants = json.loads((probe / "feedback_probe.json").read_text())["variants"]
    assert len(variants) == 8 and len(variants[0]["curve"]) == 5  # the tiny setting's horizon
    for v in variants:
        assert v["curve"] == variants[0]["curve"] and v["share_of_gap_closed"] is None, v["variant"]
    assert (probe / "feedback_probe.png").is_file()


def test_feedback_probe_per_domain_on_the_suites_committed_runs(cache_dir, tmp_path):
    """The domain-level probe on the suite's committed proofs-tiny runs (seconds, no rollout)."""
    args = ["bench/feedback_probe.py", "--agent", "bench/policies/agent-domain", "--label", "agent-domain",
            "--setting", "proofs-tiny", "--objective", "spread_penalty=0.5", "--out", str(tmp_path)]
    # against its own runs: every swap puts back the values it had, so no decision may move
    run([*args, "--reference-policy", "agent-domain", "--name", "self"], cache_dir)
    mine = json.loads((tmp_path / "self.json").read_text())
    assert len(mine["seeds"]) == 10 and len(mine["domains"]) == 11
    for v in mine["variants"]:
        assert np.allclose(v["domain_weights"], mine["variants"][0]["domain_weights"], atol=1e-6), v["variant"]
        assert v["l1_to_reference"] < 1e-6 and v["refused"] == 0
    # against uniform's runs: swapping everything moves the mixture towards uniform's
    run([*args, "--name", "uniform"], cache_dir)
    data = json.loads((tmp_path / "uniform.json").read_text())
    rows = {v["variant"].split(", ", 1)[-1]: v for v in data["variants"]}
    ref = rows["uniform as run (the reference)"]
    assert np.allclose(ref["domain_weights"], 1 / 11) and ref["share_of_gap_closed"] == 1.0
    assert rows["everything from uniform's run"]["l1_to_reference"] < rows["agent-domain as run"]["l1_to_reference"]
    assert all(abs(sum(v["domain_weights"]) - 1) < 1e-6 for v in data["variants"])
    assert set(data["loss_change"]) == {"agent-domain", "uniform"}
    loop = data["feedback_loop"]  # at its own states: a copycat (persistence ~1) with a weak pull back
    assert 0.8 < loop["persistence"]["source"]["mean"] < 1.2 and loop["response"]["source"]["mean"] < 3
    assert loop["response"]["states"] == 10 * 8 and loop["response"]["refused"] == 0  # decisions 1, 3, ..., 15
    assert (tmp_path / "uniform.png").is_file() and "| hollight | target |" in (tmp_path / "uniform.md").read_text()


def test_forgetting_response_ranks_the_rules_and_the_agent_on_committed_states(cache_dir, tmp_path):
    run(["bench/forgetting_response.py", "--runs", "2", "--stride", "4", "--lambdas", "0.9", "--out", str(tmp_path),
         "--policies", "agent-domain=bench/policies/agent-domain", "loss-softmax", "uniform",
         "--data", "data/trajectories/math-tiny-domain"], cache_dir)
    rows = {x["policy"]: x for x in json.loads((tmp_path / "forgetting_response.json").read_text())["rows"]}
    src = {label: x["response"]["source"]["mean"] for label, x in rows.items()}
    assert src["loss-softmax"] > 5 > abs(src["agent-domain"])
    assert rows["uniform"]["response"]["source"]["mean"] == 0 == rows["uniform"]["persistence"]["source"]["mean"]
    assert 0.5 < rows["agent-domain"]["persistence"]["source"]["mean"] < 1.2  # the copycat, on real states
    assert "| 0.9 | loss-softmax |" in (tmp_path / "forgetting_response.md").read_text()
    assert (tmp_path / "forgetting_response.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "bench/forgetting_response.py", "--data",
                          "data/trajectories/math-tiny-domain", "--match", "nope", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and "--data" in bad.stderr and "nope" in bad.stderr
    bad = subprocess.run([sys.executable, "bench/forgetting_response.py", "--delta", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and "--delta: must be positive, got 0" in bad.stderr


def test_cross_machine_runs_pairs_runs_by_id_and_measures_their_distance(cache_dir, tmp_path):
    store = REPO / "bench" / "results" / "suite" / "runs" / "proofs-tiny"
    rerun = tmp_path / "rerun"
    (rerun / "records").mkdir(parents=True)
    kept = sorted((store / "records").glob("static-e79413b411f2-s100[01].jsonl.gz"))
    for f in kept:  # a "rerun" of two uniform runs that is the very same bytes: every distance is 0
        (rerun / "records" / f.name).symlink_to(f)
    run(["bench/cross_machine_runs.py", "--reference", str(store), "--runs", str(rerun), "--out", str(tmp_path)],
        cache_dir)
    data = json.loads((tmp_path / "cross_machine_runs.json").read_text())
    assert [r["run"] for r in data["runs"]] == [f.name.removesuffix(".jsonl.gz") for f in kept]
    assert data["same_numerics"] == 2 and all(s["max_abs"] == 0.0 for s in data["summary"].values())
    assert all(r["start_loss_max_diff"] == 0.0 == r["mixture_max_diff"] for r in data["runs"])
    bad = subprocess.run([sys.executable, "bench/cross_machine_runs.py", "--reference", str(store), "--runs",
                          str(tmp_path / "nothing"), "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert bad.returncode == 2 and "--runs" in bad.stderr


def test_suite_report_says_where_a_domain_candidate_loses_and_why(cache_dir, tmp_path):
    """The suite's interim report on its committed proofs-tiny runs: every cell the domain agent loses
    (interval wholly below the floor) gets the per-domain probe against the policy it lost to."""
    (tmp_path / "runs").symlink_to(REPO / "bench" / "results" / "suite" / "runs")
    run(["bench/suite.py", "--candidates", "agent-domain=bench/policies/agent-domain", "--settings", "proofs-tiny",
         "--only", "agent-domain", "agent-v2", "--out", str(tmp_path), "--results", str(tmp_path),
         "--report-only", "--allow-missing"], cache_dir)
    verdict = json.loads((tmp_path / "suite.json").read_text())["verdicts"]["agent-domain"]
    lost = [c for c in verdict["cells_below_floor"] if c.startswith("proofs-tiny/lam0.9 vs uniform")]
    assert lost  # committed runs: at lambda 0.9 it loses to uniform by -0.0216 [-0.0231, -0.0201]
    section = (tmp_path / "suite.md").read_text().split("## Where agent-domain loses, and why")[1]
    row = next(line for line in section.splitlines() if line.startswith("| proofs-tiny/lam0.9 | uniform |"))
    own, losses = (float(x.strip().rstrip("%")) for x in row.split("|")[4:6])
    assert own > 50 > abs(losses)  # it continues its own mixtures; the domains' losses barely move it
    response, persistence = (float(x) for x in row.split("|")[7:9])
    assert persistence > 0.8 and abs(response) < 1  # measured: +0.99 and -0.07 (loss-softmax: about +9)
    page = tmp_path / "suite_probes" / "agent-domain-proofs-tiny-lam0.9-vs-uniform"
    assert Path(f"{page}.png").is_file() and "| kerneldocs | source |" in Path(f"{page}.md").read_text()


def test_env_overhead_times_the_env_against_the_bare_loop(tiny_setting_file, cache_dir, tmp_path):
    out = tmp_path / "env_overhead.json"
    run(["bench/env_overhead.py", "--setting", str(tiny_setting_file), "--intervals", "2", "--out", str(out)],
        cache_dir)
    data = json.loads(out.read_text())
    assert data["intervals"] == 2 and len(data["rows"]) == 2
    assert data["max_abs_loss_diff"] == 0.0  # both sides computed the same training
    assert data["median_env_step_s"] > 0 and data["median_bare_step_s"] > 0


def test_policy_latency_times_the_learned_policy_beside_the_rules(trained, tiny_dataset, cache_dir, tmp_path):
    out = tmp_path / "latency.json"
    proc = run(["bench/policy_latency.py", "--policy", str(trained / "policies" / "bc-mlp"), "--repeats", "20",
                "--data", str(tiny_dataset), "--out", str(out)], cache_dir)
    data = json.loads(out.read_text())
    assert {"uniform", "loss-softmax"} <= set(data["decisions"]) and data["learned_over_uniform"] > 0
    assert all(r["median_us"] > 0 and r["n"] >= 5 for r in data["decisions"].values())
    assert f"wrote {out}" in proc.stdout


def test_heldout_overlap_measures_the_leak_per_domain(tiny_setting_file, tiny_setting, tiny_backend, cache_dir,
                                                     tmp_path):
    # tiny_backend: the script reads the built corpus (alone, this test built none and failed)
    out = tmp_path / "overlap.json"
    run(["bench/heldout_overlap.py", "--setting", str(tiny_setting_file), "--out", str(out)], cache_dir)
    data = json.loads(out.read_text())
    assert [r["domain"] for r in data["domains"]] == list(tiny_setting.space.names)
    for row in data["domains"]:
        assert 0.0 <= row["near_duplicate_fraction"] <= 1.0 and row["heldout_docs"] > 0


def test_numerics_drift_pretrains_each_variant_and_compares_it(tiny_setting_file, tiny_dataset, cache_dir, tmp_path):
    out = tmp_path / "drift.json"
    run(["bench/numerics_drift.py", "--setting", str(tiny_setting_file), "--dataset", str(tiny_dataset),
         "--out", str(out)], cache_dir)
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"default", "mkl-avx2", "aten+mkl-avx2"}
    assert rows["default"]["drift_from_oldest_record"] == 0.0  # the dataset was made with this very base
    assert all(r["drift_from_oldest_record"] >= 0 for r in rows.values())


def test_service_memory_drives_a_real_server(cache_dir, tmp_path):
    out = tmp_path / "memory.json"
    run(["bench/service_memory.py", "--runs", "1", "--decisions", "8", "--domains", "4", "--cache-mb", "1",
         "--out", str(out)], cache_dir)
    [row] = json.loads(out.read_text())["configs"]
    assert row["cache_mb"] == 1 and row["rss_start_mb"] > 0 and len(row["rss_after_run_mb"]) == 1


def test_decision_cost_serves_a_long_run_for_each_policy(cache_dir, tmp_path):
    out = tmp_path / "cost.json"
    proc = run(["bench/decision_cost.py", "--domains", "6", "--horizon", "40", "--policies", "loss-softmax", "uniform",
                "--out", str(out)], cache_dir)
    data = json.loads(out.read_text())
    assert set(data["policies"]) == {"loss-softmax", "uniform"}
    for row in data["policies"].values():
        assert row["early_ms"] > 0 and row["late_ms"] > 0 and len(row["served_by"]) == 1
    assert "load average" in proc.stdout


def test_service_load_runs_every_phase_against_real_servers(cache_dir, tmp_path):
    out = tmp_path / "load.json"
    proc = run(["bench/service_load.py", "--runs", "3", "--saturation-runs", "2", "--duration", "1.5", "--rate", "2",
                "--policy", "loss-softmax", "--out", str(out)], cache_dir)
    data = json.loads(out.read_text())
    for phase in ("saturation_bare", "saturation_service", "paced_bare", "paced_service"):
        assert data[phase]["requests"] > 0 and data[phase]["errors"] == 0, (phase, data[phase])
        assert data[phase]["server_cpu_us_per_request"] > 0, (phase, data[phase])
    assert data["checks"]["cpu_per_request_ratio"] > 0
    k = data["kill9"]
    assert k["acknowledged_before_kill"] > 0 and k["lost_acknowledged"] == 0
    assert k["runs_resumed_after_restart"] == k["runs"]
    assert set(data["checks"]) >= {"paced_p99_under_20ms", "throughput_at_least_0.7_of_bare", "zero_lost_after_kill9"}
    assert "load average" in proc.stdout


def test_suite_runs_pools_and_plots_the_k_dimensional_schedules(tiny_setting_file, cache_dir, tmp_path):
    out = run(["bench/suite.py", "--settings", str(tiny_setting_file), "--seeds", "2", "--selection-seeds", "1",
               "--only", "agent-v2", "grid-0.0", "grid-1.0", "--workers", "1", "--out", str(tmp_path / "suite"),
               "--results", str(tmp_path), "--pins", str(tmp_path / "pins")], cache_dir)
    assert "this machine's build is now its pin" in out.stdout  # the first run of a setting pins it
    assert (tmp_path / "pins" / "synthetic-tiny" / "pin.json").is_file()
    data = json.loads((tmp_path / "suite.json").read_text())
    v = data["verdicts"]["agent-v2"]
    assert data["seeds"] == [1000, 1001] and data["selection_seeds"] == [2000]
    assert v["complete"] and len(v["pooled"]["uniform"]["cells"]) == 3  # one setting x three objectives
    assert v["pooled"]["uniform"]["seeds"] == 2 and "goal" in out.stdout
    assert (tmp_path / "suite" / "plots" / "synthetic-tiny-domain-weights.png").is_file()
    assert "## agent-v2" in (tmp_path / "suite.md").read_text()


def test_regmix_curve_prints_and_writes_its_learning_curve(cache_dir, tmp_path):
    out = run(["bench/regmix_curve.py", "--sizes", "24", "48", "--repeats", "2", "--lambdas", "0.5",
               "--out", str(tmp_path)], cache_dir)
    data = json.loads((tmp_path / "regmix_curve.json").read_text())
    assert data["static_runs"] == 140 and [r["runs"] for r in data["curves"]["lam0.5"]] == [24, 48]
    assert "lam0.5" in out.stdout and (tmp_path / "regmix_curve.png").is_file()
