"""The SQLite WAL stays bounded under steady writes (issue 18, point 3): 60 s of decisions from
concurrent trainers against a real server process, with readers beside them. Before the bound the
WAL grew without limit (120 MB after 60 s, ~16 kB a decision) and shrank only at a clean stop; the
server now checkpoints with TRUNCATE once the WAL passes half of ``MIXAGENT_SQLITE_WAL_LIMIT_MB``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.service.conftest import auth, run_body
from tests.service.replica import Replica

DURATION_S = 60
LIMIT_MB = 8
DOMAINS = [{"name": f"d{i}", "field": "source" if i < 30 else "target"} for i in range(32)]


def feedback(step: int) -> dict:  # type: ignore[type-arg]
    return {"step": step, "tokens_seen": step * 1000,
            "field_scores": {"source": -2.0 - 1e-5 * step, "target": -4.0 + 1e-4 * step},
            "domain_losses": {d["name"]: 3.0 + 1e-4 * ((step * 7 + i) % 13) for i, d in enumerate(DOMAINS)}}


def test_the_wal_stays_under_its_limit_during_a_minute_of_writes(tmp_path: Path):
    db = tmp_path / "wal.db"
    server = Replica("wal", f"sqlite:///{db}", tmp_path, tmp_path, env={"MIXAGENT_SQLITE_WAL_LIMIT_MB": str(LIMIT_MB)})
    wal = Path(f"{db}-wal")
    sizes: list[int] = []
    decisions = [0]
    stop = threading.Event()
    try:
        server.wait()

        def trainer() -> None:
            with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as c:
                while not stop.is_set():
                    rid = c.post("/v1/runs", json=run_body(domains=DOMAINS, horizon=4096)).json()["run_id"]
                    for step in range(4097):
                        if stop.is_set():
                            return
                        assert c.post(f"/v1/runs/{rid}/feedback", json=feedback(step)).status_code == 200
                        decisions[0] += 1
                        if step % 50 == 0:  # a reader beside the writers (what holds old WAL frames)
                            assert c.get(f"/v1/runs/{rid}", params={"limit": 5}).status_code == 200

        threads = [threading.Thread(target=trainer, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        t_end = time.time() + DURATION_S
        while time.time() < t_end:
            sizes.append(wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.25)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        server.stop()
    assert decisions[0] > 1000, decisions  # a real load: thousands of decisions, ~16 kB of WAL each
    peak_mb = max(sizes) / 1e6
    print(f"{decisions[0]} decisions in {DURATION_S} s; WAL peak {peak_mb:.1f} MB (limit {LIMIT_MB} MB)")
    assert peak_mb < LIMIT_MB, (peak_mb, sizes[-20:])
