"""What does a trainer-side method (TANDEM, Aioli) cost per decision beyond a plain run?

Runs one plain episode (uniform weights) and one episode per method on the same seed, in one
process with one torch thread, and reports CPU-seconds per decision (``time.process_time``): the
whole decision (train + evaluate) of the plain run and of the method's, and the hook's own split of
the method's interval into the model's steps (``train_cpu_s``) and the method's overhead
(``overhead_cpu_s``, ``env/trainer_side.py``). The model takes the same steps and tokens either way
(the script checks it).

    python bench/trainer_side_overhead.py --setting math-tiny --horizon 2
    python bench/trainer_side_overhead.py --setting my-tiny.yaml --interval 30 --horizon 3
    python bench/trainer_side_overhead.py --setting math-tiny --horizon 3 --methods tandem aioli airrep

The last column is the overhead as a share of the interval's own cost (the model's steps): AirRep's
influences are meant to be cheap enough (under a tenth) to recompute at every decision.

``--interval`` / ``--horizon`` override the setting's (a couple of decisions is enough). Prints a
table and writes its JSON to ``--out`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixagent.agent.registry import build_policy
from mixagent.env.mixing_env import DataMixingEnv
from mixagent.env.setting import load_setting
from mixagent.trajectories.policy import PolicyContext


def episode(env: DataMixingEnv, seed: int, method: Any | None) -> dict[str, Any]:
    env.reset(seed=seed)
    uniform = np.full(env.space.size, 1.0 / env.space.size)
    cpu, hook = [], []
    truncated = False
    while not truncated:
        c0 = time.process_time()
        if method is None:
            *_, truncated, _ = env.step_weights(uniform)
        else:
            *_, truncated, _ = env.step_method(method)
            hook.append(dict(env.last_method_seconds))
        cpu.append(time.process_time() - c0)
    steps = [(fb.step, fb.tokens_seen) for fb in env.history.feedback]
    out: dict[str, Any] = {"decision_cpu_s": cpu, "steps_tokens": steps}
    if hook:
        out["train_cpu_s"] = [h["train_cpu_s"] for h in hook]
        out["overhead_cpu_s"] = [h["overhead_cpu_s"] for h in hook]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", default="math-tiny")
    ap.add_argument("--interval", type=int, default=None, help="override cpt.interval")
    ap.add_argument("--horizon", type=int, default=2, help="decisions per episode (overrides cpt.horizon)")
    ap.add_argument("--methods", nargs="+", default=["tandem", "aioli"])
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    setting = load_setting(args.setting)
    cpt = setting.cpt.model_copy(update={"horizon": args.horizon, "threads": 1,
                                         **({"interval": args.interval} if args.interval else {})})
    setting = setting.model_copy(update={"cpt": cpt})
    env = DataMixingEnv(setting)
    ctx = PolicyContext(setting.space, cpt.horizon, setting.action, setting.objective)
    plain = episode(env, args.seed, None)
    rows: dict[str, Any] = {"plain": plain}
    for name in args.methods:
        rows[name] = episode(env, args.seed, build_policy(name, {}, ctx))
        if rows[name]["steps_tokens"] != plain["steps_tokens"]:
            raise SystemExit(f"{name}: the model took other steps or tokens than the plain run")
    base = statistics.mean(plain["decision_cpu_s"])
    print(f"{setting.name}: interval {cpt.interval}, {setting.space.size} domains, horizon {cpt.horizon}, "
          f"1 thread ({platform.processor() or platform.machine()})")
    print("| run | CPU-s per decision | model's steps | overhead | x plain | overhead / model's steps |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        total = statistics.mean(r["decision_cpu_s"])
        train = f"{statistics.mean(r['train_cpu_s']):.3f}" if "train_cpu_s" in r else "-"
        over = f"{statistics.mean(r['overhead_cpu_s']):.3f}" if "overhead_cpu_s" in r else "-"
        share = "-"
        if "overhead_cpu_s" in r:
            r["overhead_share"] = statistics.mean(r["overhead_cpu_s"]) / statistics.mean(r["train_cpu_s"])
            share = f"{r['overhead_share']:.3f}"
        print(f"| {name} | {total:.3f} | {train} | {over} | {total / base:.2f} | {share} |")
    out = args.out or Path(tempfile.mkdtemp()) / "trainer_side_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setting": setting.name, "interval": cpt.interval, "horizon": cpt.horizon,
                               "domains": setting.space.size, "seed": args.seed, "runs": rows,
                               "when": datetime.now(UTC).isoformat(timespec="seconds")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
