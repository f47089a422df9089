"""Service settings (pydantic-settings): every field can be set as ``MIXAGENT_<FIELD>``.

Tokens are comma-separated lists (``MIXAGENT_TOKENS=tok-a,tok-b``). Outside ``environment=local`` the
default development token is refused, so a deployed service never runs with a known secret.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "DEV_TOKEN", "principal_of", "default_database_url"]

DEV_TOKEN = "mixagent-dev-token"
"""Accepted (with a warning) only when ``environment`` is ``local``."""


@functools.lru_cache(maxsize=1024)
def principal_of(token: str) -> str:
    """The id a run's owner is stored under: a hash, so the database never holds a token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def default_database_url() -> str:
    """``sqlite:///<user data folder>/mixagent.db`` (platformdirs; a data folder, not a cache: the
    database holds every served decision)."""
    from platformdirs import user_data_path  # noqa: PLC0415

    return f"sqlite:///{user_data_path('mixagent', appauthor=False) / 'mixagent.db'}"


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not (sep and at) or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def _split(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


class Settings(BaseSettings):
    """Runtime configuration of ``mixagent serve`` (and of :func:`mixagent.service.server.main.create_app`)."""

    model_config = SettingsConfigDict(env_prefix="MIXAGENT_", extra="forbid", env_file=None)

    environment: Literal["local", "staging", "production"] = "local"
    """``local`` allows the development token; anything else demands real tokens."""
    database_url: str = Field(default_factory=lambda: default_database_url())
    """SQLAlchemy URL: by default the SQLite file (WAL) ``mixagent.db`` in the user data folder
    (platformdirs: ``~/.local/share/mixagent`` on Linux); ``postgresql+psycopg://user@host/db`` for
    several replicas (``postgres://`` and ``postgresql://`` are read as that)."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """NORMAL (WAL) survives a killed process; FULL also survives power loss, at an fsync per commit."""
    sqlite_wal_limit_mb: Annotated[int, Field(ge=1, le=1024 * 1024)] = 64
    """The SQLite WAL file stays below this: past half of it the next checkpoint (every second) is a
    TRUNCATE, which empties it (writers wait for it, typically milliseconds)."""
    tokens: str = DEV_TOKEN
    """Comma-separated bearer tokens allowed to create and drive runs."""
    admin_tokens: str = ""
    """Comma-separated bearer tokens that may also load policies (and export every run)."""
    policy_dir: Path | None = None
    """Folder of policy artifacts (``<dir>/<any>/card.json``), loaded at start and by the admin route."""
    default_policy: str | None = None
    """Policy of runs that name none: the bundled artifact when one exists, else ``uniform``."""
    fallback_policy: str = "uniform"
    """Built-in baseline that serves a decision a learned policy cannot make (a run whose domains do
    not fit it, an observation outside its training ranges); the answer's ``served_by`` names it."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 256 * 1024
    """Larger request bodies get 413 (see :mod:`mixagent.service.server.limits` for every limit)."""
    gc_freeze_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    """Every this many seconds the long-lived objects are frozen out of Python's full garbage
    collections (which paused answers by up to 180 ms with 1,000 cached runs); 0 turns it off."""
    run_cache_mb: Annotated[int, Field(ge=1, le=1024 * 1024)] = 256
    """Memory the cache of run histories may use (estimated); least recently used runs leave it first."""
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(f"{url!r} is not a URL; use sqlite:///path/to/file.db or "
                             "postgresql+psycopg://user@host/db")
        if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
            return f"postgresql+psycopg://{rest}"
        if scheme not in ("sqlite", "sqlite+pysqlite"):
            raise ValueError(f"unsupported scheme {scheme!r} in {_hide_password(url)!r}; use "
                             "sqlite:///path/to/file.db or postgresql+psycopg://user@host/db")
        return url

    @field_validator("fallback_policy")
    @classmethod
    def _known_baseline(cls, name: str) -> str:
        from mixagent.agent.baselines import BASELINES  # noqa: PLC0415

        if name not in BASELINES:
            raise ValueError(f"{name!r} is not a built-in baseline; use one of {sorted(BASELINES)}")
        return name

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if not self.token_list:
            raise ValueError("tokens: at least one bearer token is needed (MIXAGENT_TOKENS)")
        if self.environment != "local" and DEV_TOKEN in self.token_list + self.admin_token_list:
            raise ValueError(
                f"tokens: the development token may only be used with environment=local, not "
                f"{self.environment!r}; set MIXAGENT_TOKENS"
            )
        return self

    @property
    def database_display(self) -> str:
        """The database for humans: the SQLite file's path, or the URL without its password."""
        if self.database_url.startswith("sqlite"):
            path = self.database_url.partition(":///")[2]
            return f"SQLite file {Path(path).resolve() if path and path != ':memory:' else ':memory:'}"
        return _hide_password(self.database_url)

    @property
    def token_list(self) -> list[str]:
        return _split(self.tokens)

    @property
    def admin_token_list(self) -> list[str]:
        return _split(self.admin_tokens)
