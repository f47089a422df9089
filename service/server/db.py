"""The SQLAlchemy engine: an SQLite file in WAL mode by default, PostgreSQL by URL.

SQLite durability: in WAL mode a commit is in the WAL file before the response is sent, so a
``kill -9`` of the server loses nothing that was acknowledged (``synchronous=NORMAL``);
``synchronous=FULL`` additionally fsyncs every commit, which survives power loss.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, make_url, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from mixagent.service.server.config import Settings
from mixagent.service.server.models import Base, PolicyArtifact, PolicyCurrent

__all__ = ["make_engine", "init_db", "make_sessionmaker", "Checkpointer", "check_database", "DatabaseUnavailable"]

CONNECT_TIMEOUT_S = 5

log = logging.getLogger(__name__)


class Checkpointer:
    """Moves the SQLite WAL into the database file every ``every_s`` seconds, in a daemon thread.

    Serving connections have auto-checkpoints off, so no request waits for the checkpoint's fsync
    (tens to hundreds of ms on a busy disk); a PASSIVE checkpoint never blocks writers.
    """

    def __init__(self, engine: Engine, every_s: float = 1.0):
        self.engine = engine
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mixagent-wal-checkpoint", daemon=True)

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.checkpoint()

    def checkpoint(self) -> None:
        try:
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


def init_db(engine: Engine) -> None:
    """Create the tables that do not exist yet and add the nullable columns a database made by an
    older release lacks (the schema is additive so far); seed ``policy_current`` from the artifacts
    recorded before it existed (the newest load of each name, as a restart used to pick).

    Replicas starting together on one PostgreSQL database take turns (an advisory lock held for the
    transaction), so two ``CREATE TABLE`` or ``ALTER TABLE`` never race."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        Base.metadata.create_all(conn)
        _add_missing_columns(conn)
        _seed_current(conn)


def _add_missing_columns(conn: Connection) -> None:
    have = inspect(conn)
    for table in Base.metadata.sorted_tables:
        existing = {c["name"] for c in have.get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            if not column.nullable:  # pragma: no cover - a new required column needs a real migration
                raise RuntimeError(f"database: table {table.name} lacks the required column {column.name}")
            kind = column.type.compile(dialect=conn.dialect)
            log.warning("database: adding column %s.%s (%s)", table.name, column.name, kind)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}'))


def _seed_current(conn: Connection) -> None:
    if conn.execute(select(PolicyCurrent.name).limit(1)).first() is not None:
        return
    newest: dict[str, tuple[float, str]] = {}
    for name, version, loaded_at in conn.execute(
            select(PolicyArtifact.name, PolicyArtifact.version, PolicyArtifact.loaded_at)):
        if name not in newest or loaded_at >= newest[name][0]:
            newest[name] = (loaded_at, version)
    for name, (loaded_at, version) in newest.items():
        conn.execute(insert(PolicyCurrent).values(name=name, version=version, updated_at=loaded_at))


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(bind=engine, expire_on_commit=False)
