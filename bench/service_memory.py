"""Memory of the mixing service under large runs (issue 11, point 4), on loopback.

    python bench/service_memory.py          # ~2 min on 2 shared cores: prints a table, JSON to a temporary folder
    python bench/service_memory.py --runs 4 --decisions 1024 --domains 256 --out bench/results/service_memory.json

Each configuration starts a uvicorn server process (SQLite file, WAL) with a run-cache bound
(``MIXAGENT_RUN_CACHE_MB``), then drives ``--runs`` runs of the largest size the service admits
(``--decisions`` x ``--domains``, horizon x domains <= 2^18), one after the other, posting every
feedback (loss-softmax: the policy that reads the whole history). It records the server's resident
memory (VmRSS from /proc) at start, after each run, and after reading every run back page by page
through ``GET /v1/runs/{id}``, plus the size of a page and of the whole history over all pages.

The audit before the limits: one run of 1,500 decisions x 256 domains made ``GET /v1/runs/{id}``
12.6 MB in one answer and grew the server from 85 to 231 MB; 4,096 such runs could be cached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from mixagent.service.trainer.demo import free_port

TOKEN = "bench-token"
H = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parent.parent


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _domains(k: int) -> list[dict[str, Any]]:
    return [{"name": f"domain{i:03d}", "field": "target" if i < max(1, k // 8) else "source",
             "prior": 1.0 + i % 5} for i in range(k)]


def run_config(cache_mb: int, runs: int, decisions: int, k: int) -> dict[str, Any]:
    db = Path(tempfile.mkdtemp(prefix="mixagent-mem-")) / "m.db"
    port = free_port()
    env = {**os.environ, "MIXAGENT_TOKENS": TOKEN, "MIXAGENT_DATABASE_URL": f"sqlite:///{db}",
           "MIXAGENT_RUN_CACHE_MB": str(cache_mb), "MIXAGENT_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "mixagent.service.server.main:create_app", "--factory",
                             "--port", str(port), "--log-level", "warning"], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers=H, timeout=60) as c:
            for _ in range(200):
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            out: dict[str, Any] = {"cache_mb": cache_mb, "runs": runs, "decisions": decisions, "domains": k,
                                   "rss_start_mb": round(_rss_mb(proc.pid), 1), "rss_after_run_mb": []}
            domains = _domains(k)
            ids = []
            t0 = time.time()
            for _ in range(runs):
                rid = c.post("/v1/runs", json={"domains": domains, "horizon": decisions, "interval": 10,
                                               "policy": "loss-softmax"}).raise_for_status().json()["run_id"]
                ids.append(rid)
                for step in range(decisions + 1):
                    body = {"step": step, "tokens_seen": step * 1000,
                            "field_scores": {"source": -2.0 - 1e-4 * step, "target": -3.0 + 1e-4 * step},
                            "domain_losses": {d["name"]: 2.0 + 1e-3 * ((step * 7 + i) % 13) + 1e-6 * step
                                              for i, d in enumerate(domains)}}
                    c.post(f"/v1/runs/{rid}/feedback", json=body).raise_for_status()
                out["rss_after_run_mb"].append(round(_rss_mb(proc.pid), 1))
            out["feedback_per_s"] = round(runs * (decisions + 1) / (time.time() - t0), 1)
            first = c.get(f"/v1/runs/{ids[0]}").raise_for_status()
            out["first_page_entries"] = len(first.json()["history"])
            out["first_page_mb"] = round(len(first.content) / 1e6, 2)
            total, pages, offset = 0, 0, 0
            while offset is not None:
                page = c.get(f"/v1/runs/{ids[0]}", params={"offset": offset, "limit": 500}).raise_for_status()
                total += len(page.content)
                pages += 1
                offset = page.json()["next_offset"]
            out["all_pages"] = pages
            out["all_pages_mb"] = round(total / 1e6, 2)
            out["largest_page_mb"] = round(len(c.get(f"/v1/runs/{ids[0]}", params={"limit": 500}).content) / 1e6, 2)
            out["rss_after_reads_mb"] = round(_rss_mb(proc.pid), 1)
            out["rss_peak_mb"] = max([out["rss_after_reads_mb"], *out["rss_after_run_mb"]])
            return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--decisions", type=int, default=1024)
    ap.add_argument("--domains", type=int, default=256)
    ap.add_argument("--cache-mb", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mixagent-bench" / "service_memory.json")
    a = ap.parse_args()
    from mixagent.service.server.runs import estimate_bytes

    est = estimate_bytes(a.domains, 2, a.decisions + 1) / 1e6
    rows = [run_config(mb, a.runs, a.decisions, a.domains) for mb in a.cache_mb]
    print(f"{a.runs} runs x {a.decisions + 1} feedbacks x {a.domains} domains "
          f"(one run's cache estimate: {est:.1f} MB); "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'cache MB':>8} {'RSS start':>10} {'after each run (MB)':>28} {'after reads':>12} {'page MB':>8} "
          f"{'pages':>6} {'all pages MB':>13} {'feedback/s':>11}")
    for r in rows:
        print(f"{r['cache_mb']:>8} {r['rss_start_mb']:>10} {', '.join(map(str, r['rss_after_run_mb'])):>28} "
              f"{r['rss_after_reads_mb']:>12} {r['first_page_mb']:>8} {r['all_pages']:>6} {r['all_pages_mb']:>13} "
              f"{r['feedback_per_s']:>11}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"estimate_per_run_mb": round(est, 1), "cores": os.cpu_count(),
                                 "python": platform.python_version(), "configs": rows}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
