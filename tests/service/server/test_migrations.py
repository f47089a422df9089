"""Versioned schema migrations (Alembic): a fresh database gets the schema the models describe; a
database of an earlier release, made here with that release's own table definitions and filled with
a real run, is upgraded at start-up with every row kept, on SQLite and on the real PostgreSQL; a
database newer than this release is refused untouched; replicas starting together take turns."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from starlette.testclient import TestClient
from typer.testing import CliRunner

from mixagent.service.server.db import BASELINE, SchemaError, head_revision, init_db, schema_revision
from mixagent.service.server.main import create_app
from mixagent.service.server.models import Base
from tests.service.conftest import ADMIN, auth, feedback_body, run_body, write_card


def old_schema(release: str) -> sa.MetaData:
    """The tables as an earlier release's ``create_all`` made them (its models: ``Mapped[str]`` columns
    NOT NULL, ``Mapped[str | None]`` nullable): ``5c21ac1`` (the first release of the service),
    ``e68e5b8`` (the last release before migrations, which had added who served a decision, artifact
    digests and ``policy_current`` by hand at start-up)."""
    later = release == "e68e5b8"

    def col(name: str, kind: Any, *args: Any, **kw: Any) -> sa.Column[Any]:
        kw.setdefault("nullable", False)
        return sa.Column(name, kind, *args, **kw)

    md = sa.MetaData()
    sa.Table(
        "runs", md,
        col("id", sa.String(32), primary_key=True), col("owner", sa.String(64), index=True),
        col("created_at", sa.Float), col("space_json", sa.Text), col("objective_json", sa.Text),
        col("meta_json", sa.Text), col("horizon", sa.Integer), col("interval", sa.Integer),
        col("policy_name", sa.String(64)), col("policy_version", sa.String(64)),
        col("initial_mixture_id", sa.String(32)), col("initial_weights_json", sa.Text),
        *([col("initial_served_by_json", sa.Text, nullable=True)] if later else []),
    )
    sa.Table(
        "decisions", md,
        col("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
        col("seq", sa.Integer, primary_key=True), col("step", sa.Integer),
        col("decision_id", sa.String(32), unique=True), col("payload_hash", sa.String(64)),
        col("feedback_json", sa.Text), col("mixture_id", sa.String(32), nullable=True),
        col("weights_json", sa.Text), col("created_at", sa.Float),
        *([col("served_by_json", sa.Text, nullable=True)] if later else []),
        sa.UniqueConstraint("run_id", "step", name="uq_decision_run_step"),
    )
    sa.Table(
        "policy_artifacts", md,
        col("name", sa.String(64), primary_key=True), col("version", sa.String(64), primary_key=True),
        col("path", sa.Text), col("card_json", sa.Text), col("loaded_at", sa.Float),
        *([col("digest", sa.String(64), nullable=True)] if later else []),
    )
    if later:
        sa.Table("policy_current", md, col("name", sa.String(64), primary_key=True),
                 col("version", sa.String(64)), col("updated_at", sa.Float))
    return md


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request, settings):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return settings
    return settings.model_copy(update={"database_url": request.getfixturevalue("pg_url")})


def _diff(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)  # type: ignore[no-any-return]
    finally:
        engine.dispose()


def test_a_fresh_database_gets_the_schema_the_models_describe(db_settings):
    with TestClient(create_app(db_settings)):
        pass
    engine = sa.create_engine(db_settings.database_url)
    assert schema_revision(engine) == head_revision()
    engine.dispose()
    assert _diff(db_settings.database_url) == []


def _served_rows(settings) -> dict[str, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """Rows of a real run (two decisions) and two loaded artifact versions, made by this release on a
    scratch SQLite database next to ``settings``' one."""
    root = settings.policy_dir
    for version, share in (("v1", 0.2), ("v2", 0.7)):
        write_card(root, f"tuned-{version}", name="tuned-share", version=version, kind="baseline",
                   rule="fixed-target-share", params={"target_share": share})
    scratch = settings.model_copy(update={"database_url": f"sqlite:///{root.parent / 'scratch.db'}"})
    with TestClient(create_app(scratch)) as c:
        for v in ("v1", "v2"):
            assert c.post("/v1/policies/load", json={"path": f"tuned-{v}"}, headers=auth(ADMIN)).status_code == 201
        rid = c.post("/v1/runs", json=run_body(policy="loss-softmax"), headers=auth()).json()["run_id"]
        for step in (0, 10):
            c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(step), headers=auth())
    engine = sa.create_engine(scratch.database_url)
    with engine.connect() as conn:
        rows = {t: [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {t}"))]
                for t in ("runs", "decisions", "policy_artifacts")}
    engine.dispose()
    return rows


@pytest.mark.parametrize("release", ["5c21ac1", "e68e5b8"])
def test_a_database_of_an_earlier_release_is_upgraded_at_start_up_with_its_data(db_settings, release):
    rows = _served_rows(db_settings)
    old = old_schema(release)
    engine = sa.create_engine(db_settings.database_url)
    with engine.begin() as conn:  # the earlier release's database, holding the same run
        old.create_all(conn)
        for name, table in old.tables.items():
            for row in rows.get(name, []):
                conn.execute(table.insert().values({k: v for k, v in row.items() if k in table.c}))
    assert schema_revision(engine) is None
    rid = rows["runs"][0]["id"]
    decisions = sorted(rows["decisions"], key=lambda r: r["seq"])
    # only the recorded artifacts decide what is current (the folder scan would pick v2 anyway)
    with TestClient(create_app(db_settings.model_copy(update={"policy_dir": None}))) as c:
        run = c.get(f"/v1/runs/{rid}", headers=auth()).json()
        assert [h["decision_id"] for h in run["history"]] == [d["decision_id"] for d in decisions]
        again = c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth()).json()
        assert again["replayed"] and again["decision_id"] == decisions[1]["decision_id"]
        assert again["served_by"] == {"policy": "loss-softmax@builtin", "fallback": None, "reason": None}
        nxt = c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(20), headers=auth()).json()
        assert nxt["t"] == 2 and not nxt["replayed"]
        new = c.post("/v1/runs", json=run_body(policy="tuned-share"), headers=auth()).json()
        assert new["policy_version"] == "v2" and new["weights"]["proofs"] == pytest.approx(0.7)
    assert schema_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar() == 3
        assert conn.execute(sa.text("SELECT name, version FROM policy_current")).all() == [("tuned-share", "v2")]
        assert conn.execute(sa.text("SELECT count(*) FROM policy_artifacts")).scalar() == 2
    engine.dispose()
    assert _diff(db_settings.database_url) == []


