"""The policy registry: built-ins, artifact cards, hot swap without touching running runs, refusal of
invalid artifacts while the service keeps serving, ONNX policies, reload after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from mixagent.service.server.main import create_app
from mixagent.trajectories import ActionSpec, DomainSpace, Feedback, History, action_to_weights, encode
from tests.service.conftest import ADMIN, auth, feedback_body, run_body, write_card


def _metric(client, name: str) -> float:  # type: ignore[no-untyped-def]
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _share_card(root: Path, version: str, share: float, folder: str | None = None) -> Path:
    return write_card(root, folder or f"tuned-{version}", name="tuned-share", version=version, kind="baseline",
                      rule="fixed-target-share", params={"target_share": share})


def _load(client, path: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/policies/load", json={"path": path}, headers=auth(ADMIN))


def test_builtins_are_listed_and_loss_softmax_is_the_default(client):
    data = client.get("/v1/policies", headers=auth()).json()
    assert data["count"] == 4
    assert {p["name"] for p in data["data"]} == {"uniform", "prior", "fixed-target-share", "loss-softmax"}
    default = [p for p in data["data"] if p["default"]]
    assert [p["name"] for p in default] == ["loss-softmax"]
    assert all(p["kind"] == "builtin" and p["current"] for p in data["data"])


def test_hot_swap_keeps_running_runs_on_their_version(client, settings):
    root = settings.policy_dir
    _share_card(root, "v1", 0.2)
    r = _load(client, "tuned-v1")
    assert r.status_code == 201 and r.json()["version"] == "v1" and r.json()["current"]
    old = client.post("/v1/runs", json=run_body(policy="tuned-share"), headers=auth()).json()
    assert old["policy_version"] == "v1" and old["weights"]["proofs"] == pytest.approx(0.2)
    client.post(f"/v1/runs/{old['run_id']}/feedback", json=feedback_body(0), headers=auth())

    _share_card(root, "v2", 0.7)
    assert _load(client, "tuned-v2").status_code == 201
    new = client.post("/v1/runs", json=run_body(policy="tuned-share"), headers=auth()).json()
    assert new["policy_version"] == "v2" and new["weights"]["proofs"] == pytest.approx(0.7)
    # the running run still gets v1's decisions
    d = client.post(f"/v1/runs/{old['run_id']}/feedback", json=feedback_body(10), headers=auth()).json()
    assert d["policy_version"] == "v1" and d["weights"]["proofs"] == pytest.approx(0.2)
    # a new run may still pin the old version explicitly
    pinned = client.post("/v1/runs", json=run_body(policy="tuned-share", policy_version="v1"), headers=auth()).json()
    assert pinned["weights"]["proofs"] == pytest.approx(0.2)
    listed = {(p["name"], p["version"]): p for p in client.get("/v1/policies", headers=auth()).json()["data"]}
    assert not listed[("tuned-share", "v1")]["current"] and listed[("tuned-share", "v2")]["current"]
    assert listed[("tuned-share", "v2")]["params"] == {"target_share": 0.7}
    # reloading the same artifact is idempotent; a different card under the same version is refused
    assert _load(client, "tuned-v2").status_code == 201
    _share_card(root, "v2", 0.9, folder="tuned-v2-bis")
    r = _load(client, "tuned-v2-bis")
    assert r.status_code == 422 and "already loaded with a different card" in r.json()["detail"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.mkdir(), "no policy card"),
        (lambda d: (d.mkdir(), (d / "card.json").write_text("{not json")), "not valid JSON"),
        (lambda d: write_card(d.parent, d.name, name="x", version="1", kind="baseline", rule="magic"),
         "unknown baseline 'magic'"),
        (lambda d: write_card(d.parent, d.name, name="x", version="1", kind="baseline", rule="fixed-target-share",
                              params={"target_share": 1.5}), "target_share: must be a number in (0, 1)"),
        (lambda d: write_card(d.parent, d.name, name="x", version="1", kind="baseline", rule="uniform",
                              params={"alpha": 1}), "not parameters of 'uniform'"),
        (lambda d: write_card(d.parent, d.name, name="x", version="1", kind="baseline", rule="uniform",
                              encoder_version="obs-v0"), "encoder_version 'obs-v0' does not match"),
        (lambda d: write_card(d.parent, d.name, name="x", version="1", kind="baseline", rule="uniform", extra=1),
         "extra: Extra inputs are not permitted"),
        (lambda d: write_card(d.parent, d.name, name="x", version="1", kind="onnx", model_file="p.onnx",
                              fields=["source", "target"]), "model file named by the card does not exist"),
        (lambda d: (write_card(d.parent, d.name, name="x", version="1", kind="onnx", model_file="p.onnx",
                               fields=["source", "target"]), (d / "p.onnx").write_bytes(b"garbage")),
         "not a loadable ONNX model"),
    ],
    ids=["no-card", "bad-json", "unknown-rule", "bad-param", "unknown-param", "encoder", "extra-key",
         "no-model", "corrupt-model"],
)
def test_invalid_artifacts_are_refused_and_the_service_keeps_serving(client, settings, setup, message):
    setup(settings.policy_dir / "bad")
    before = client.get("/v1/policies", headers=auth()).json()
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    r = _load(client, "bad")
    assert r.status_code == 422 and message in r.json()["detail"], r.json()
    assert "bad" in r.json()["detail"]  # names the artifact
    assert client.get("/v1/policies", headers=auth()).json()["count"] == before["count"]
    assert _metric(client, "mixagent_policy_load_failures_total") == 1.0
    assert client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_artifact_paths_must_stay_inside_the_policy_dir(client):
    r = _load(client, "../../etc")
    assert r.status_code == 422 and "outside the policy directory" in r.json()["detail"]


# ----- ONNX ----------------------------------------------------------------------------------------
def write_onnx_policy(folder: Path, space: DomainSpace, spec: ActionSpec, seed: int = 0, width: int | None = None):  # type: ignore[no-untyped-def]
    """A real ONNX network obs -> tanh(obs @ W + b), written with the onnx package (no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mixagent.trajectories import action_size, observation_size

    n, a = width or observation_size(space, spec), action_size(space, spec)
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, size=(n, a)).astype(np.float32)
    b = rng.normal(0, 0.1, size=(a,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["z"]), helper.make_node("Add", ["z", "b"], ["y"]),
         helper.make_node("Tanh", ["y"], ["action"])],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", a])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "policy.onnx")
    card = {"name": "learned", "version": f"s{seed}", "kind": "onnx", "model_file": "policy.onnx",
            "fields": list(space.fields), "action": spec.model_dump(), "training_data_hash": "abc123",
            "metrics": {"eval/return": 0.1}}
    (folder / "card.json").write_text(json.dumps(card))
    return w, b


