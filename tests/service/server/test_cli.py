"""``mixagent serve`` / ``export-runs`` and the settings behind them (issue 11, points 7, 8 and 10):
the database defaults into the user data folder and is named at start-up; every start-up problem a
user can fix is one line and exit status 2; piped output is never cut."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mixagent.service.server.config import DEV_TOKEN, Settings
from tests.service.conftest import auth, feedback_body, make_settings, run_body

KEYS = ("HOST", "PORT", "DATABASE_URL", "POLICY_DIR", "DEFAULT_POLICY", "FALLBACK_POLICY", "TOKENS", "ADMIN_TOKENS",
        "ENVIRONMENT")


@pytest.fixture()
def env(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """A clean MIXAGENT_* environment (restored after the test, including what the commands set),
    a user data folder under tmp_path, and uvicorn.run replaced by a recorder."""
    for k in KEYS:
        monkeypatch.setenv(f"MIXAGENT_{k}", "x")
        monkeypatch.delenv(f"MIXAGENT_{k}")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    calls: list[dict[str, Any]] = []
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append({"target": target, **kw}))
    return calls


def _run(*args: str):  # type: ignore[no-untyped-def]
    from mixagent.cli import app

    return CliRunner().invoke(app, list(args))


def _one_line_error(res, *parts: str) -> None:  # type: ignore[no-untyped-def]
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    for p in parts:
        assert p in lines[0], lines[0]


def test_the_database_defaults_into_the_user_data_folder_and_serve_says_where(env, tmp_path):
    expected = tmp_path / "data-home" / "mixagent" / "mixagent.db"
    assert Settings().database_url == f"sqlite:///{expected}"
    res = _run("serve")
    assert res.exit_code == 0, res.output
    assert f"database: SQLite file {expected}" in res.output
    assert f"token: the development token {DEV_TOKEN!r}" in res.output
    assert expected.parent.is_dir()  # created, and nothing written into the current folder
    assert not Path("mixagent.db").exists()
    (call,) = env
    assert call["target"] == "mixagent.service.server.main:create_app" and call["factory"] is True
    assert call["h11_max_incomplete_event_size"] == 64 * 1024


def test_postgres_urls_are_read_as_psycopg_and_other_schemes_are_one_line(env):
    assert Settings(database_url="postgres://u@h/db").database_url == "postgresql+psycopg://u@h/db"
    assert Settings(database_url="postgresql://u@h/db").database_url == "postgresql+psycopg://u@h/db"
    _one_line_error(_run("serve", "--database-url", "mysql://root:secret@h/db"),
                    "invalid settings: database_url: unsupported scheme 'mysql'", "mysql://root:***@h/db")
    _one_line_error(_run("serve", "--database-url", "mixagent.db"), "database_url: 'mixagent.db' is not a URL")
    assert env == []


def test_an_unreachable_postgresql_is_one_line(env):
    _one_line_error(_run("serve", "--database-url", "postgres://postgres:pw@127.0.0.1:1/mixagent"),
                    "database: cannot open postgresql+psycopg://postgres:***@127.0.0.1:1/mixagent: ",
                    "(MIXAGENT_DATABASE_URL / --database-url)")
    assert env == []


def test_a_postgres_url_serves_and_a_missing_database_is_one_line(env, pg_url):
    res = _run("serve", "--database-url", pg_url.replace("postgresql+psycopg://", "postgres://"))
    assert res.exit_code == 0, res.output
    assert f"database: {pg_url}" in res.output and len(env) == 1
    _one_line_error(_run("serve", "--database-url", pg_url + "_nosuch"), "database: cannot open", "does not exist")


def test_a_policy_dir_that_does_not_exist_is_refused(env, tmp_path):
    _one_line_error(_run("serve", "--policy-dir", str(tmp_path / "nope")),
                    f"policy_dir: '{tmp_path / 'nope'}' is not a folder (MIXAGENT_POLICY_DIR / --policy-dir)")
    assert env == []


def test_readyz_is_not_ready_without_the_policy_dir(tmp_path):
    from starlette.testclient import TestClient

    from mixagent.service.server.main import create_app

    with TestClient(create_app(make_settings(tmp_path, policy_dir=tmp_path / "gone"))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"] == f"policy_dir: '{tmp_path / 'gone'}' is not a folder"


def test_without_the_service_extra_serve_says_what_to_install(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    _one_line_error(_run("serve"), "uvicorn is not installed", "pip install 'mixagent[service]'")


def test_invalid_settings_are_one_line(env, monkeypatch):
    monkeypatch.setenv("MIXAGENT_ENVIRONMENT", "production")
    _one_line_error(_run("serve"), "invalid settings: settings: tokens: the development token may only be used")


def test_an_unknown_fallback_policy_is_one_line(env, monkeypatch):
    monkeypatch.setenv("MIXAGENT_FALLBACK_POLICY", "nosuch")
    _one_line_error(_run("serve"), "invalid settings: fallback_policy: 'nosuch' is not a built-in baseline; use one "
                    "of ['ado', 'doremi', 'fixed-target-share', 'loss-softmax', 'odm', 'prior', 'uniform', "
                    "'velocitune']")
    assert env == []


def test_piped_output_is_not_cut(env, tmp_path, settings):
    """CliRunner's output is not a terminal, like ``nohup ... > log``: lines stay whole."""
    from starlette.testclient import TestClient

    from mixagent.service.server.main import create_app

    with TestClient(create_app(settings)) as c:
        rid = c.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
        c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth())
    out = tmp_path / ("a-folder-name-long-enough-to-pass-eighty-columns-" * 3) / "served.jsonl"
    res = _run("export-runs", str(out), "--database-url", settings.database_url)
    assert res.exit_code == 0, res.output
    assert f"wrote 1 trajectories to {out}\n" in res.output


def test_an_unknown_default_policy_is_refused_at_start(env, tmp_path):
    _one_line_error(_run("serve", "--default-policy", "nope", "--database-url", f"sqlite:///{tmp_path / 'a.db'}"),
                    "default_policy: 'nope' cannot be served: policy: unknown policy 'nope'",
                    "(MIXAGENT_DEFAULT_POLICY / --default-policy)")
    assert env == []  # nothing started
    res = _run("serve", "--default-policy", "prior", "--database-url", f"sqlite:///{tmp_path / 'b.db'}")
    assert res.exit_code == 0 and len(env) == 1, res.output


def test_a_deeply_nested_card_in_the_policy_folder_is_one_line_not_a_traceback(env, tmp_path):
    folder = tmp_path / "policies" / "deep"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(_run("serve", "--policy-dir", str(tmp_path / "policies"),
                         "--database-url", f"sqlite:///{tmp_path / 'a.db'}"),
                    "card.json: not a policy card (JSON nested too deeply to read)")
    assert env == []
