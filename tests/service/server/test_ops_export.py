"""/healthz, /readyz, /metrics, and the export of served runs as trajectories."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from mixagent.service.server.export import export_trajectories, write_jsonl
from mixagent.trajectories import Objective, Trajectory, balanced_scores, stage_rewards
from tests.service.conftest import OTHER, auth, feedback_body, run_body


def _metrics(client) -> dict[str, float]:  # type: ignore[no-untyped-def]
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "default_policy": "uniform", "policy_loaded": True,
                        "database": True, "detail": ""}


def test_readiness_fails_when_the_default_policy_is_missing(tmp_path):
    from starlette.testclient import TestClient

    from mixagent.service.server.main import create_app
    from tests.service.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path, default_policy="learned"))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        assert "unknown policy 'learned'" in r.json()["detail"]


def test_metrics_count_requests_decisions_and_active_runs(client):
    rid = client.post("/v1/runs", json=run_body(horizon=1), headers=auth()).json()["run_id"]
    client.post("/v1/runs", json=run_body(), headers=auth())
    for step in (0, 0, 10):
        client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(step), headers=auth())
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(5), headers=auth())  # 409
    client.get(f"/v1/runs/{rid}", headers=auth(OTHER))  # 404
    m = _metrics(client)
    fb = 'method="POST",route="/v1/runs/{run_id}/feedback"'
    assert m[f'mixagent_http_requests_total{{{fb},status="200"}}'] == 3
    assert m[f'mixagent_http_requests_total{{{fb},status="409"}}'] == 1
    assert m['mixagent_http_requests_total{method="GET",route="/v1/runs/{run_id}",status="404"}'] == 1
    assert m[f'mixagent_http_request_duration_seconds_count{{{fb},status="200"}}'] == 3
    assert m['mixagent_decisions_total{policy="uniform",version="builtin"}'] == 2
    assert m["mixagent_decision_replays_total"] == 1
    assert m["mixagent_active_runs"] == 1  # the first run took its 2 feedbacks, the second none
    assert m["mixagent_policy_load_failures_total"] == 0


def test_runs_export_as_trajectories(client, app, tmp_path):
    rid = client.post("/v1/runs", json=run_body(policy="fixed-target-share", horizon=3, seed=7,
                                                setting_name="math-tiny", model="llama-3x128"),
                      headers=auth()).json()["run_id"]
    answers = [client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(s), headers=auth()).json()
               for s in (0, 10, 20)]
    client.post("/v1/runs", json=run_body(), headers=auth())  # no feedback yet: not exported
    lines = client.get("/v1/trajectories", headers=auth()).text.splitlines()
    assert len(lines) == 1
    traj = Trajectory.model_validate_json(lines[0])
    h = traj.header
    assert (h.trajectory_id, h.schedule, h.seed, h.setting_name, h.model, h.horizon, h.interval) == (
        rid, "fixed-target-share", 7, "math-tiny", "llama-3x128", 3, 10)
    assert h.schedule_params == {"policy_version": "builtin", "source": "mixagent-service", "target_share": 0.5}
    assert [fb.step for fb in traj.history.feedback] == [0, 10, 20]
    # weights[i] is the mixture trained between feedback i and i+1; the last (never evaluated) is dropped
    assert [w.as_dict(traj.history.space) for w in traj.history.weights] == [
        pytest.approx(a["weights"]) for a in answers[:2]]
    assert len(traj.stage_wall_s) == 2 and all(x >= 0 for x in traj.stage_wall_s)
    # the offline tools read it like any trajectory
    r = stage_rewards(traj.history, Objective())
    assert r.sum() == pytest.approx(balanced_scores(traj.history, Objective())[-1])
    assert np.isfinite(r).all()
    # finished_only, run filters and the file writer
    assert client.get("/v1/trajectories?finished_only=true", headers=auth()).text == ""
    assert client.get(f"/v1/trajectories?run_id={rid}", headers=auth()).text.splitlines() == lines
    n = write_jsonl(export_trajectories(app.state.store), tmp_path / "out.jsonl")
    assert n == 1 and (tmp_path / "out.jsonl").read_text().splitlines() == lines


def test_export_runs_command(client, settings, tmp_path, monkeypatch):
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth())
    from mixagent.cli import app as cli

    monkeypatch.setenv("MIXAGENT_TOKENS", "x")
    monkeypatch.setenv("MIXAGENT_DATABASE_URL", "sqlite:///unused.db")  # restored after the test
    out = tmp_path / "served.jsonl"
    res = CliRunner().invoke(cli, ["export-runs", str(out), "--database-url", settings.database_url])
    assert res.exit_code == 0, res.output
    assert "wrote 1 trajectories" in res.output
    assert Trajectory.model_validate_json(out.read_text()).header.trajectory_id == rid


def test_served_runs_flow_into_a_dataset_folder(client, app, tmp_path):
    """The flywheel: finished served runs become dataset records; a live one is left out, not lost."""
    from mixagent.trajectories.storage import FileStore, import_jsonl

    done_id = client.post("/v1/runs", json=run_body(horizon=3, seed=1), headers=auth()).json()["run_id"]
    for s in (0, 10, 20, 30):  # the start evaluation and one after each of the 3 decisions
        client.post(f"/v1/runs/{done_id}/feedback", json=feedback_body(s), headers=auth())
    live_id = client.post("/v1/runs", json=run_body(horizon=3, seed=2), headers=auth()).json()["run_id"]
    for s in (0, 10):
        client.post(f"/v1/runs/{live_id}/feedback", json=feedback_body(s), headers=auth())
    export = tmp_path / "served.jsonl"
    assert write_jsonl(export_trajectories(app.state.store), export) == 2
    store = FileStore(tmp_path / "served")
    report = import_jsonl(export, store)
    assert (report.imported, report.skipped) == (1, 0)
    assert len(report.unfinished) == 1 and live_id in report.unfinished[0] and "1 stages" in report.unfinished[0]
    stored = store.read(done_id).trajectory
    assert stored.history.stages == stored.header.horizon == 3
    assert stored == Trajectory.model_validate_json(
        next(line for line in export.read_text().splitlines() if done_id in line))
    assert import_jsonl(export, store)[:2] == (0, 1)  # a second import adds nothing
