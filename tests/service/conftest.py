"""Fixtures of the service tests: an app on a fresh SQLite file, its TestClient, tokens, helpers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TOKEN = "tok-alice"
OTHER = "tok-bob"
ADMIN = "tok-admin"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


DOMAINS = [
    {"name": "web", "field": "source", "prior": 3.0},
    {"name": "code", "field": "source", "prior": 1.0},
    {"name": "proofs", "field": "target", "prior": 1.0},
]


def run_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"domains": DOMAINS, "horizon": 4, "interval": 10}
    body.update(over)
    return body


def feedback_body(step: int, t: int | None = None, **over: Any) -> dict[str, Any]:
    """A plausible evaluation: target improves with steps, source forgets a little."""
    t = step // 10 if t is None else t
    body: dict[str, Any] = {
        "step": step,
        "tokens_seen": step * 4096,
        "field_scores": {"source": -2.0 - 0.01 * t, "target": -4.0 + 0.2 * t},
        "domain_losses": {"web": 2.0 + 0.01 * t, "code": 1.5 + 0.02 * t, "proofs": 4.0 - 0.2 * t},
    }
    body.update(over)
    return body


def make_settings(tmp_path: Path, **over: Any):  # type: ignore[no-untyped-def]
    from mixagent.service.server.config import Settings

    kw: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'mixagent.db'}",
        "tokens": f"{TOKEN},{OTHER}",
        "admin_tokens": ADMIN,
        "policy_dir": tmp_path / "policies",
    }
    kw.update(over)
    (tmp_path / "policies").mkdir(exist_ok=True)
    return Settings(**kw)


def write_card(root: Path, folder: str, **card: Any) -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "card.json").write_text(json.dumps(card))
    return d


@pytest.fixture(autouse=True)
def _no_bundled_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service tests run on the built-ins, whatever agent ships in ``agent/artifacts``:
    the shipped one is tested by ``test_bundled.py`` (and ``test_wheel.py``), which set their own."""
    from mixagent.service.server import main as server_main

    monkeypatch.setattr(server_main, "bundled_dir", lambda: None)


@pytest.fixture()
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path)


@pytest.fixture()
def app(settings):  # type: ignore[no-untyped-def]
    from mixagent.service.server.main import create_app

    return create_app(settings)


@pytest.fixture()
def client(app) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    with TestClient(app) as c:
        yield c


def free_port() -> int:
    from mixagent.service.trainer.demo import free_port as free

    return free()


PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
"""The local PostgreSQL server (trust auth); each test gets a fresh database on it."""


@pytest.fixture()
def pg_url():  # type: ignore[no-untyped-def]
    name = f"mixagent_test_{uuid.uuid4().hex[:12]}"
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({type(e).__name__})")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def server(app) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    from mixagent.service.trainer.demo import BackgroundServer

    with BackgroundServer(app) as s:
        yield s
