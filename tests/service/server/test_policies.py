"""The policy registry: built-ins, artifact cards, hot swap without touching running runs, refusal of
invalid artifacts while the service keeps serving, ONNX policies (the run's objective, the fallback
baseline and ``served_by``), reload after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mixagent.service.server.main import create_app
from mixagent.trajectories import ActionSpec, DomainSpace, Feedback, History, Objective, Weights, encode
from tests.service.artifacts import write_onnx_policy
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


def test_builtins_are_listed_and_uniform_is_the_default(client):
    data = client.get("/v1/policies", headers=auth()).json()
    assert data["count"] == 8
    assert {p["name"] for p in data["data"]} == {"uniform", "prior", "fixed-target-share", "loss-softmax", "doremi",
                                                 "odm", "ado", "velocitune"}
    default = [p for p in data["data"] if p["default"]]
    assert [p["name"] for p in default] == ["uniform"]
    assert all(p["kind"] == "builtin" and p["current"] for p in data["data"])
    # each description is whole sentences (the first paragraph of the rule's docstring), never cut at a line
    for p in data["data"]:
        assert p["description"].endswith(".") and "\n" not in p["description"], p
    fixed = next(p for p in data["data"] if p["name"] == "fixed-target-share")
    assert fixed["description"].startswith("Fixed target share: the target fields together get")
    assert "(several target fields split the target part by their prior mass)" in fixed["description"]


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
                              encoder_version="obs-v0"), "unknown encoder 'obs-v0'"),
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
SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 3.0})
"""The space of ``run_body()``'s domains."""
THREE_FIELDS = [{"name": "a", "field": "source"}, {"name": "m", "field": "math"}, {"name": "c", "field": "code"}]


def _fallbacks(client, policy: str, reason: str) -> float:  # type: ignore[no-untyped-def]
    return _metric(client, f'mixagent_fallback_decisions_total{{policy="{policy}",reason="{reason}"}}')


def test_an_onnx_policy_serves_the_decisions_of_its_network(client, settings):
    spec = ActionSpec(beta=3.0, epsilon=0.02)
    net = write_onnx_policy(settings.policy_dir / "learned", SPACE, spec)
    assert _load(client, "learned").status_code == 201
    objective = Objective(spread_penalty=0.3)
    run = client.post("/v1/runs", json=run_body(policy="learned", horizon=4, objective={"spread_penalty": 0.3}),
                      headers=auth()).json()
    served = {"policy": "learned@s0", "fallback": None, "reason": None}
    assert run["served_by"] == served
    # the first mixture is the network's decision at the start of a run (not the prior)
    assert list(run["weights"].values()) == pytest.approx(net.first(SPACE, 4, objective), abs=1e-6)
    assert list(run["weights"].values()) != pytest.approx(SPACE.priors().tolist(), abs=1e-3)
    history = History(space=SPACE)
    for step in (0, 10, 20):
        fb = feedback_body(step)
        d = client.post(f"/v1/runs/{run['run_id']}/feedback", json=fb, headers=auth()).json()
        history.record_feedback(Feedback(**fb))
        expected = net.weights(history, 4, objective)  # encode(history, horizon, spec, objective)
        history.record_weights(Weights(values=tuple(expected)))
        assert list(d["weights"].values()) == pytest.approx(expected, abs=1e-6)
        assert d["served_by"] == served
    # the objective reaches the network: another lambda, another decision
    assert net.weights(history, 4, Objective(spread_penalty=0.8)) != pytest.approx(expected, abs=1e-4)
    assert client.get(f"/v1/runs/{run['run_id']}", headers=auth()).json()["history"][0]["served_by"] == served


def test_a_run_the_network_cannot_read_is_served_by_the_fallback(client, settings):
    write_onnx_policy(settings.policy_dir / "learned", SPACE)
    assert _load(client, "learned").status_code == 201
    # three fields for a network trained on two: not refused (uniform would serve it), served by uniform
    odd = run_body(policy="learned", domains=THREE_FIELDS, objective={"spread_penalty": 5.0})
    r = client.post("/v1/runs", json=odd, headers=auth())
    assert r.status_code == 201, r.json()
    run = r.json()
    sb = run["served_by"]
    assert sb["policy"] == "learned@s0" and sb["fallback"] == "uniform"
    assert "reads 2 fields" in sb["reason"] and "['source', 'math', 'code']" in sb["reason"]
    assert run["weights"] == pytest.approx({"a": 1 / 3, "m": 1 / 3, "c": 1 / 3})
    fb = {"step": 0, "tokens_seen": 0, "field_scores": {"source": -2.0, "math": -4.0, "code": -3.0},
          "domain_losses": {"a": 2.0, "m": 4.0, "c": 3.0}}
    d = client.post(f"/v1/runs/{run['run_id']}/feedback", json=fb, headers=auth()).json()
    assert d["served_by"] == sb and d["weights"] == pytest.approx(run["weights"])
    # a retry answers the same, from the store, and is not counted twice
    again = client.post(f"/v1/runs/{run['run_id']}/feedback", json=fb, headers=auth()).json()
    assert again == {**d, "replayed": True}
    assert _fallbacks(client, "learned@s0", "space") == 2.0