def test_a_database_of_a_newer_release_is_refused_untouched(db_settings, tmp_path):
    from mixagent.cli import app

    engine = sa.create_engine(db_settings.database_url)
    init_db(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(SchemaError, match=r"schema revision 'f00d' is not one this release of mixagent knows"):
        create_app(db_settings)
    # the serve command says so in one line before it starts serving
    res = CliRunner().invoke(app, ["serve", "--database-url", db_settings.database_url,
                                   "--policy-dir", str(tmp_path)], env={"MIXAGENT_TOKENS": "t"})
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        f"database: schema revision 'f00d' is not one this release of mixagent knows (its newest is "
        f"'{head_revision()}'): the database was made by a newer release; run that release, or point "
        "MIXAGENT_DATABASE_URL at another database"]
    assert schema_revision(engine) == "f00d"
    engine.dispose()


def test_replicas_starting_together_take_turns(db_settings):
    errors: list[BaseException] = []
    applied: list[list[str]] = []
    start = threading.Barrier(3)

    def migrate() -> None:
        engine = sa.create_engine(db_settings.database_url)
        try:
            start.wait()
            applied.append(init_db(engine))
        except BaseException as e:
            errors.append(e)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    first = max(applied, key=len)  # one replica migrated the empty database; the others found it current
    assert sorted(map(len, applied)) == [0, 0, len(first)] and first[0] == BASELINE and first[-1] == head_revision()
    assert _diff(db_settings.database_url) == []


