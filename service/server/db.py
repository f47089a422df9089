"""The SQLAlchemy engine (an SQLite file in WAL mode by default, PostgreSQL by URL) and the schema's
versioned migrations (Alembic; the scripts are package data under ``migrations/``), applied at
start-up and by ``mixagent db upgrade``.

SQLite durability: in WAL mode a commit is in the WAL file before the response is sent, so a
``kill -9`` of the server loses nothing that was acknowledged (``synchronous=NORMAL``);
``synchronous=FULL`` additionally fsyncs every commit, which survives power loss.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from mixagent.service.server.config import Settings

__all__ = ["make_engine", "init_db", "downgrade_db", "make_sessionmaker", "Checkpointer", "check_database",
           "DatabaseUnavailable", "SchemaError", "head_revision", "schema_revision", "migrations_dir", "BASELINE"]

CONNECT_TIMEOUT_S = 5
WAL_LIMIT_MB = 64
"""Default bound of the SQLite WAL file (``MIXAGENT_SQLITE_WAL_LIMIT_MB``)."""
WAL_POLL_S = 0.05
"""How often the checkpointer looks at the WAL's size."""

log = logging.getLogger(__name__)


class Checkpointer:
    """Moves the SQLite WAL into the database file every ``every_s`` seconds, in a daemon thread, and
    keeps the WAL file below ``wal_limit_bytes``.

    Serving connections have auto-checkpoints off, so no request waits for the checkpoint's fsync
    (tens to hundreds of ms on a busy disk). A PASSIVE checkpoint never blocks writers, but under
    steady writes it never lets SQLite start the WAL over either (a reader or writer is always
    there), so the file grows without bound (1.1 GB after 60 s of 750 decisions/s, measured). Once
    the WAL passes half the limit, the next checkpoint is a TRUNCATE: it waits for this process's
    writers (``write_lock``) and the readers of old frames (SQLite's busy handler), copies
    everything back and empties the file; writers wait for it, typically milliseconds.
    ``journal_size_limit`` (set on every connection) also truncates the file whenever SQLite resets it.
    """

    def __init__(self, engine: Engine, every_s: float = 1.0, wal_limit_bytes: int = WAL_LIMIT_MB * 1_000_000,
                 write_lock: threading.Lock | None = None):
        self.engine = engine
        self.every_s = every_s
        self.wal_limit_bytes = wal_limit_bytes
        self.write_lock = write_lock
        database = engine.url.database
        self.wal = Path(f"{database}-wal") if database and database != ":memory:" else None
        self.truncations = 0
        """TRUNCATE checkpoints made (the WAL had passed half its limit)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mixagent-wal-checkpoint", daemon=True)

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        # The WAL's size is looked at often (a stat), so a fast writer cannot run far past half the
        # limit between two looks; the PASSIVE checkpoint runs every ``every_s``.
        last = time.monotonic()
        while not self._stop.wait(WAL_POLL_S):
            if self.wal_bytes() > self.wal_limit_bytes // 2 or time.monotonic() - last >= self.every_s:
                self.checkpoint()
                last = time.monotonic()

    def wal_bytes(self) -> int:
        try:
            return self.wal.stat().st_size if self.wal is not None else 0
        except FileNotFoundError:
            return 0

    def checkpoint(self) -> None:
        truncate = self.wal_bytes() > self.wal_limit_bytes // 2
        try:
            if truncate:
                with self.write_lock or contextlib.nullcontext(), self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                self.truncations += 1
            else:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as e:
            log.warning("WAL checkpoint failed: %s", e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.checkpoint()


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message names it (without a password)."""


def make_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sync = settings.sqlite_synchronous

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            # Checkpoints (which fsync) run in a background thread, not inside a request's commit.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={settings.sqlite_wal_limit_mb * 1_000_000}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # A bounded connect: an unreachable server is an error after seconds, not a hang.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S})


def check_database(settings: Settings) -> None:
    """Open the database once and run ``SELECT 1``; :class:`DatabaseUnavailable` names what failed."""
    try:
        engine = make_engine(settings)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise DatabaseUnavailable(
            f"database: cannot open {settings.database_display}: {reason}") from None


SCHEMA_LOCK = 0x6D697861  # "mixa": the PostgreSQL advisory lock that serialises start-ups
BASELINE = "0001"
"""The revision of the schema that releases before migrations created (``create_all``): a database
with their tables and no ``alembic_version`` is stamped with it, then upgraded."""


class SchemaError(Exception):
    """The database's schema cannot be brought to this release's (e.g. it is newer); the message says
    what to do."""


def migrations_dir() -> Path:
    """The Alembic scripts, package data of ``mixagent.service.server`` (found in a wheel install too)."""
    return Path(str(files("mixagent.service.server") / "migrations"))


