"""The SQLAlchemy engine: an SQLite file in WAL mode by default, PostgreSQL by URL.

SQLite durability: in WAL mode a commit is in the WAL file before the response is sent, so a
``kill -9`` of the server loses nothing that was acknowledged (``synchronous=NORMAL``);
``synchronous=FULL`` additionally fsyncs every commit, which survives power loss.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker

from mixagent.service.config import Settings
from mixagent.service.models import Base

__all__ = ["make_engine", "init_db", "make_sessionmaker", "Checkpointer"]

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


def make_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if url.startswith("sqlite"):
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
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def init_db(engine: Engine) -> None:
    """Create the tables that do not exist yet (the schema is additive so far)."""
    Base.metadata.create_all(engine)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(bind=engine, expire_on_commit=False)
