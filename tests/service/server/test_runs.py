"""The feedback loop: create, post feedback, idempotent retries, ordering, history, horizon."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.conftest import auth, feedback_body, run_body


def _create(client, **over):  # type: ignore[no-untyped-def]
    r = client.post("/v1/runs", json=run_body(**over), headers=auth())
    assert r.status_code == 201, r.text
    return r.json()


def test_create_run_returns_initial_weights_of_the_policy(client):
    data = _create(client, policy="prior")
    assert data["policy"] == "prior" and data["policy_version"] == "builtin"
    assert data["weights"] == pytest.approx({"web": 0.6, "code": 0.2, "proofs": 0.2})
    assert list(data["weights"]) == ["web", "code", "proofs"]
    assert len(data["run_id"]) == 32 and len(data["mixture_id"]) == 32
    r = client.get(f"/v1/runs/{data['run_id']}", headers=auth())
    assert r.json()["initial_weights"] == data["weights"] and r.json()["history"] == []


def test_default_policy_is_uniform_until_an_artifact_is_bundled(client):
    data = _create(client)
    assert data["policy"] == "uniform"
    assert data["weights"] == pytest.approx({"web": 1 / 3, "code": 1 / 3, "proofs": 1 / 3})


def test_feedback_loop_records_history_and_finishes_at_the_horizon(client):
    run = _create(client, policy="fixed-target-share", horizon=2)
    rid = run["run_id"]
    answers = []
    for step in (0, 10, 20):
        r = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(step), headers=auth())
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert [a["t"] for a in answers] == [0, 1, 2]
    assert [a["done"] for a in answers] == [False, False, True]
    # fixed target share 0.5: the target gets half, the source half split 3:1 by priors
    assert answers[0]["weights"] == pytest.approx({"web": 0.375, "code": 0.125, "proofs": 0.5})
    r = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(30), headers=auth())
    assert r.status_code == 409 and "horizon+1 = 3" in r.json()["detail"]
    hist = client.get(f"/v1/runs/{rid}", headers=auth()).json()
    assert hist["done"] and hist["decisions"] == 3
    assert [h["step"] for h in hist["history"]] == [0, 10, 20]
    assert [h["decision_id"] for h in hist["history"]] == [a["decision_id"] for a in answers]
    assert hist["history"][1]["domain_losses"] == feedback_body(10)["domain_losses"]


def test_loss_softmax_follows_the_losses_posted(client):
    rid = _create(client, policy="loss-softmax")["run_id"]
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth())
    w = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10, t=3), headers=auth()).json()["weights"]
    # w_k ∝ prior_k · exp(ℓ_k(t) / (0.1 · ℓ_k(0)))
    l0 = np.array([2.0, 1.5, 4.0])
    lt = np.array([2.03, 1.56, 3.4])
    raw = np.array([3.0, 1.0, 1.0]) * np.exp(lt / (0.1 * l0))
    assert list(w.values()) == pytest.approx((raw / raw.sum()).tolist(), rel=1e-9)
    assert w["proofs"] < 0.2  # the target's loss fell most: it gets less than its prior


def test_retry_of_the_same_step_returns_the_stored_decision(client):
    rid = _create(client, policy="loss-softmax")["run_id"]
    first = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth())
    again = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth())
    assert again.status_code == 200
    assert again.json() == {**first, "replayed": True}
    assert client.get(f"/v1/runs/{rid}", headers=auth()).json()["decisions"] == 2


def test_retry_with_a_different_payload_is_a_conflict(client):
    rid = _create(client)["run_id"]
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth())
    changed = feedback_body(0)
    changed["domain_losses"]["web"] = 2.5
    r = client.post(f"/v1/runs/{rid}/feedback", json=changed, headers=auth())
    assert r.status_code == 409
    assert "step 0" in r.json()["detail"] and "different payload" in r.json()["detail"]


@pytest.mark.parametrize("late", [5, 15])
def test_steps_must_strictly_increase(client, late):
    rid = _create(client)["run_id"]
    for step in (0, 10, 20):
        client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(step), headers=auth())
    r = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(late, t=7), headers=auth())
    assert r.status_code == 409
    assert f"step: {late} does not come after the last recorded step 20" in r.json()["detail"]


def test_a_missed_decision_is_recorded_as_the_mixture_really_trained_on(client):
    run = _create(client, policy="loss-softmax")
    rid = run["run_id"]
    d0 = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()
    d1 = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10, mixture_id=d0["decision_id"]),
                     headers=auth()).json()
    # the trainer never saw d1 (service unreachable) and kept training on d0's mixture
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20, mixture_id=d0["decision_id"]), headers=auth())
    lines = client.get("/v1/trajectories", headers=auth()).text.splitlines()
    from mixagent.trajectories import Trajectory

    traj = Trajectory.model_validate_json(lines[0])
    assert [w.as_dict(traj.history.space) for w in traj.history.weights] == [
        pytest.approx(d0["weights"]), pytest.approx(d0["weights"])
    ]
    assert d1["weights"] != d0["weights"]
    bad = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(30, mixture_id="f" * 32), headers=auth())
    assert bad.status_code == 409 and "is not a mixture of run" in bad.json()["detail"]


def test_list_runs_is_per_token(client):
    a = _create(client)["run_id"]
    b = _create(client)["run_id"]
    r = client.get("/v1/runs", headers=auth()).json()
    assert r["count"] == 2 and [x["run_id"] for x in r["data"]] == [a, b]
    assert client.get("/v1/runs?limit=1&offset=1", headers=auth()).json()["data"][0]["run_id"] == b
    assert client.get("/v1/runs", headers=auth("tok-bob")).json() == {"data": [], "count": 0}


# ----- issue 11, point 4: tokens_seen, limits a real run needs, pagination ---------------------------
def test_tokens_seen_never_goes_backwards(client):
    rid = _create(client)["run_id"]
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0, tokens_seen=0), headers=auth())
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10, tokens_seen=4096), headers=auth())
    r = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20, tokens_seen=100), headers=auth())
    assert r.status_code == 409
    assert r.json()["detail"].startswith(
        "tokens_seen: 100 at step 20 is less than the 4096 reported at step 10 of run")
    # equal counts are allowed (a trainer that does not count tokens sends the same number)
    r = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20, tokens_seen=4096), headers=auth())
    assert r.status_code == 200


def test_run_size_limits_name_the_values(client):
    r = client.post("/v1/runs", json=run_body(horizon=4097), headers=auth())
    assert r.status_code == 422
    assert r.json()["detail"].startswith("body.horizon: Input should be less than or equal to 4096")
    many = [{"name": f"d{i}", "field": "source" if i else "target"} for i in range(256)]
    r = client.post("/v1/runs", json=run_body(domains=many, horizon=1025), headers=auth())
    assert r.status_code == 422
    assert "horizon: 1025 decisions x 256 domains = 262400 values; a run holds at most 262144" in r.json()["detail"]
    assert client.post("/v1/runs", json=run_body(domains=many, horizon=1024), headers=auth()).status_code == 201
    assert client.post("/v1/runs", json=run_body(horizon=4096), headers=auth()).status_code == 201


def test_run_history_is_paginated(client):
    rid = _create(client, horizon=12)["run_id"]
    steps = [10 * i for i in range(13)]
    ids = [client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(s), headers=auth()).json()["decision_id"]
           for s in steps]
    first = client.get(f"/v1/runs/{rid}?limit=5", headers=auth()).json()
    assert (first["decisions"], first["offset"], first["next_offset"], first["done"]) == (13, 0, 5, True)
    assert [h["decision_id"] for h in first["history"]] == ids[:5]
    pages, offset = [], 0
    while offset is not None:
        page = client.get(f"/v1/runs/{rid}?offset={offset}&limit=5", headers=auth()).json()
        pages += page["history"]
        offset = page["next_offset"]
    assert [h["step"] for h in pages] == steps
    assert client.get(f"/v1/runs/{rid}?offset=5&limit=1", headers=auth()).json()["history"][0]["decision_id"] == ids[5]
    past = client.get(f"/v1/runs/{rid}?offset=20", headers=auth()).json()
    assert past["history"] == [] and past["next_offset"] is None and past["decisions"] == 13
    r = client.get(f"/v1/runs/{rid}?limit=501", headers=auth())
    assert r.status_code == 422 and r.json()["detail"].startswith("query.limit")
    assert len(client.get(f"/v1/runs/{rid}", headers=auth()).json()["history"]) == 13  # default 100


def test_a_page_of_a_large_run_is_small(client):
    """The audit's run (many decisions x 256 domains) made GET /v1/runs/{id} 12.6 MB; a page is bounded."""
    domains = [{"name": f"d{i:03d}", "field": "target" if i < 8 else "source"} for i in range(256)]
    rid = client.post("/v1/runs", json=run_body(domains=domains, horizon=1000, policy="prior"),
                      headers=auth()).json()["run_id"]
    for k in range(120):
        body = {"step": k, "tokens_seen": k * 1000,
                "field_scores": {"source": -2.0, "target": -3.0},
                "domain_losses": {d["name"]: 2.0 + 0.001 * k for d in domains}}
        assert client.post(f"/v1/runs/{rid}/feedback", json=body, headers=auth()).status_code == 200
    r = client.get(f"/v1/runs/{rid}", headers=auth())
    assert len(r.json()["history"]) == 100 and r.json()["next_offset"] == 100
    per_entry = len(r.content) / 100
    assert per_entry * 500 < 10_000_000  # the largest page (500 entries at 256 domains) stays under 10 MB


def test_the_api_docs_load_without_internet(client):
    """/docs is Swagger UI from assets in the installed package, not a CDN (blank offline before)."""
    html = client.get("/docs").text
    assert "/docs-static/swagger-ui-bundle.js" in html and "cdn.jsdelivr" not in html and "unpkg" not in html
    js = client.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs-static/swagger-ui.css").status_code == 200
