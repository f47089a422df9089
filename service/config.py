"""Service settings (pydantic-settings): every field can be set as ``MIXAGENT_<FIELD>``.

Tokens are comma-separated lists (``MIXAGENT_TOKENS=tok-a,tok-b``). Outside ``environment=local`` the
default development token is refused, so a deployed service never runs with a known secret.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "DEV_TOKEN", "principal_of"]

DEV_TOKEN = "mixagent-dev-token"
"""Accepted (with a warning) only when ``environment`` is ``local``."""


def principal_of(token: str) -> str:
    """The id a run's owner is stored under: a hash, so the database never holds a token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def _split(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


class Settings(BaseSettings):
    """Runtime configuration of ``mixagent serve`` (and of :func:`mixagent.service.main.create_app`)."""

    model_config = SettingsConfigDict(env_prefix="MIXAGENT_", extra="forbid", env_file=None)

    environment: Literal["local", "staging", "production"] = "local"
    """``local`` allows the development token; anything else demands real tokens."""
    database_url: str = "sqlite:///./mixagent.db"
    """SQLAlchemy URL: an SQLite file (WAL) by default, ``postgresql+psycopg://...`` for replicas."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """NORMAL (WAL) survives a killed process; FULL also survives power loss, at an fsync per commit."""
    tokens: str = DEV_TOKEN
    """Comma-separated bearer tokens allowed to create and drive runs."""
    admin_tokens: str = ""
    """Comma-separated bearer tokens that may also load policies (and export every run)."""
    policy_dir: Path | None = None
    """Folder of policy artifacts (``<dir>/<any>/card.json``), loaded at start and by the admin route."""
    default_policy: str | None = None
    """Policy of runs that name none: the bundled artifact when one exists, else ``loss-softmax``."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 256 * 1024
    """Larger request bodies get 413."""
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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
    def token_list(self) -> list[str]:
        return _split(self.tokens)

    @property
    def admin_token_list(self) -> list[str]:
        return _split(self.admin_tokens)
