"""The bundled policy (package data ``agent/artifacts/<name>/``) is the default when the service is
given nothing else; the fallback baseline is configurable and checked at start-up.

The bundled folder is pointed at a temporary one holding a stand-in network (the working tree's
``agent/artifacts`` belongs to the agent's training; the wheel test reads the real package data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from mixagent.service.server import main as server_main
from mixagent.service.server.config import Settings
from mixagent.service.server.main import create_app
from mixagent.service.server.registry import DEFAULT_WITHOUT_BUNDLE, bundled_dir
from mixagent.trajectories import DomainSpace
from tests.service.artifacts import write_onnx_policy
from tests.service.conftest import auth, feedback_body, make_settings, run_body

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 3.0})


@pytest.fixture()
def bundle(tmp_path, monkeypatch) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "bundled"
    root.mkdir()
    monkeypatch.setattr(server_main, "bundled_dir", lambda: root)
    return root


def test_the_bundled_folder_is_found_through_the_package():
    import importlib.resources

    found = bundled_dir()
    expected = importlib.resources.files("mixagent.agent") / "artifacts"
    assert found is None or found == expected


def test_the_shipped_agent_loads_and_is_the_default(tmp_path, monkeypatch):
    """The real artifact in agent/artifacts (not a test stand-in): loads without torch's help,
    is the default, and serves a two-field run (any domain names) without falling back."""
    from mixagent.service.server import registry

    monkeypatch.setattr(server_main, "bundled_dir", registry.bundled_dir)  # undo the suite's isolation
    root = registry.bundled_dir()
    assert root is not None and (root / "agent" / "card.json").is_file() and (root / "agent" / "policy.onnx").is_file()
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.get("/readyz").json()["default_policy"] == "agent"
        run = c.post("/v1/runs", json=run_body(), headers=auth()).json()
        assert run["policy"] == "agent" and run["served_by"]["fallback"] is None
        w = run["weights"]
        assert sum(w.values()) == pytest.approx(1.0) and 0.0 < w["proofs"] < 1.0
        d = c.post(f"/v1/runs/{run['run_id']}/feedback", json=feedback_body(0), headers=auth()).json()
        assert d["served_by"]["policy"].startswith("agent@")


def test_the_bundled_policy_is_the_default(tmp_path, bundle):
    write_onnx_policy(bundle / "agent", SPACE, name="agent", version="v1")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        listed = {p["name"]: p for p in c.get("/v1/policies", headers=auth()).json()["data"]}
        assert listed["agent"]["bundled"] and listed["agent"]["default"] and listed["agent"]["current"]
        assert not listed["loss-softmax"]["default"]
        run = c.post("/v1/runs", json=run_body(), headers=auth()).json()
        assert (run["policy"], run["policy_version"]) == ("agent", "v1")
        assert run["served_by"] == {"policy": "agent@v1", "fallback": None, "reason": None}
        d = c.post(f"/v1/runs/{run['run_id']}/feedback", json=feedback_body(0), headers=auth()).json()
        assert d["served_by"]["policy"] == "agent@v1"
        assert c.get("/readyz").json()["default_policy"] == "agent"
    # MIXAGENT_DEFAULT_POLICY still wins
    with TestClient(create_app(make_settings(tmp_path, default_policy="prior"))) as c:
        assert c.post("/v1/runs", json=run_body(), headers=auth()).json()["policy"] == "prior"


def test_without_a_bundle_the_default_is_uniform(tmp_path, bundle):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.post("/v1/runs", json=run_body(), headers=auth()).json()["policy"] == DEFAULT_WITHOUT_BUNDLE
        assert c.get("/readyz").status_code == 200


def test_a_broken_bundle_is_reported_and_runs_are_still_served(tmp_path, bundle):
    write_onnx_policy(bundle / "agent", SPACE, name="agent", version="v1", width=7)
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"].startswith("bundled policy refused: ")
        assert "expected one input of width" in r.json()["detail"]
        assert c.post("/v1/runs", json=run_body(), headers=auth()).json()["policy"] == DEFAULT_WITHOUT_BUNDLE


def test_the_fallback_baseline_is_configurable(tmp_path, bundle):
    write_onnx_policy(bundle / "agent", SPACE, name="agent", version="v1")
    three = [{"name": "a", "field": "source", "prior": 2.0}, {"name": "m", "field": "math"},
             {"name": "c", "field": "code"}]
    with TestClient(create_app(make_settings(tmp_path, fallback_policy="prior"))) as c:
        run = c.post("/v1/runs", json=run_body(domains=three), headers=auth()).json()
        assert run["served_by"]["fallback"] == "prior"
        assert run["weights"] == pytest.approx({"a": 0.5, "m": 0.25, "c": 0.25})
        listed = {p["name"]: p for p in c.get("/v1/policies", headers=auth()).json()["data"]}
        assert listed["agent"]["fallback"] == "prior"


def test_an_unknown_fallback_is_refused_at_start_up():
    with pytest.raises(ValidationError, match=r"fallback_policy\n.*'nosuch' is not a built-in baseline; use one of "
                                              r"\['ado', 'doremi', 'fixed-target-share', 'loss-softmax', 'odm', "
                                              r"'prior', 'uniform', 'velocitune'\]"):
        Settings(fallback_policy="nosuch")
