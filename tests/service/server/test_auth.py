"""Bearer tokens: no token 401, another token's run 404, admin routes 403 for plain tokens."""

from __future__ import annotations

import pytest

from mixagent.service.server.config import DEV_TOKEN, Settings
from tests.service.conftest import ADMIN, OTHER, auth, feedback_body, run_body


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dG9rOng="}])
def test_without_a_valid_token_every_run_route_is_401(client, headers):
    for method, path, body in [
        ("post", "/v1/runs", run_body()),
        ("get", "/v1/runs", None),
        ("get", "/v1/runs/" + "a" * 32, None),
        ("post", "/v1/runs/" + "a" * 32 + "/feedback", feedback_body(0)),
        ("get", "/v1/policies", None),
        ("get", "/v1/trajectories", None),
    ]:
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "token" in r.json()["detail"]


def test_a_run_belongs_to_the_token_that_created_it(client):
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    assert client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).status_code == 200
    for r in (
        client.get(f"/v1/runs/{rid}", headers=auth(OTHER)),
        client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth(OTHER)),
        client.get(f"/v1/trajectories?run_id={rid}", headers=auth(OTHER)),
    ):
        assert r.status_code == 404 and rid in r.json()["detail"]
    # the owner's run is untouched by the other token's attempt
    assert client.get(f"/v1/runs/{rid}", headers=auth()).json()["decisions"] == 1
    # an admin may export every run for offline training
    assert len(client.get("/v1/trajectories", headers=auth(ADMIN)).text.splitlines()) == 1


def test_loading_policies_needs_an_admin_token(client):
    r = client.post("/v1/policies/load", json={"path": "x"}, headers=auth())
    assert r.status_code == 403 and "admin" in r.json()["detail"]


def test_the_development_token_is_refused_outside_local():
    with pytest.raises(ValueError, match="development token"):
        Settings(environment="production", tokens=DEV_TOKEN)
    with pytest.raises(ValueError, match="at least one bearer token"):
        Settings(tokens=" , ")
    s = Settings(environment="production", tokens="a,b", admin_tokens="c")
    assert s.token_list == ["a", "b"] and s.admin_token_list == ["c"]


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXAGENT_TOKENS", "t1,t2")
    monkeypatch.setenv("MIXAGENT_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("MIXAGENT_MAX_BODY_BYTES", "4096")
    s = Settings()
    assert s.token_list == ["t1", "t2"] and s.max_body_bytes == 4096 and s.database_url.endswith("x.db")
