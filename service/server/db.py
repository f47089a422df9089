"""The SQLAlchemy engine: an SQLite file in WAL mode by default, PostgreSQL by URL.

SQLite durability: in WAL mode a commit is in the WAL file before the response is sent, so a
``kill -9`` of the server loses nothing that was acknowledged (``synchronous=NORMAL``);
``synchronous=FULL`` additionally fsyncs every commit, which survives power loss.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from mixagent.service.server.config import Settings
from mixagent.service.server.models import Base

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
        except Exception as e:  # noqa: BLE001 - a failed checkpoint is retried on the next tick
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


def init_db(engine: Engine) -> None:
    """Create the tables that do not exist yet (the schema is additive so far)."""
    Base.metadata.create_all(engine)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(bind=engine, expire_on_commit=False)
