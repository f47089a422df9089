"""Bad input is a 4xx whose message names the problem; never a 5xx."""

from __future__ import annotations

import json

import pytest

from tests.service.conftest import auth, feedback_body, run_body


@pytest.fixture()
def rid(client):  # type: ignore[no-untyped-def]
    return client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]


def _post_raw(client, path, text):  # type: ignore[no-untyped-def]
    return client.post(path, content=text, headers={**auth(), "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("literal", "where"),
    [("NaN", "body.domain_losses.web"), ("Infinity", "body.domain_losses.web"), ("-Infinity", "body.domain_losses.web")],
)
def test_non_finite_numbers_are_422(client, rid, literal, where):
    text = json.dumps(feedback_body(0)).replace('"web": 2.0', f'"web": {literal}')
    r = _post_raw(client, f"/v1/runs/{rid}/feedback", text)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(where)


def test_unknown_and_missing_domains_are_422_naming_them(client, rid):
    body = feedback_body(0)
    body["domain_losses"]["poetry"] = body["domain_losses"].pop("code")
    r = client.post(f"/v1/runs/{rid}/feedback", json=body, headers=auth())
    assert r.status_code == 422
    assert "domain_losses: missing ['code']" in r.json()["detail"]
    assert "domain_losses: unknown ['poetry']" in r.json()["detail"]
    body = feedback_body(0)
    del body["field_scores"]["target"]
    r = client.post(f"/v1/runs/{rid}/feedback", json=body, headers=auth())
    assert r.status_code == 422 and "field_scores: missing ['target']" in r.json()["detail"]
    # nothing was recorded: the same step is still free
    assert client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).status_code == 200


def test_missing_fields_and_wrong_counts_are_422(client, rid):
    body = feedback_body(0)
    del body["tokens_seen"]
    r = client.post(f"/v1/runs/{rid}/feedback", json=body, headers=auth())
    assert r.status_code == 422 and r.json()["detail"] == "body.tokens_seen: Field required"
    r = client.post("/v1/runs", json=run_body(domains=[]), headers=auth())
    assert r.status_code == 422 and r.json()["detail"].startswith("body.domains: List should have at least 1 item")
    many = [{"name": f"d{i}", "field": "source"} for i in range(257)]
    r = client.post("/v1/runs", json=run_body(domains=many), headers=auth())
    assert r.status_code == 422 and "at most 256 items" in r.json()["detail"]
    dup = run_body(domains=[{"name": "a", "field": "source"}, {"name": "a", "field": "target"}])
    r = client.post("/v1/runs", json=dup, headers=auth())
    assert r.status_code == 422 and "duplicate domain name(s) ['a']" in r.json()["detail"]


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"step": False}, "body.step"),
        ({"step": "3"}, "body.step"),
        ({"step": 1.5}, "body.step"),
        ({"step": [0]}, "body.step"),
        ({"step": -1}, "body.step"),
        ({"tokens_seen": True}, "body.tokens_seen"),
        ({"field_scores": {"source": False, "target": -1.0}}, "body.field_scores.source"),
        ({"extra": 1}, "body.extra"),
        ({"mixture_id": "not-an-id"}, "body.mixture_id"),
    ],
)
def test_strict_types_refuse_coercions_and_extras(client, rid, patch, where):
    r = client.post(f"/v1/runs/{rid}/feedback", json={**feedback_body(0), **patch}, headers=auth())
    assert r.status_code == 422
    assert r.json()["detail"].startswith(where), r.json()["detail"]


def test_create_run_input_errors(client):
    cases = [
        (run_body(horizon=0), "body.horizon"),
        (run_body(policy="nope"), "policy: unknown policy 'nope'"),
        (run_body(policy="prior", policy_version="v9"), "policy_version: policy 'prior' has no version 'v9'"),
        (run_body(domains=[{"name": "a", "field": "source", "prior": 0}]), "body.domains.0.prior"),
        (run_body(domains=[{"name": "a b", "field": "source"}]), "body.domains.0.name"),
        (run_body(policy="fixed-target-share", domains=[{"name": "a", "field": "source"}]),
         "space: fixed-target-share needs a target field"),
        (run_body(objective={"field_weights": {"math": 1.0}}), "objective.field_weights: unknown field(s) ['math']"),
    ]
    for body, where in cases:
        r = client.post("/v1/runs", json=body, headers=auth())
        assert r.status_code == 422, (body, r.text)
        assert where in r.json()["detail"], r.json()["detail"]


def test_malformed_json_is_422(client, rid):
    r = _post_raw(client, f"/v1/runs/{rid}/feedback", '{"step": 0,')
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
    r = _post_raw(client, "/v1/runs", "[1, 2")
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]


def test_oversized_bodies_are_413(client, rid, settings):
    big = feedback_body(0, pad="x" * settings.max_body_bytes)
    r = client.post(f"/v1/runs/{rid}/feedback", json=big, headers=auth())
    assert r.status_code == 413 and "limit is 262144 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds for streamed bodies too
        for _ in range(300):
            yield b"x" * 1024

    r = client.post(f"/v1/runs/{rid}/feedback", content=chunks(), headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_run_and_route(client):
    r = client.post("/v1/runs/" + "0" * 32 + "/feedback", json=feedback_body(0), headers=auth())
    assert r.status_code == 404 and "no run '00000000000000000000000000000000'" in r.json()["detail"]
    assert client.get("/v1/nothing", headers=auth()).status_code == 404
    assert client.delete("/v1/runs", headers=auth()).status_code == 405


def test_a_body_that_is_not_utf8_is_422(client, rid):
    r = client.post(f"/v1/runs/{rid}/feedback", content=b"\xff\x12\xfe?O", headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: malformed JSON")
