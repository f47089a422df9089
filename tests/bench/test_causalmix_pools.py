"""bench/causalmix_pools.py end to end on a tiny budget: fit RegMix and CausalMix on planted pooled
runs of the tiny setting, run every method on two test pools in the real env, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixagent.trajectories.storage import FileStore
from tests.agent.planted_pools import planted_folder

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("econml")


def test_causalmix_pools_fits_runs_every_method_on_new_pools_and_reports(tiny_setting, cache_dir, tmp_path):
    data = tmp_path / "pools"
    planted_folder(data, tiny_setting, 80)
    args = ["bench/causalmix_pools.py", "--data", str(data), "--pools", "full", "tgt_a=0.05", "--seeds", "1",
            "--workers", "1", "--min-runs", "48", "--candidates", "500", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path)]
    env = {**os.environ, "MIXAGENT_HOME": str(cache_dir)}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "causalmix_pools.json").read_text())
    assert result["fitting_runs"] == 80 and len(result["fit_seconds"]) == 3  # regmix and one table per pool
    assert {"regmix", "causalmix-full"} < set(result["fit_seconds"])
    labels = list(result["pools"])
    assert labels[0] == "full" and result["pools"][labels[1]] == "tgt_a=0.05"
    for label in labels:
        row = result["table"][label]
        assert row["new_to_the_fit"] is True  # no planted run had either pool
        assert row["uniform"]["diff_vs_uniform"] == 0.0
        assert len(row["causalmix"]["final_balanced"]) == 1
    # tgt_a's planted effect flips with its pool: CausalMix moves its share, RegMix cannot
    full, scarce = (result["table"][lab] for lab in labels)
    assert full["causalmix"]["weights"]["tgt_a"] > 2 * scarce["causalmix"]["weights"]["tgt_a"]
    assert full["regmix"]["weights"] == scarce["regmix"]["weights"]
    records = {s.trajectory.header.trajectory_id: s.trajectory.header
               for s in FileStore(tmp_path / "out" / "runs").load_all()}
    assert len(records) == 6 and records[f"causalmix-{labels[1]}-s0"].schedule_params["pool"]["tgt_a"] == 0.05
    assert (tmp_path / "causalmix_pools.png").is_file() and "causalmix" in out.stdout
    again = subprocess.run([sys.executable, *args, "--report-only"], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=300)
    assert again.returncode == 0 and "missing" not in again.stdout
    assert json.loads((tmp_path / "causalmix_pools.json").read_text())["fit_seconds"] == result["fit_seconds"]
