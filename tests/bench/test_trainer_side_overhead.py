"""bench/trainer_side_overhead.py end to end on the tiny synthetic setting (two decisions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_overhead_bench_times_tandem_and_aioli_beside_a_plain_run(tiny_setting_file, tiny_backend, cache_dir,
                                                                       tmp_path):
    out = tmp_path / "overhead.json"
    env = {**os.environ, "MIXAGENT_HOME": str(cache_dir)}
    done = subprocess.run([sys.executable, "bench/trainer_side_overhead.py", "--setting", str(tiny_setting_file),
                           "--horizon", "2", "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| tandem |" in done.stdout and "| aioli |" in done.stdout
    data = json.loads(out.read_text())
    assert set(data["runs"]) == {"plain", "tandem", "aioli"} and data["horizon"] == 2
    for name in ("tandem", "aioli"):
        run = data["runs"][name]
        assert run["steps_tokens"] == data["runs"]["plain"]["steps_tokens"]
        assert len(run["overhead_cpu_s"]) == 2 and min(run["overhead_cpu_s"]) > 0
