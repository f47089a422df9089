"""bench/airrep_probes.py end to end on the tiny synthetic setting (a handful of short probes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_airrep_bench_collects_probes_fits_and_reports_beside_baselines(tiny_setting_file, tiny_backend,
                                                                             cache_dir, tmp_path):
    env = {**os.environ, "MIXAGENT_HOME": str(cache_dir)}
    cmd = [sys.executable, "bench/airrep_probes.py", "--setting", str(tiny_setting_file), "--n", "10", "--steps", "2",
           "--feature-rows", "4", "--splits", "2", "--epochs", "30", "--out", str(tmp_path), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["probes"] == 10 and report["test_subsets"] == 3 and report["probe_cpu_s"] > 0
    assert set(report["split0"]["mean"]) == {"encoder", "linear law", "field share", "size", "encoder (train)"}
    assert all(len(v) == 2 for v in report["splits"].values())
    assert (tmp_path / "heldout.png").stat().st_size > 0 and (tmp_path / "encoder.json").exists()
    assert "| encoder |" in (tmp_path / "report.md").read_text()
    # a rerun resumes: no new probe, the same numbers
    again = subprocess.run([*cmd, "--fit-only"], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "report.json").read_text())["split0"] == report["split0"]
    refused = subprocess.run([sys.executable, "bench/airrep_probes.py", "--setting", "proofs-tiny", "--out",
                              str(tmp_path / "no")], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert refused.returncode != 0 and "evaluation-only suite setting" in refused.stderr
