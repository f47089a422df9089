"""Does a decision cost more late in a long run? One run of the longest horizon the service admits
(4,096 decisions) over many domains, served in process (the FastAPI app on SQLite, through
Starlette's TestClient: routing, validation, the run store, the policy, the database write), for the
bundled agent and for ``loss-softmax`` side by side, one feedback of each in turn.

    python bench/decision_cost.py [--domains 64] [--horizon 4096] [--out FILE]

Prints the median time per feedback near the start (stages 5–24) and late (the last 20 stages) per
policy, their ratio (goal: ≤ 1.2), and the load average beside it; writes JSON to ``--out`` (default
a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from starlette.testclient import TestClient

from mixagent.service.server.config import Settings
from mixagent.service.server.main import create_app

TOKEN = "bench-token"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domains", type=int, default=64)
    ap.add_argument("--horizon", type=int, default=4096)
    ap.add_argument("--policies", nargs="+", default=["agent", "loss-softmax"])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mixagent-bench" / "decision_cost.json")
    args = ap.parse_args()
    domains = [{"name": f"src{i}", "field": "source", "prior": 1.0 + i % 3} for i in range(args.domains - 2)]
    domains += [{"name": "t0", "field": "target"}, {"name": "t1", "field": "target"}]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="mixagent-cost-") as d:
        settings = Settings(database_url=f"sqlite:///{Path(d) / 'cost.db'}", tokens=TOKEN,
                            policy_dir=Path(d) / "policies")
        (Path(d) / "policies").mkdir()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with TestClient(create_app(settings)) as c:
            runs = {}
            for p in args.policies:
                r = c.post("/v1/runs", json={"domains": domains, "horizon": args.horizon, "interval": 10,
                                             "policy": p}, headers=headers)
                r.raise_for_status()
                runs[p] = r.json()["run_id"]
            times: dict[str, list[float]] = {p: [] for p in args.policies}
            served: dict[str, set[str]] = {p: set() for p in args.policies}
            for t in range(args.horizon + 1):
                body = {"step": t, "tokens_seen": t * 40960,
                        "field_scores": {"source": -2.0 - 1e-5 * t, "target": -4.0 + 1e-4 * t},
                        "domain_losses": {x["name"]: float(3.0 + rng.normal(0, 0.02)) for x in domains}}
                for p, rid in runs.items():
                    t0 = time.perf_counter()
                    r = c.post(f"/v1/runs/{rid}/feedback", json=body, headers=headers)
                    times[p].append(time.perf_counter() - t0)
                    r.raise_for_status()
                    served[p].add(r.json()["served_by"]["policy"])
    load = os.getloadavg()
    rows = {}
    for p, ts in times.items():
        early, late = float(np.median(ts[5:25]) * 1e3), float(np.median(ts[-20:]) * 1e3)
        rows[p] = {"early_ms": early, "late_ms": late, "late_over_early": late / early, "served_by": sorted(served[p])}
    print(f"one run of {args.horizon} decisions x {args.domains} domains per policy, in process; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'policy':<16} {'stages 5-24 ms':>15} {'last 20 ms':>11} {'ratio':>7}  served by")
    for p, r in rows.items():
        print(f"{p:<16} {r['early_ms']:>15.2f} {r['late_ms']:>11.2f} {r['late_over_early']:>7.2f}  "
              f"{', '.join(r['served_by'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"domains": args.domains, "horizon": args.horizon, "policies": rows,
                                    "load_average": load, "cores": os.cpu_count(),
                                    "python": platform.python_version()}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
