"""Two real replicas (two ``mixagent serve`` processes, uvicorn) on one real PostgreSQL database
(issue 11 point 2): which version of a policy is current is one truth in the database, so a load
through one replica is what the very next run on the other gets, without a restart. The bound is
zero: run creation reads the current version from the database, so no wait or poll is needed (the
test asserts on the first request after the load's answer). A replica that cannot read the artifact
the database names (not mounted there, or other files at that path) answers 503 naming the path,
reports it in ``/readyz`` and ``GET /v1/policies``, and serves it once it can read it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import auth, feedback_body, write_card
from tests.service.replica import Replica


@pytest.fixture()
def replicas(pg_url, tmp_path) -> Iterator[tuple[Replica, Replica, Path]]:  # type: ignore[no-untyped-def]
    policies = tmp_path / "policies"  # empty at start: every version arrives through the admin route
    policies.mkdir()
    a = Replica("a", pg_url, policies, tmp_path)
    b = Replica("b", pg_url, policies, tmp_path)
    try:
        a.wait()
        b.wait()
        yield a, b, policies
    finally:
        a.stop()
        b.stop()


def _card(root: Path, version: str, share: float) -> None:
    write_card(root, f"tuned-{version}", name="tuned-share", version=version, kind="baseline",
               rule="fixed-target-share", params={"target_share": share})


def test_a_load_through_one_replica_reaches_the_other_at_once(replicas):
    a, b, root = replicas
    _card(root, "v1", 0.2)
    assert a.load("tuned-v1").status_code == 201
    r = b.run()  # b never loaded it: the database says it is current, b loads it from the shared path
    assert r.status_code == 201, r.text
    old = r.json()
    assert old["policy_version"] == "v1" and old["weights"]["proofs"] == pytest.approx(0.2)
    assert b.current()["tuned-share"] == "v1"

    _card(root, "v2", 0.7)
    assert a.load("tuned-v2").status_code == 201
    t0 = time.perf_counter()
    r = b.run()  # the first request after the load's answer: no wait, no poll
    lag_ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 201 and r.json()["policy_version"] == "v2", r.text
    assert r.json()["weights"]["proofs"] == pytest.approx(0.7)
    assert a.current()["tuned-share"] == b.current()["tuned-share"] == "v2"
    print(f"first run on replica b after a load through a: {lag_ms:.1f} ms (including loading the artifact)")
    # the run b started on v1 stays on v1, whichever replica answers its feedback
    rid = old["run_id"]
    for replica, step in ((a, 0), (b, 10), (a, 20)):
        d = replica.http.post(f"/v1/runs/{rid}/feedback", json=feedback_body(step), headers=auth()).json()
        assert d["policy_version"] == "v1" and d["weights"]["proofs"] == pytest.approx(0.2)

    # a roll-back through b reaches a the same way
    assert b.load("tuned-v1").status_code == 201
    assert a.run().json()["policy_version"] == "v1"
    assert a.current()["tuned-share"] == b.current()["tuned-share"] == "v1"


def test_a_replica_that_cannot_read_the_artifact_says_so_and_serves_it_once_it_can(replicas):
    a, b, root = replicas
    _card(root, "v3", 0.3)
    assert a.load("tuned-v3").status_code == 201
    # the folder is not there for b (a replica whose volume lacks it): a loaded it, b cannot
    hidden = root.parent / "elsewhere"
    shutil.move(root / "tuned-v3", hidden)
    r = b.run()
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    detail = r.json()["detail"]
    assert f"tuned-share@v3 (recorded at {root / 'tuned-v3'})" in detail and "same path" in detail, detail
    ready = b.http.get("/readyz")
    assert ready.status_code == 503 and "tuned-share@v3" in ready.json()["detail"]
    assert any("tuned-share@v3" in e for e in b.http.get("/v1/policies", headers=auth()).json()["errors"])
    assert a.run().json()["policy_version"] == "v3"  # a has it in memory and keeps serving
    # other files at the recorded path are refused, not served under the same version
    _card(root, "v3", 0.9)
    r = b.run()
    assert r.status_code == 503 and "differ from the ones loaded through another replica" in r.json()["detail"]
    # the right files come (back): b serves v3 without a restart
    shutil.rmtree(root / "tuned-v3")
    shutil.move(hidden, root / "tuned-v3")
    r = b.run()
    assert r.status_code == 201 and r.json()["policy_version"] == "v3"
    assert r.json()["weights"]["proofs"] == pytest.approx(0.3)
    assert b.http.get("/readyz").status_code == 200
    assert json.loads(b.http.get("/v1/policies", headers=auth()).text)["errors"] == []