def test_an_onnx_policy_serves_the_decisions_of_its_network(client, settings):
    space = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 3.0})
    spec = ActionSpec(beta=3.0, epsilon=0.02)
    w, b = write_onnx_policy(settings.policy_dir / "learned", space, spec)
    assert _load(client, "learned").status_code == 201
    run = client.post("/v1/runs", json=run_body(policy="learned", horizon=4), headers=auth()).json()
    assert run["weights"] == pytest.approx(dict(zip(space.names, space.priors().tolist(), strict=True)))
    history = History(space=space)
    for step in (0, 10, 20):
        fb = feedback_body(step)
        got = client.post(f"/v1/runs/{run['run_id']}/feedback", json=fb, headers=auth()).json()["weights"]
        history.record_feedback(Feedback(**fb))
        obs = encode(history, 4, spec)
        expected = action_to_weights(np.tanh(obs @ w + b), space, spec)
        history.record_weights(expected)
        assert list(got.values()) == pytest.approx(list(expected.values), abs=1e-6)
    # a run whose fields differ from the ones the network was trained on is refused
    odd = run_body(policy="learned", domains=[{"name": "a", "field": "source"}, {"name": "m", "field": "math"},
                                              {"name": "c", "field": "code"}])
    r = client.post("/v1/runs", json=odd, headers=auth())
    assert r.status_code == 422 and "was trained on fields ['source', 'target']" in r.json()["detail"]


def test_an_onnx_model_of_the_wrong_width_is_refused(client, settings):
    space = DomainSpace.from_fields({"source": ["a"], "target": ["b"]})
    write_onnx_policy(settings.policy_dir / "narrow", space, ActionSpec(), width=5)
    r = _load(client, "narrow")
    from mixagent.trajectories import observation_size

    width = observation_size(space, ActionSpec())  # the encoder's, whatever its version
    assert r.status_code == 422 and f"expected one input of width {width}" in r.json()["detail"]


def test_loaded_artifacts_come_back_after_a_restart(settings):
    _share_card(settings.policy_dir, "v1", 0.2)
    with TestClient(create_app(settings)) as c:
        _load(c, "tuned-v1")
        rid = c.post("/v1/runs", json=run_body(policy="tuned-share"), headers=auth()).json()["run_id"]
    # the folder name does not follow the policy_dir scan (loaded via the route): the DB remembers it
    with TestClient(create_app(settings.model_copy(update={"policy_dir": None}))) as c:
        d = c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()
        assert d["policy_version"] == "v1" and d["weights"]["proofs"] == pytest.approx(0.2)
