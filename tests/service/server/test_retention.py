"""Retention (issue 18, point 3): ``mixagent db prune --finished-before DATE [--export FILE]`` deletes
finished runs older than the date, after writing them as trajectories, and keeps runs that still
expect feedback however old they are; on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from mixagent.service.server.main import create_app
from mixagent.trajectories.contract import Trajectory
from tests.service.conftest import auth, feedback_body, run_body


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request, settings):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return settings
    return settings.model_copy(update={"database_url": request.getfixturevalue("pg_url")})


def _run(c: TestClient, feedbacks: int) -> str:
    rid = c.post("/v1/runs", json=run_body(horizon=2), headers=auth()).json()["run_id"]
    for i in range(feedbacks):
        assert c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10 * i), headers=auth()).status_code == 200
    return str(rid)


def test_prune_exports_then_deletes_only_finished_runs(db_settings, tmp_path):
    from mixagent.cli import app

    with TestClient(create_app(db_settings)) as c:
        finished = [_run(c, 3), _run(c, 3)]  # horizon 2: three feedbacks finish a run
        open_run = _run(c, 2)
    runner = CliRunner()
    url = ["--database-url", db_settings.database_url]
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    res = runner.invoke(app, ["db", "prune", "--finished-before", past, *url])
    assert res.exit_code == 0 and "deleted 0 runs" in res.output, res.output  # nothing that old
    export = tmp_path / "pruned.jsonl"
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat()
    res = runner.invoke(app, ["db", "prune", "--finished-before", soon, "--export", str(export), *url])
    assert res.exit_code == 0, res.output
    assert "deleted 2 runs" in res.output and "(6 decisions); 2 exported to" in res.output, res.output
    saved = [Trajectory.model_validate_json(line) for line in export.read_text().splitlines()]
    assert sorted(t.header.trajectory_id for t in saved) == sorted(finished)
    assert all(t.history.stages == 2 for t in saved)
    with TestClient(create_app(db_settings)) as c:
        for rid in finished:
            assert c.get(f"/v1/runs/{rid}", headers=auth()).status_code == 404
        assert c.get(f"/v1/runs/{open_run}", headers=auth()).json()["decisions"] == 2  # kept, still open
    res = runner.invoke(app, ["db", "prune", "--finished-before", "yesterday", *url])
    assert res.exit_code == 2 and "--finished-before: 'yesterday' is not an ISO 8601 date" in res.output
