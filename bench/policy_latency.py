"""How long one served decision takes: the learned policy (encode + ONNX on one thread + action map
+ range guard) against the rules it competes with, side by side in one process.

    python bench/policy_latency.py [--policy agent/artifacts/agent] [--repeats 2000] [--out FILE]

Each policy decides after every feedback of a real 16-stage math-tiny history (the first committed
trajectory), ``--repeats`` times over, in interleaved rounds so machine noise hits all alike. Prints
the median and 95th percentile per decision and writes its JSON to ``--out`` (default a temporary
folder; ``--out bench/results/policy_latency.json`` replaces the committed figures).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", type=Path, default=ROOT / "agent" / "artifacts" / "agent")
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "trajectories" / "math-tiny")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mixagent-bench" / "policy_latency.json")
    args = ap.parse_args()

    from mixagent.agent.baselines import build_baseline
    from mixagent.agent.onnx_policy import decide, load_artifact
    from mixagent.trajectories import Objective
    from mixagent.trajectories.replay import history_prefix
    from mixagent.trajectories.storage import FileStore

    store = FileStore(args.data)
    traj = store.read(store.list()[0]).trajectory
    space, h = traj.header.space, traj.history
    prefixes = [history_prefix(h, t) for t in range(h.stages)]
    card, factory = load_artifact(args.policy)
    learned = factory(space, traj.header.horizon, Objective())
    policies = {
        f"{card.ref} (onnx)": learned,
        "uniform": build_baseline("uniform"),
        "loss-softmax": build_baseline("loss-softmax"),
    }
    obs = learned.observation(prefixes[-1])  # type: ignore[attr-defined]
    timings: dict[str, list[float]] = {k: [] for k in [*policies, "onnxruntime session.run alone"]}
    for _ in range(max(args.repeats // len(prefixes), 1)):
        for name, policy in policies.items():  # interleaved: noise hits every policy alike
            for p in prefixes:
                t0 = time.perf_counter()
                decide(policy, space, p)
                timings[name].append(time.perf_counter() - t0)
        for _p in prefixes:
            t0 = time.perf_counter()
            learned.act(obs)  # type: ignore[attr-defined]
            timings["onnxruntime session.run alone"].append(time.perf_counter() - t0)
    rows = {k: {"median_us": float(np.median(v) * 1e6), "p95_us": float(np.percentile(v, 95) * 1e6), "n": len(v)}
            for k, v in timings.items()}
    ratio = rows[f"{card.ref} (onnx)"]["median_us"] / rows["uniform"]["median_us"]
    print(f"{'policy':<34} {'median µs':>10} {'p95 µs':>10}")
    for k, r in rows.items():
        print(f"{k:<34} {r['median_us']:>10.1f} {r['p95_us']:>10.1f}")
    print(f"learned / uniform (median): {ratio:.1f}x; goal: a learned decision < 1000 µs")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"policy": card.ref, "decisions": rows, "learned_over_uniform": ratio,
                               "history_stages": h.stages, "onnx_threads": 1}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
