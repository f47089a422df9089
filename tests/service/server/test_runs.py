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


def test_default_policy_is_loss_softmax_until_an_artifact_is_bundled(client):
    data = _create(client)
    assert data["policy"] == "loss-softmax"
    assert data["weights"] == pytest.approx({"web": 0.6, "code": 0.2, "proofs": 0.2})


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
