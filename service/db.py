"""The SQLAlchemy engine: an SQLite file in WAL mode by default, PostgreSQL by URL.

SQLite durability: in WAL mode a commit is in the WAL file before the response is sent, so a
``kill -9`` of the server loses nothing that was acknowledged (``synchronous=NORMAL``);
``synchronous=FULL`` additionally fsyncs every commit, which survives power loss.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker

from mixagent.service.config import Settings
from mixagent.service.models import Base

__all__ = ["make_engine", "init_db", "make_sessionmaker"]


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
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def init_db(engine: Engine) -> None:
    """Create the tables that do not exist yet (the schema is additive so far)."""
    Base.metadata.create_all(engine)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(bind=engine, expire_on_commit=False)