def test_an_observation_outside_the_training_ranges_goes_to_the_fallback(client, settings):
    from tests.service.artifacts import start_history

    obs0 = encode(start_history(SPACE), 4, ActionSpec(), Objective())
    write_onnx_policy(settings.policy_dir / "learned", SPACE, observation_low=(obs0 - 0.5).tolist(),
                      observation_high=(obs0 + 0.5).tolist())
    assert _load(client, "learned").status_code == 201
    run = client.post("/v1/runs", json=run_body(policy="learned"), headers=auth()).json()
    assert run["served_by"]["fallback"] is None
    rid = run["run_id"]
    d0 = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()
    assert d0["served_by"]["fallback"] is None
    # the target field's score leaps: its relative gain is far outside anything seen in training
    jump = feedback_body(10, field_scores={"source": -2.0, "target": -2.0})
    d1 = client.post(f"/v1/runs/{rid}/feedback", json=jump, headers=auth()).json()
    assert d1["served_by"]["fallback"] == "uniform"
    assert d1["served_by"]["reason"].startswith("observation feature ") and "outside the range seen in training" \
        in d1["served_by"]["reason"]
    assert d1["weights"] == pytest.approx(dict.fromkeys(SPACE.names, 1 / 3))
    assert _fallbacks(client, "learned@s0", "observation") == 1.0
    # persisted with the decision: a restart-proof read and a retry say the same
    assert client.get(f"/v1/runs/{rid}", headers=auth()).json()["history"][1]["served_by"] == d1["served_by"]
    assert client.post(f"/v1/runs/{rid}/feedback", json=jump, headers=auth()).json()["served_by"] == d1["served_by"]


def test_an_objective_outside_the_trained_range_is_422_naming_the_range(client, settings):
    write_onnx_policy(settings.policy_dir / "learned", SPACE)
    assert _load(client, "learned").status_code == 201
    r = client.post("/v1/runs", json=run_body(policy="learned", objective={"spread_penalty": 2.0}), headers=auth())
    assert r.status_code == 422
    assert r.json()["detail"] == ("objective.spread_penalty: 2 is outside the range learned@s0 was trained on "
                                  "(spread_penalty in [0, 0.9] and field weights within a factor 3 of each other)")
    r = client.post("/v1/runs", json=run_body(policy="learned", objective={
        "spread_penalty": 0.5, "field_weights": {"source": 1.0, "target": 10.0}}), headers=auth())
    assert r.status_code == 422 and "field weights within a factor 3" in r.json()["detail"]
    # a built-in rule takes any objective
    assert client.post("/v1/runs", json=run_body(objective={"spread_penalty": 2.0}), headers=auth()).status_code == 201
    listed = {p["name"]: p for p in client.get("/v1/policies", headers=auth()).json()["data"]}
    assert listed["learned"]["objective_range"].startswith("spread_penalty in [0, 0.9]")
    assert listed["learned"]["fallback"] == "uniform"


