"""Bad input is a 4xx whose message names the problem; never a 5xx."""

from __future__ import annotations

import json

import pytest

from tests.service.conftest import ADMIN, auth, feedback_body, run_body


@pytest.fixture()
def rid(client):  # type: ignore[no-untyped-def]
    return client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]


def _post_raw(client, path, text):  # type: ignore[no-untyped-def]
    return client.post(path, content=text, headers={**auth(), "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("literal", "where"),
    [("NaN", "body.domain_losses.web"), ("Infinity", "body.domain_losses.web"),
     ("-Infinity", "body.domain_losses.web")],
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

    r = client.post(f"/v1/runs/{rid}/feedback", content=chunks(),
                    headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_run_and_route(client):
    r = client.post("/v1/runs/" + "0" * 32 + "/feedback", json=feedback_body(0), headers=auth())
    assert r.status_code == 404 and "no run '00000000000000000000000000000000'" in r.json()["detail"]
    assert client.get("/v1/nothing", headers=auth()).status_code == 404
    assert client.delete("/v1/runs", headers=auth()).status_code == 405


def test_a_body_that_is_not_utf8_is_422(client, rid):
    r = client.post(f"/v1/runs/{rid}/feedback", content=b"\xff\x12\xfe?O",
                    headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: malformed JSON")


# ----- the audit's requests (issue 11, points 1 and 3) --------------------------------------------
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("a\u0000b", "body.path: control character(s) ['U+0000'] in 'a\\x00b'"),
        ("x" * 256, "is 256 bytes; a file name has at most 255"),
        ("ok/" + "é" * 128, "is 256 bytes; a file name has at most 255"),
        ("tab\there", "control character(s) ['U+0009']"),
    ],
    ids=["nul", "long-name", "long-utf8-part", "tab"],
)
def test_bad_artifact_paths_are_422_naming_the_path(client, path, message):
    r = client.post("/v1/policies/load", json={"path": path}, headers=auth(ADMIN))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("body.path") and message in r.json()["detail"]


def test_file_system_errors_while_loading_are_422(client, settings, monkeypatch):
    """Whatever the file system raises (here: a name too long for it, below the 255-byte rule)."""
    import errno

    from mixagent.service.server import registry

    def refuse(folder, *a, **k):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENAMETOOLONG, "File name too long", str(folder))

    monkeypatch.setattr(registry, "load_artifact", refuse)
    r = client.post("/v1/policies/load", json={"path": "deep/name"}, headers=auth(ADMIN))
    assert r.status_code == 422
    assert r.json()["detail"] == "path: cannot read artifact 'deep/name': File name too long"


def test_refusals_keep_the_connection_alive(server):
    """A 4xx answer leaves the keep-alive connection open (a 500 made uvicorn drop it)."""
    import http.client


    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = json.dumps({"path": "a\u0000b"})
        conn.request("POST", "/v1/policies/load", body=body,
                     headers={**auth(ADMIN), "Content-Type": "application/json"})
        sock = conn.sock
        r = conn.getresponse()
        assert r.status == 422 and (r.getheader("connection") or "").lower() != "close"
        r.read()
        conn.request("GET", "/healthz")
        r2 = conn.getresponse()
        assert r2.status == 200 and conn.sock is sock  # the same socket: not reconnected
        r2.read()
        conn.request("GET", "/v1/runs?" + "x=1&" * 3000, headers=auth())  # 414 keeps it too
        r3 = conn.getresponse()
        assert r3.status == 414 and r3.getheader("content-type") == "application/json"
        r3.read()
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200 and conn.sock is sock
    finally:
        conn.close()


def test_the_url_and_header_limits_answer_json(client):
    r = client.get("/v1/runs?offset=0&" + "a" * 9000, headers=auth())
    assert r.status_code == 414
    detail = r.json()["detail"]
    assert detail.startswith("url: the path and query string are ") and "limit is 8192 bytes" in detail
    r = client.get("/v1/runs", headers={**auth(), "X-Big": "b" * 17000})
    assert r.status_code == 431 and "16384 bytes" in r.json()["detail"]
    r = client.get("/v1/runs", headers={**auth(), **{f"X-H{i}": "1" for i in range(70)}})
    assert r.status_code == 431 and "64 lines" in r.json()["detail"]
    # just under the limits passes
    assert client.get("/v1/runs?offset=0&" + "a" * 8000, headers=auth()).status_code == 422  # unknown query key
    assert client.get("/v1/runs", headers={**auth(), "X-Big": "b" * 15000}).status_code == 200


def test_options_and_405_list_every_method_of_the_path(client):
    r = client.options("/v1/runs")
    assert r.status_code == 204 and r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    r = client.options("/v1/runs/" + "a" * 32 + "/feedback")
    assert r.status_code == 204 and r.headers["allow"] == "POST, OPTIONS"
    assert client.options("/v1/nothing").status_code == 404
    r = client.delete("/v1/runs", headers=auth())
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    assert r.json()["detail"] == "method: DELETE is not allowed on /v1/runs; allowed: GET, HEAD, POST, OPTIONS"


def test_the_openapi_schema_closes_name_keyed_maps_and_documents_the_limits(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for model, prop in (("FeedbackIn", "field_scores"), ("FeedbackIn", "domain_losses")):
        s = schemas[model]["properties"][prop]
        assert s["additionalProperties"] is False and list(s["patternProperties"]) == ["^[A-Za-z0-9_.\\-]+$"]
    fw = schemas["ObjectiveIn"]["properties"]["field_weights"]["anyOf"][0]
    assert fw["additionalProperties"] is False
    assert "8 KiB (414)" in doc["info"]["description"] and "(431)" in doc["info"]["description"]
    feedback = doc["paths"]["/v1/runs/{run_id}/feedback"]["post"]["responses"]
    assert {"409", "413", "414", "422", "431"} <= set(feedback)
    # a key the server refuses is now schema-invalid too: the server says which
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    body = feedback_body(0)
    body["domain_losses"]["bad key"] = 1.0
    r = client.post(f"/v1/runs/{rid}/feedback", json=body, headers=auth())
    assert r.status_code == 422 and "body.domain_losses.bad key" in r.json()["detail"]


def test_a_lost_database_is_503_not_500(client, app, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def down(*a, **k):  # type: ignore[no-untyped-def]
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(app.state.store, "list_runs", down)
    r = client.get("/v1/runs", headers=auth())
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json() == {"detail": "database: unavailable, retry later"}


def test_a_deeply_nested_card_is_a_422_and_the_connection_stays_usable(server, settings):
    """json gives up on deep nesting with a RecursionError, which was a 500 (and reset the next request)."""
    import http.client

    folder = settings.policy_dir / "deep"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text("{\"a\": " * 50_000 + "1" + "}" * 50_000)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(2):  # the same keep-alive connection, twice
            conn.request("POST", "/v1/policies/load", body=json.dumps({"path": "deep"}),
                         headers={**auth(ADMIN), "Content-Type": "application/json"})
            r = conn.getresponse()
            detail = json.loads(r.read())["detail"]
            assert r.status == 422 and "nested too deeply" in detail, detail
    finally:
        conn.close()


def test_initial_weights_do_not_skip_the_policys_space_check(client):
    """fixed-target-share cannot act on a space without a target field: refused at creation (was 201,
    then a 422 at every feedback)."""
    source_only = [{"name": "a", "field": "source"}, {"name": "b", "field": "source"}]
    r = client.post("/v1/runs", json=run_body(domains=source_only, policy="fixed-target-share",
                                              initial_weights={"a": 0.5, "b": 0.5}), headers=auth())
    assert r.status_code == 422, r.text
    assert "target" in r.json()["detail"]
