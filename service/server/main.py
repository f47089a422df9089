"""The FastAPI app: ``create_app(settings)`` wires settings, database, policy registry, run store,
metrics and routes. ``mixagent serve`` runs it with uvicorn (``--factory``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mixagent import __version__
from mixagent.service.server.api import ROUTERS
from mixagent.service.server.config import DEV_TOKEN, Settings
from mixagent.service.server.db import Checkpointer, init_db, make_engine, make_sessionmaker
from mixagent.service.server.errors import install_error_handlers
from mixagent.service.server.front_door import MixingApp
from mixagent.service.server.gc_pauses import GcFreezer
from mixagent.service.server.limits import LIMITS_DOC, BodyLimitMiddleware, RequestLimitMiddleware
from mixagent.service.server.methods import OptionsMiddleware
from mixagent.service.server.metrics import Metrics, MetricsMiddleware
from mixagent.service.server.registry import PolicyRegistry, bundled_dir
from mixagent.service.server.runs import RunStore

__all__ = ["create_app", "open_store"]

log = logging.getLogger(__name__)

DESCRIPTION = f"""Trainers report evaluation feedback during continual pre-training and get back the
next data-mixing weights. Create a run (its answer: the mixture to train on *before* the first
evaluation), post the feedback of each evaluation (step 0, before training, first: its answer is
the first decision), train on the returned weights until the next evaluation, and send back the
`decision_id` you trained on as `mixture_id`. Every `/v1` call needs `Authorization: Bearer <token>`.

{LIMITS_DOC}"""


DOCS_ASSETS = "/docs-static"


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) from assets inside the installed package (``swagger-ui-bundle``), not a
    CDN: the page works on a machine without internet. ReDoc, which has no packaged assets, is off."""
    from fastapi.openapi.docs import get_swagger_ui_html  # noqa: PLC0415
    from fastapi.responses import HTMLResponse  # noqa: PLC0415
    from fastapi.staticfiles import StaticFiles  # noqa: PLC0415
    from swagger_ui_bundle import swagger_ui_path  # noqa: PLC0415

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="mixagent API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


def open_store(settings: Settings, metrics: Metrics | None = None) -> tuple[RunStore, list[str]]:
    """The database (its schema migrated to this release's), the policy registry (built-ins, bundled
    artifacts, the policy folder, artifacts recorded in the database) and the run store on top;
    returns the store and the messages of the artifacts refused."""
    engine = make_engine(settings)
    applied = init_db(engine)
    if applied:
        log.warning("database: schema migrations applied: %s", ", ".join(applied))
    registry = PolicyRegistry(settings.default_policy, fallback=settings.fallback_policy)
    refused = registry.load_dir(bundled_dir(), bundled=True)
    if settings.policy_dir is not None:
        if settings.policy_dir.is_dir():
            refused += registry.load_dir(settings.policy_dir)
        else:
            log.error("policy_dir %s is not a folder; /readyz reports not ready", settings.policy_dir)
    store = RunStore(make_sessionmaker(engine), registry, metrics or Metrics(),
                     cache_bytes=settings.run_cache_mb * 1024 * 1024)
    refused += store.policies.sync()
    return store, refused


def create_app(settings: Settings | None = None) -> MixingApp:
    settings = settings or Settings()
    if DEV_TOKEN in settings.token_list:
        log.warning("serving with the development token %r (environment=local only)", DEV_TOKEN)
    log.info("database: %s", settings.database_display)
    metrics = Metrics()
    store, refused = open_store(settings, metrics)
    for _ in refused:
        metrics.policy_load_failures.inc()
    metrics.track_active_runs(store.active_runs)
    engine = store.engine
    checkpointer = (Checkpointer(engine, wal_limit_bytes=settings.sqlite_wal_limit_mb * 1_000_000,
                                 write_lock=store.write_lock).start()
                    if engine.dialect.name == "sqlite" else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        freezer = GcFreezer(settings.gc_freeze_s).start() if settings.gc_freeze_s > 0 else None
        yield
        if freezer is not None:
            freezer.stop()
        if checkpointer is not None:
            checkpointer.stop()
        engine.dispose()

    app = MixingApp(title="mixagent", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    _offline_docs(app)
    app.state.settings = settings
    app.state.registry = store.registry
    app.state.store = store
    app.state.metrics = metrics
    install_error_handlers(app)
    for r in ROUTERS:
        app.include_router(r)
    # Outermost last: metrics see every answer, limits run before anything reads the request.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(OptionsMiddleware)
    app.add_middleware(RequestLimitMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
