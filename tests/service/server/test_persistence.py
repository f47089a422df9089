"""Persistence: decisions survive a restart (SQLite file, WAL), and the PostgreSQL path works with
two app instances (replicas) on one real database."""

from __future__ import annotations

import threading

from sqlalchemy import text
from starlette.testclient import TestClient

from mixagent.service.server.main import create_app
from tests.service.conftest import auth, feedback_body, run_body


def test_a_restart_keeps_every_decision(settings):
    with TestClient(create_app(settings)) as c:
        rid = c.post("/v1/runs", json=run_body(policy="loss-softmax"), headers=auth()).json()["run_id"]
        before = [c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(s), headers=auth()).json() for s in (0, 10)]
    with TestClient(create_app(settings)) as c:
        # retries after the restart are answered from the store
        again = c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth()).json()
        assert again == {**before[1], "replayed": True}
        nxt = c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20), headers=auth()).json()
        assert nxt["t"] == 2
        hist = c.get(f"/v1/runs/{rid}", headers=auth()).json()["history"]
    assert [h["decision_id"] for h in hist] == [before[0]["decision_id"], before[1]["decision_id"], nxt["decision_id"]]
    # the decision after the restart is the one an uninterrupted run would make
    with TestClient(create_app(settings.model_copy(update={"database_url": settings.database_url + "2"}))) as c:
        rid2 = c.post("/v1/runs", json=run_body(policy="loss-softmax"), headers=auth()).json()["run_id"]
        ref = [c.post(f"/v1/runs/{rid2}/feedback", json=feedback_body(s), headers=auth()).json() for s in (0, 10, 20)]
    assert ref[2]["weights"] == nxt["weights"]


def test_sqlite_runs_in_wal_mode(app, settings):
    with app.state.store.sessions() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_postgres_replicas_share_runs_and_stay_idempotent(settings, pg_url):
    s = settings.model_copy(update={"database_url": pg_url})
    with TestClient(create_app(s)) as a, TestClient(create_app(s)) as b:
        rid = a.post("/v1/runs", json=run_body(horizon=6), headers=auth()).json()["run_id"]
        # alternate replicas: each sees the other's decisions
        d0 = a.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()
        d1 = b.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth()).json()
        assert (d0["t"], d1["t"]) == (0, 1)
        # replica a still caches the run at one decision: a retry of step 10 must find b's decision
        again = a.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth()).json()
        assert again == {**d1, "replayed": True}
        d2 = a.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20), headers=auth()).json()
        assert d2["t"] == 2
        # a step racing on both replicas is recorded once; both answers agree
        results: dict[str, dict] = {}

        def post(name, client):  # type: ignore[no-untyped-def]
            results[name] = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(30), headers=auth()).json()

        threads = [threading.Thread(target=post, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["a"]["decision_id"] == results["b"]["decision_id"]
        assert sorted([results["a"]["replayed"], results["b"]["replayed"]]) == [False, True]
        hist = b.get(f"/v1/runs/{rid}", headers=auth()).json()
        assert [h["step"] for h in hist["history"]] == [0, 10, 20, 30]
        assert b.get(f"/v1/runs/{rid}", headers=auth(), ).status_code == 200


# Upgrades of databases made by earlier releases: tests/service/server/test_migrations.py
