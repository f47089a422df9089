"""The FastAPI app: ``create_app(settings)`` wires settings, database, policy registry, run store,
metrics and routes. ``mixagent serve`` runs it with uvicorn (``--factory``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mixagent import __version__
from mixagent.service.api import ROUTERS
from mixagent.service.config import DEV_TOKEN, Settings
from mixagent.service.db import Checkpointer, init_db, make_engine, make_sessionmaker
from mixagent.service.errors import BodyLimitMiddleware, install_error_handlers
from mixagent.service.metrics import Metrics, MetricsMiddleware
from mixagent.service.registry import BUNDLED_DIR, PolicyRegistry
from mixagent.service.runs import RunStore

__all__ = ["create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """Trainers report evaluation feedback during continual pre-training and get back the
next data-mixing weights. Create a run, post the feedback of each evaluation (step 0 first), train
on the returned weights until the next evaluation. Every call needs `Authorization: Bearer <token>`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if DEV_TOKEN in settings.token_list:
        log.warning("serving with the development token %r (environment=local only)", DEV_TOKEN)
    engine = make_engine(settings)
    init_db(engine)
    metrics = Metrics()
    registry = PolicyRegistry(settings.default_policy)
    refused = registry.load_dir(BUNDLED_DIR)
    if settings.policy_dir is not None:
        refused += registry.load_dir(settings.policy_dir)
    store = RunStore(make_sessionmaker(engine), registry, metrics)
    refused += store.reload_artifacts()
    for _ in refused:
        metrics.policy_load_failures.inc()
    metrics.track_active_runs(store.active_runs)

    checkpointer = Checkpointer(engine).start() if engine.dialect.name == "sqlite" else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if checkpointer is not None:
            checkpointer.stop()
        engine.dispose()

    app = FastAPI(title="mixagent", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.store = store
    app.state.metrics = metrics
    install_error_handlers(app)
    for r in ROUTERS:
        app.include_router(r)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
