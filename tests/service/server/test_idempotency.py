"""Run creation is safe to retry (``Idempotency-Key``), a trainer that trained before it could create
its run says on what (``initial_weights``), and what the service accepts but finds less useful is said
in ``warnings`` rather than silently taken."""

from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient

from mixagent.service.server.main import create_app
from tests.service.conftest import OTHER, auth, feedback_body, run_body


def key(k: str, token: str | None = None) -> dict[str, str]:
    return {**auth(*([token] if token else [])), "Idempotency-Key": k}


def test_a_retried_creation_answers_with_the_run_the_first_attempt_created(client):
    first = client.post("/v1/runs", json=run_body(), headers=key("a1b2"))
    again = client.post("/v1/runs", json=run_body(), headers=key("a1b2"))
    assert first.status_code == again.status_code == 201
    assert first.json()["replayed"] is False and again.json()["replayed"] is True
    assert {k: v for k, v in again.json().items() if k != "replayed"} == {
        k: v for k, v in first.json().items() if k != "replayed"}
    assert client.get("/v1/runs", headers=auth()).json()["count"] == 1
    # another body under the same key is a conflict naming the key and the run
    r = client.post("/v1/runs", json=run_body(horizon=9), headers=key("a1b2"))
    assert r.status_code == 409 and "Idempotency-Key: 'a1b2' was used for another run creation" in r.json()["detail"]
    assert first.json()["run_id"] in r.json()["detail"]
    # keys belong to a token: the same key from another token is another run
    other = client.post("/v1/runs", json=run_body(), headers=key("a1b2", OTHER))
    assert other.status_code == 201 and other.json()["run_id"] != first.json()["run_id"]
    # without a key, every POST is a new run (as before)
    assert client.post("/v1/runs", json=run_body(), headers=auth()).json()["replayed"] is False
    assert client.get("/v1/runs", headers=auth()).json()["count"] == 2


@pytest.mark.parametrize("bad", [b"", b"has space", b"x" * 129, "ünï".encode()])
def test_a_malformed_key_is_422(client, bad):
    r = client.post("/v1/runs", json=run_body(), headers={**auth(), "Idempotency-Key": bad})
    assert r.status_code == 422 and "Idempotency-Key" in r.text


def test_replicas_racing_on_one_key_create_one_run(settings, pg_url):
    s = settings.model_copy(update={"database_url": pg_url})
    with TestClient(create_app(s)) as a, TestClient(create_app(s)) as b:
        answers: list[dict] = []
        start = threading.Barrier(4)

        def post(c) -> None:  # type: ignore[no-untyped-def]
            start.wait()
            answers.append(c.post("/v1/runs", json=run_body(), headers=key("race-1")).json())

        threads = [threading.Thread(target=post, args=(c,)) for c in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({x["run_id"] for x in answers}) == 1
        assert sorted(x["replayed"] for x in answers) == [False, True, True, True]
        assert a.get("/v1/runs", headers=auth()).json()["count"] == 1


def test_a_trainer_that_trained_before_creating_its_run_gives_that_mixture(client, app):
    r = client.post("/v1/runs", json=run_body(initial_weights={"web": 3, "code": 1, "proofs": 0}), headers=auth())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["weights"]["web"] == pytest.approx(0.75, abs=1e-3) and body["weights"]["proofs"] > 0  # floored
    assert body["served_by"]["fallback"] == "trainer" and "initial_weights" in body["served_by"]["reason"]
    assert "mixagent_fallback_decisions_total{" not in client.get("/metrics").text  # not a policy fallback
    rid = body["run_id"]
    d0 = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()
    d1 = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10, mixture_id=body["mixture_id"]),
                     headers=auth()).json()
    assert d1["t"] == 1
    hist = client.get(f"/v1/runs/{rid}", headers=auth()).json()
    assert hist["initial_served_by"]["fallback"] == "trainer" and hist["history"][1]["trained_on"] == body["mixture_id"]
    assert d0["served_by"]["fallback"] is None  # decisions are the policy's again
    for bad, message in (({"web": 1, "code": 1}, "initial_weights: missing ['proofs']"),
                         ({"web": 0, "code": 0, "proofs": 0}, "initial_weights: the shares sum to 0"),
                         ({"web": -1, "code": 1, "proofs": 1}, "greater than or equal to 0")):
        r = client.post("/v1/runs", json=run_body(initial_weights=bad), headers=auth())
        assert r.status_code == 422 and message in r.text, r.text


def test_a_late_first_feedback_and_tokens_stuck_at_zero_are_warnings(client):
    """Errors are what would make the history inconsistent (order, names, going backwards: 4xx);
    warnings are what makes it less useful (accepted, said in every answer, retries included)."""
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    late = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20, tokens_seen=0), headers=auth()).json()
    assert late["t"] == 0 and len(late["warnings"]) == 2
    assert late["warnings"][0].startswith("step: the run's first feedback is at step 20, so it becomes the reference")
    assert "eval_on_start=True" in late["warnings"][0]
    assert late["warnings"][1].startswith("tokens_seen: 0 at step 20") and "tokens_per_step" in late["warnings"][1]
    again = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20, tokens_seen=0), headers=auth()).json()
    assert again["replayed"] and again["warnings"] == late["warnings"]
    fine = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(30), headers=auth()).json()
    assert fine["warnings"] == []
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    assert client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()["warnings"] == []
