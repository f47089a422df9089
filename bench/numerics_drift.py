"""How far does the math-tiny base model move when only the CPU's float kernels change?

Pre-trains the base of a setting under several instruction-set restrictions (each in its own cache
that shares the built corpus and tokens, so only the 1,500 pre-training steps differ) and compares
each base's held-out evaluation with the first evaluation of the oldest committed trajectory. This
is the measurement behind ``START_TOLERANCE`` (trajectories/environment.py) and the README's
"One environment per folder" paragraph.

    python bench/numerics_drift.py                   # math-tiny; ~10 min on 2 cores (variants in parallel)

Prints a table and writes bench/results/numerics_drift.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mixagent.env.base import base_info
from mixagent.env.cache import cache_root
from mixagent.env.provenance import numerics
from mixagent.env.setting import load_setting
from mixagent.trajectories.environment import start_drift
from mixagent.trajectories.storage import FileStore

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from mixagent.cli import app; app()"]
VARIANTS = {
    "default": {},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "aten+mkl-avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="math-tiny")
    ap.add_argument("--dataset", type=Path, default=ROOT / "data" / "trajectories" / "math-tiny")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "numerics_drift.json")
    args = ap.parse_args()
    setting = load_setting(args.setting)
    cache = cache_root()
    # Corpus and tokens once, in the shared cache (the default variant also keeps its base there).
    subprocess.run([*CLI, "corpus", "build", "--setting", args.setting], check=True)
    oldest = min(FileStore(args.dataset).load_all(), key=lambda s: s.meta.finished_at)
    reference = oldest.trajectory.history.feedback[0].domain_losses

    with tempfile.TemporaryDirectory(prefix="numerics-drift-") as tmp:
        homes, procs = {}, []
        for name, env in VARIANTS.items():
            home = cache
            if env:
                home = Path(tmp) / name
                home.mkdir()
                for shared in ("corpus", "data", "debs"):
                    if (cache / shared).exists():
                        (home / shared).symlink_to(cache / shared)
            homes[name] = home
            if base_info(setting, home) is None:
                procs.append(subprocess.Popen(
                    [*CLI, "env", "pretrain", "--setting", args.setting],
                    env={**os.environ, **env, "MIXAGENT_HOME": str(home), "OMP_NUM_THREADS": "1"},
                    stdout=subprocess.DEVNULL,
                ))
        for p in procs:
            if p.wait() != 0:
                sys.exit(f"pre-training failed (exit {p.returncode})")
        rows = []
        for name, env in VARIANTS.items():
            losses = base_info(setting, homes[name])["feedback"]["domain_losses"]
            rows.append({"variant": name, "env": env, "drift_from_oldest_record": start_drift(losses, reference)})

    print(f"{'variant':<16} {'max |Δ loss| vs ' + oldest.trajectory.header.trajectory_id:>40}")
    for r in rows:
        print(f"{r['variant']:<16} {r['drift_from_oldest_record']:>40.6f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setting": setting.name, "setting_hash": setting.hash(), "reference": oldest.trajectory.header.trajectory_id,
        "machine": numerics(), "rows": rows, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