def test_a_run_keeps_its_objective_across_a_restart(settings):
    net = write_onnx_policy(settings.policy_dir / "learned", SPACE)
    objective = Objective(spread_penalty=0.1)
    with TestClient(create_app(settings)) as c:
        run = c.post("/v1/runs", json=run_body(policy="learned", objective={"spread_penalty": 0.1}),
                     headers=auth()).json()
        d0 = c.post(f"/v1/runs/{run['run_id']}/feedback", json=feedback_body(0), headers=auth()).json()
    with TestClient(create_app(settings)) as c:
        d1 = c.post(f"/v1/runs/{run['run_id']}/feedback", json=feedback_body(10), headers=auth()).json()
    history = History(space=SPACE)
    history.record_feedback(Feedback(**feedback_body(0)))
    history.record_weights(Weights(values=tuple(d0["weights"].values())))
    history.record_feedback(Feedback(**feedback_body(10)))
    assert list(d1["weights"].values()) == pytest.approx(net.weights(history, 4, objective), abs=1e-6)
    assert net.weights(history, 4, Objective()) != pytest.approx(net.weights(history, 4, objective), abs=1e-4)


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"width": 5}, "expected one input of width"),
        ({"encoder_version": "obs-v1", "width": "v2"}, "(encoder obs-v1, 2 fields), got"),
        ({"fields": ["source", "target", "code"]}, "expected one input of width"),
        ({"observation_low": [0.0], "observation_high": [1.0]}, "observation_low has 1 values, the network reads"),
        ({"encoder_version": "obs-v0"}, "unknown encoder 'obs-v0'"),
        ({"objective_range": {"spread_penalty_min": 0.6, "spread_penalty_max": 0.2}},
         "spread_penalty_max: below spread_penalty_min"),
    ],
    ids=["width", "encoder-version", "fields", "observation-ranges", "unknown-encoder", "objective-range"],
)
def test_a_card_that_does_not_match_its_network_is_refused(client, settings, card, message):
    """Bad input: an artifact whose card does not match its weights or its encoder version is a
    422 naming it; the runs the service has keep being served."""
    from mixagent.trajectories import observation_size

    write_onnx_policy(settings.policy_dir / "good", SPACE)
    assert _load(client, "good").status_code == 201
    rid = client.post("/v1/runs", json=run_body(policy="learned"), headers=auth()).json()["run_id"]
    assert client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).status_code == 200
    kw = dict(card)
    if kw.get("width") == "v2":  # a card saying obs-v1 over a network built for obs-v2
        kw["width"] = observation_size(SPACE, ActionSpec(), "obs-v2")
    width = kw.pop("width", None)
    if "encoder_version" in kw and kw["encoder_version"] == "obs-v0":
        write_onnx_policy(settings.policy_dir / "bad", SPACE, version="v-bad")
        body = json.loads((settings.policy_dir / "bad" / "card.json").read_text())
        (settings.policy_dir / "bad" / "card.json").write_text(json.dumps({**body, **kw}))
    else:
        write_onnx_policy(settings.policy_dir / "bad", SPACE, version="v-bad", width=width, **kw)
    r = _load(client, "bad")
    assert r.status_code == 422 and message in r.json()["detail"], r.json()
    assert "bad" in r.json()["detail"]
    d = client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth())
    assert d.status_code == 200 and d.json()["served_by"]["policy"] == "learned@s0"
    assert client.get("/readyz").status_code == 200


def test_bad_feedback_on_a_learned_run_is_a_4xx_and_the_run_goes_on(client, settings):
    """Bad input against a learned policy: a history longer than the run's horizon, wrong names,
    non-finite numbers; each a 4xx naming it, and the run (and the service) keep going."""
    write_onnx_policy(settings.policy_dir / "learned", SPACE)
    assert _load(client, "learned").status_code == 201
    rid = client.post("/v1/runs", json=run_body(policy="learned", horizon=2), headers=auth()).json()["run_id"]
    url = f"/v1/runs/{rid}/feedback"
    nan = json.dumps(feedback_body(0)).replace('"proofs": 4.0', '"proofs": NaN')
    r = client.post(url, content=nan, headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.domain_losses.proofs")
    r = client.post(url, json=feedback_body(0, field_scores={"source": -2.0, "target": 1e300}), headers=auth())
    assert r.status_code == 422 and "body.field_scores.target" in r.json()["detail"]
    r = client.post(url, json=feedback_body(0, field_scores={"source": -2.0}), headers=auth())
    assert r.status_code == 422 and "field_scores: missing ['target']" in r.json()["detail"]
    for step in (0, 10, 20):
        assert client.post(url, json=feedback_body(step), headers=auth()).status_code == 200
    r = client.post(url, json=feedback_body(30), headers=auth())  # a fourth feedback for horizon 2
    assert r.status_code == 409 and "horizon+1 = 3 feedbacks" in r.json()["detail"]
    other = client.post("/v1/runs", json=run_body(policy="learned"), headers=auth()).json()["run_id"]
    assert client.post(f"/v1/runs/{other}/feedback", json=feedback_body(0), headers=auth()).status_code == 200


def test_loaded_artifacts_come_back_after_a_restart(settings):
    _share_card(settings.policy_dir, "v1", 0.2)
    with TestClient(create_app(settings)) as c:
        _load(c, "tuned-v1")
        rid = c.post("/v1/runs", json=run_body(policy="tuned-share"), headers=auth()).json()["run_id"]
    # the folder name does not follow the policy_dir scan (loaded via the route): the DB remembers it
    with TestClient(create_app(settings.model_copy(update={"policy_dir": None}))) as c:
        d = c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).json()
        assert d["policy_version"] == "v1" and d["weights"]["proofs"] == pytest.approx(0.2)