def test_the_db_commands_upgrade_and_say_where_a_database_stands(db_settings):
    from mixagent.cli import app

    engine = sa.create_engine(db_settings.database_url)
    with engine.begin() as conn:
        old_schema("5c21ac1").create_all(conn)
    engine.dispose()
    runner = CliRunner()
    url = ["--database-url", db_settings.database_url]
    res = runner.invoke(app, ["db", "current", *url])
    assert res.exit_code == 0, res.output
    assert f"schema revision: none (made before migrations; the next upgrade adopts it as {BASELINE})" in res.output
    res = runner.invoke(app, ["db", "upgrade", *url])
    assert res.exit_code == 0, res.output
    assert f"upgraded to {head_revision()} (applied: " in res.output
    res = runner.invoke(app, ["db", "upgrade", *url])
    assert res.exit_code == 0 and f"already at {head_revision()}" in res.output, res.output
    res = runner.invoke(app, ["db", "current", *url])
    assert f"schema revision: {head_revision()} (this release's newest)" in res.output


def test_db_downgrade_goes_back_and_upgrade_forward_again_keeping_the_runs(db_settings):
    from mixagent.cli import app

    with TestClient(create_app(db_settings)) as c:  # a real run on the newest schema
        rid = c.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
        assert c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth()).status_code == 200
    runner = CliRunner()
    url = ["--database-url", db_settings.database_url]
    res = runner.invoke(app, ["db", "downgrade", "0002", *url])
    undone = ", ".join(f"{r:04d}" for r in range(int(head_revision()), 2, -1))  # the newest first
    assert res.exit_code == 0 and f"downgraded to 0002 (undone: {undone})" in res.output, res.output
    engine = sa.create_engine(db_settings.database_url)
    try:
        assert schema_revision(engine) == "0002"
        columns = {c["name"] for c in sa.inspect(engine).get_columns("runs")}
        assert "idempotency_key" not in columns and "bounds_json" not in columns
    finally:
        engine.dispose()
    res = runner.invoke(app, ["db", "downgrade", "0002", *url])
    assert res.exit_code == 0 and "already at 0002" in res.output, res.output
    res = runner.invoke(app, ["db", "downgrade", "0009", *url])
    assert res.exit_code == 2 and "revision: '0009' is not a revision of this release" in res.output, res.output
    res = runner.invoke(app, ["db", "upgrade", *url])
    assert res.exit_code == 0 and f"applied: {', '.join(reversed(undone.split(', ')))}" in res.output, res.output
    with TestClient(create_app(db_settings)) as c:  # the run survived the round trip
        assert c.get(f"/v1/runs/{rid}", headers=auth()).json()["decisions"] == 1


def test_db_upgrade_says_which_session_holds_the_lock_it_waits_for(pg_url, tmp_path):
    """A running server's open transaction on a table blocks the ALTER of a migration: the command
    names the session it waits for (instead of hanging silently), then finishes once it is gone."""
    import subprocess
    import sys
    import time

    engine = sa.create_engine(pg_url)
    init_db(engine)
    from mixagent.service.server.db import downgrade_db

    downgrade_db(engine, "0002")
    holder = engine.connect()
    holder.exec_driver_sql("BEGIN")
    holder.exec_driver_sql("LOCK TABLE runs IN ACCESS SHARE MODE")  # what a long read holds
    import threading

    lines: list[str] = []
    said = threading.Event()

    def read(stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            lines.append(line)
            if "waiting for a lock" in line:
                said.set()

    try:
        proc = subprocess.Popen([sys.executable, "-c", "from mixagent.cli import app; app()", "db", "upgrade",
                                 "--database-url", pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
        reader.start()
        # however slowly the command starts on a busy machine, it says whom it waits for while it waits
        assert said.wait(timeout=120), "".join(lines)
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting
    finally:
        holder.rollback()
        holder.close()
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(lines)
    engine.dispose()
    assert proc.returncode == 0 and f"upgraded to {head_revision()}" in out, (out, err)
    assert "waiting for a lock the migration needs, held by pid" in err and "table runs" in err, err