def _alembic(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The schema revision this release needs."""
    return str(ScriptDirectory(str(migrations_dir())).get_current_head())


def schema_revision(engine: Engine) -> str | None:
    """The database's schema revision (None: no schema recorded: empty, or made before migrations)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


LOCK_POLL_S = 2.0
"""How long one attempt of a migration waits for a lock before it says what it waits for and tries again."""

WaitNote = Callable[[str], None]
"""Told, once per attempt that found a lock taken, what a migration waits for."""


def _blockers(conn: Connection) -> str:
    """Who holds what a migration needs (PostgreSQL): the other sessions holding locks on this
    database's tables, by pid, state and their last statement."""
    rows = conn.execute(text(
        "SELECT DISTINCT a.pid, a.state, left(coalesce(a.query, ''), 80) AS query, c.relname "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid LEFT JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.granted AND a.pid <> pg_backend_pid() AND a.datname = current_database() "
        "AND (c.relname IS NULL OR c.relname NOT LIKE 'pg_%') ORDER BY a.pid")).all()
    if not rows:
        return "another session (it has finished by now)"
    return "; ".join(f"pid {r.pid} ({r.state}{', table ' + r.relname if r.relname else ''}: {r.query!r})"
                     for r in rows[:5])


def _migrate(engine: Engine, target: str, on_wait: WaitNote | None, down: bool = False) -> list[str]:
    """Move the schema to ``target`` in one transaction under the schema lock, retrying (and saying
    what it waits for) while another session holds a lock it needs; returns the revisions applied
    (upgrade, oldest first) or undone (downgrade, newest first)."""
    script = ScriptDirectory(str(migrations_dir()))
    head = script.get_current_head()
    while True:
        try:
            return _migrate_once(engine, script, head, target, down)
        except OperationalError as e:
            text_ = str(getattr(e, "orig", e)).lower()
            if "lock" not in text_ and "busy" not in text_:
                raise
            if engine.dialect.name == "postgresql":
                with engine.connect() as conn:
                    who = _blockers(conn)
                note = f"database: waiting for a lock the migration needs, held by {who}"
            else:
                note = ("database: waiting for the SQLite write lock, held by another process (a running "
                        "server or another migration)")
            log.warning("%s", note)
            if on_wait is not None:
                on_wait(note)


def _migrate_once(engine: Engine, script: ScriptDirectory, head: str | None, target: str, down: bool) -> list[str]:
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(LOCK_POLL_S * 1000)}")
            # A batch migration rebuilds a table (copy, drop, rename), which foreign keys would refuse
            # for a referenced one: they are off for the migration (set outside the transaction, where
            # SQLite honours it), checked before it commits, and on again for this pooled connection.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()  # ends SQLAlchemy's autobegun transaction (pysqlite sent no BEGIN for a PRAGMA)
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = '{int(LOCK_POLL_S * 1000)}ms'"))
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                elif sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                return _migrate_in(conn, script, head, target, down)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.exec_driver_sql("PRAGMA busy_timeout=30000")
                conn.commit()


def _migrate_in(conn: Connection, script: ScriptDirectory, head: str | None, target: str, down: bool) -> list[str]:
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None and inspect(conn).has_table("runs"):
        log.warning("database: made before migrations; adopting it as schema revision %s", BASELINE)
        command.stamp(_alembic(conn), BASELINE)
        current = BASELINE
    try:
        if down:
            steps = [r.revision for r in script.iterate_revisions(current, target)]
            if steps and target != "base" and steps[-1] == target:
                steps = steps[:-1]
        else:
            steps = [r.revision for r in script.iterate_revisions(target, current)][::-1]
    except (CommandError, RevisionError):
        raise SchemaError(
            f"database: schema revision {current!r} is not one this release of mixagent knows (its newest is "
            f"{head!r}): the database was made by a newer release; run that release, or point "
            "MIXAGENT_DATABASE_URL at another database") from None
    if steps:
        log.warning("database: %s the schema from %s to %s", "downgrading" if down else "upgrading",
                    current or "empty", target)
        (command.downgrade if down else command.upgrade)(_alembic(conn), target)
    if conn.dialect.name == "sqlite":
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise SchemaError(f"database: the migration to {target} would break {len(broken)} foreign key(s) "
                              f"(first: {broken[0]}); nothing was changed")
    return steps


def init_db(engine: Engine, on_wait: WaitNote | None = None) -> list[str]:
    """Bring the database's schema to this release's (Alembic migrations, in one transaction); returns
    the revisions applied, oldest first (empty: it was current).

    An empty database gets every migration; a database made by a release before migrations (its
    tables, no ``alembic_version``) is stamped :data:`BASELINE` first. Replicas starting together take
    turns: on PostgreSQL under an advisory lock held for the transaction, on SQLite under the write
    lock (``BEGIN IMMEDIATE``). While another session holds a lock the migration needs (a running
    server's transaction on a table, another start-up), it says so every :data:`LOCK_POLL_S`
    (``on_wait``, and the log), naming the sessions on PostgreSQL, and tries again. Data are kept. A
    database whose revision this release does not know (made by a newer release) is refused with
    :class:`SchemaError`, untouched."""
    return _migrate(engine, "head", on_wait)


def downgrade_db(engine: Engine, revision: str, on_wait: WaitNote | None = None) -> list[str]:
    """Undo migrations down to ``revision`` (a revision id, or ``base`` for an empty schema), in one
    transaction under the same locks as :func:`init_db`; returns the revisions undone, newest first.
    A downgrade can drop columns and tables, with their data (each revision's ``downgrade`` says)."""
    known = {r.revision for r in ScriptDirectory(str(migrations_dir())).walk_revisions()}
    if revision != "base" and revision not in known:
        raise SchemaError(f"revision: {revision!r} is not a revision of this release (known: base, "
                          f"{', '.join(sorted(known))})")
    return _migrate(engine, revision, on_wait, down=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(bind=engine, expire_on_commit=False)
