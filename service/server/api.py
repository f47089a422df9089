"""The HTTP routes, one router per resource: ``/v1/runs``, ``/v1/policies``, ``/v1/trajectories``
and the ops routes (``/healthz``, ``/readyz``, ``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from mixagent.agent.baselines import BASELINES
from mixagent.agent.card import ArtifactError
from mixagent.service.server.deps import (
    AdminDep,
    CallerDep,
    MetricsDep,
    RegistryDep,
    SettingsDep,
    StoreDep,
)
from mixagent.service.server.errors import Unprocessable
from mixagent.service.server.export import export_trajectories
from mixagent.service.server.limits import MAX_HEADER_BYTES, MAX_HEADERS, MAX_URL_BYTES
from mixagent.service.server.registry import PolicyEntry, PolicyRegistry
from mixagent.service.server.runs import RunState, RunStore, ServedBy, StoredDecision, decision_warnings
from mixagent.service.server.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    DecisionPublic,
    DecisionRecord,
    DomainPublic,
    ErrorPublic,
    FeedbackIn,
    HealthPublic,
    PoliciesPublic,
    PolicyLoad,
    PolicyPublic,
    ReadyPublic,
    RunCreate,
    RunCreated,
    RunPublic,
    RunQuery,
    RunsPublic,
    RunsQuery,
    RunSummary,
    ServedByPublic,
    TrajectoriesQuery,
)

__all__ = ["answer_feedback", "runs_router", "policies_router", "trajectories_router", "ops_router", "ROUTERS"]

_ERRORS = {
    401: "Missing or invalid bearer token.",
    403: "The route needs an admin token.",
    404: "No such run for this token.",
    409: "The step or tokens_seen conflicts with the run's recorded history, or the run is done; an "
         "Idempotency-Key reused with another body.",
    503: "The database is unavailable, or this replica cannot read the policy artifact the database names "
         "(the detail names its path); retry (see Retry-After).",
    413: "The request body is over MIXAGENT_MAX_BODY_BYTES (256 KiB by default).",
    414: f"The path and query string are over {MAX_URL_BYTES} bytes.",
    422: "The input breaks the schema or the run's domain space.",
    431: f"Over {MAX_HEADERS} header lines or {MAX_HEADER_BYTES} bytes of headers.",
}
_EVERY_ROUTE = (414, 431)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error responses a route can give (all carry :class:`ErrorPublic`);
    the size limits apply to every route."""
    return {c: {"model": ErrorPublic, "description": _ERRORS[c]} for c in sorted({*codes, *_EVERY_ROUTE})}


# ===== /v1/runs ==================================================================================
runs_router = APIRouter(prefix="/v1/runs", tags=["runs"])

RunId = Annotated[str, Path(min_length=1, max_length=64, description="The id returned by create run.")]


def _served_by(state: RunState, served: ServedBy) -> ServedByPublic:
    return ServedByPublic(policy=state.policy_ref, fallback=served.fallback, reason=served.reason)


def _decision_public(state: RunState, d: StoredDecision, replayed: bool) -> DecisionPublic:
    """The answer to a feedback, built without validation (every value has its type by
    construction; a feedback's answer is on the hot path: ``tests/service/server/test_front_door.py``
    checks it against the validated model)."""
    served = ServedByPublic.model_construct(policy=state.policy_ref, fallback=d.served_by.fallback,
                                            reason=d.served_by.reason)
    return DecisionPublic.model_construct(
        run_id=state.id, decision_id=d.decision_id, step=d.step, t=d.seq,
        weights=d.weights.as_dict(state.space), policy=state.policy_name,
        policy_version=state.policy_version, served_by=served,
        done=d.seq >= state.horizon, replayed=replayed, warnings=decision_warnings(d.seq, d.feedback),
    )


@runs_router.post("", status_code=201, response_model=RunCreated, responses=errors(401, 409, 413, 422, 503))
def create_run(
    body: RunCreate, caller: CallerDep, store: StoreDep, response: Response,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Makes creation safe to retry: a request with a key this token used before answers with "
        "the run that request created (replayed: true) instead of creating another; the same key with another "
        "body is a 409. The trainer-side client sends a fresh UUID per run and reuses it on every retry.")] = None,
) -> RunCreated:
    """Create a run; returns its id and the mixture to train on until the first decision.

    The run gets the current version of its policy (the same on every replica). An objective
    outside a learned policy's trained range is a 422 naming the range; domains that do not fit a
    learned policy are not refused: the fallback baseline serves the run (``served_by`` says so).
    With an ``Idempotency-Key``, a retry answers with the run the first attempt created.
    """
    state, replayed = store.create_run(owner=caller.principal, req=body, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/runs/{state.id}"
    return RunCreated(
        run_id=state.id, mixture_id=state.initial_mixture_id, weights=state.initial_weights.as_dict(state.space),
        policy=state.policy_name, policy_version=state.policy_version,
        served_by=_served_by(state, state.initial_served_by), horizon=state.horizon,
        interval=state.interval, created_at=state.created_at, replayed=replayed,
    )


@runs_router.get("", response_model=RunsPublic, responses=errors(401, 422, 503))
def list_runs(caller: CallerDep, store: StoreDep, q: Annotated[RunsQuery, Query()]) -> RunsPublic:
    """List this token's runs, oldest first."""
    rows, total = store.list_runs(owner=caller.principal, limit=q.limit, offset=q.offset)
    data = [
        RunSummary(
            run_id=r.id, created_at=r.created_at, policy=r.policy_name, policy_version=r.policy_version,
            horizon=r.horizon, interval=r.interval, decisions=n, done=n >= r.horizon + 1,
        )
        for r, n in rows
    ]
    return RunsPublic(data=data, count=total)


@runs_router.get("/{run_id}", response_model=RunPublic, responses=errors(401, 404, 422, 503))
def get_run(run_id: RunId, caller: CallerDep, store: StoreDep, q: Annotated[RunQuery, Query()]) -> RunPublic:
    """A run with one page of its history (``offset``, ``limit``): the initial mixture and decisions."""
    page = store.read_page(owner=caller.principal, run_id=run_id, offset=q.offset, limit=q.limit)
    state = page.state
    names = state.space.names
    end = page.offset + len(state.decisions)
    return RunPublic(
        run_id=state.id, created_at=state.created_at, policy=state.policy_name,
        policy_version=state.policy_version, horizon=state.horizon, interval=state.interval,
        decisions=page.total, done=page.total >= state.horizon + 1, offset=page.offset,
        next_offset=end if end < page.total else None,
        domains=[DomainPublic(name=d.name, field=d.field, prior=d.prior,
                              min_share=state.bounds.min_share.get(d.name) if state.bounds else None,
                              max_share=state.bounds.max_share.get(d.name) if state.bounds else None)
                 for d in state.space.domains],
        setting_name=str(state.meta.get("setting_name", "")), model=str(state.meta.get("model", "")),
        seed=int(state.meta.get("seed", 0)),
        initial_mixture_id=state.initial_mixture_id, initial_weights=state.initial_weights.as_dict(state.space),
        initial_served_by=_served_by(state, state.initial_served_by),
        history=[
            DecisionRecord(
                step=d.step, tokens_seen=d.feedback.tokens_seen, field_scores=dict(d.feedback.field_scores),
                domain_losses={n: d.feedback.domain_losses[n] for n in names}, trained_on=d.mixture_id,
                decision_id=d.decision_id, weights=d.weights.as_dict(state.space),
                served_by=_served_by(state, d.served_by), received_at=d.created_at,
            )
            for d in state.decisions
        ],
    )


async def answer_feedback(store: RunStore, principal: str, run_id: str, body: FeedbackIn) -> DecisionPublic:
    if store.inline:
        state, decision, replayed = await store.post_feedback_grouped(owner=principal, run_id=run_id, fb=body)
    else:
        state, decision, replayed = await run_in_threadpool(
            store.post_feedback, owner=principal, run_id=run_id, fb=body)
    return _decision_public(state, decision, replayed)


async def post_feedback(run_id: RunId, body: FeedbackIn, caller: CallerDep, store: StoreDep) -> DecisionPublic:
    """Report the evaluation at a step; returns the next weights (idempotent per step).

    A retry of a recorded step with the same body returns the stored decision (``replayed``);
    another body for a recorded step, a step that does not come after the last, ``tokens_seen``
    below the last reported, or a feedback after the run's horizon+1, is a 409.
    """
    return await answer_feedback(store, caller.principal, run_id, body)


runs_router.add_api_route("/{run_id}/feedback", post_feedback, methods=["POST"], response_model=DecisionPublic,
                          responses=errors(401, 404, 409, 413, 422, 503))


# ===== /v1/policies ==============================================================================
policies_router = APIRouter(prefix="/v1/policies", tags=["policies"])


def doc_summary(doc: str | None) -> str:
    """The first paragraph of a docstring on one line: whole sentences, never cut at a line break."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split())


def _policy_public(registry: PolicyRegistry, e: PolicyEntry, current: dict[str, str]) -> PolicyPublic:
    doc = e.card.description if e.card else doc_summary(BASELINES[e.rule].__doc__ if e.rule in BASELINES else None)
    is_current = current.get(e.name) == e.version
    card = e.card
    return PolicyPublic(
        name=e.name, version=e.version, kind=e.kind, rule=e.rule, params=e.params,  # type: ignore[arg-type]  # kind: one of the Literal values by construction
        description=doc, current=is_current, default=e.name == registry.default_name and is_current,
        bundled=e.bundled, encoder_version=card.encoder_version if card else None,
        objective_range=card.objective_range.describe() if card and card.objective_range else None,
        fallback=e.fallback if e.kind == "onnx" else None, loaded_at=e.loaded_at,
    )


@policies_router.get("", response_model=PoliciesPublic, responses=errors(401, 503))
def list_policies(_: CallerDep, registry: RegistryDep, store: StoreDep) -> PoliciesPublic:
    """Every loaded policy version; ``current`` marks what new runs get (the same on every replica).
    Artifacts loaded through another replica are loaded here first; ``errors`` names those this
    replica cannot read."""
    problems = store.policies.sync()
    current = store.policies.current_versions()
    data = [_policy_public(registry, e, current) for e in registry.entries()]
    return PoliciesPublic(data=data, count=len(data), errors=problems)


@policies_router.post("/load", status_code=201, response_model=PolicyPublic,
                     responses=errors(401, 403, 413, 422, 503))
def load_policy(
    body: PolicyLoad, _: AdminDep, registry: RegistryDep, settings: SettingsDep, store: StoreDep,
    metrics: MetricsDep,
) -> PolicyPublic:
    """Load a policy artifact folder (under ``policy_dir``) without a restart and make it the
    current version of its name on every replica (through the shared database: the next run any
    replica creates gets it); running runs keep their version. An invalid artifact is refused (422)
    and the service keeps serving. Every replica must be able to read the folder at the same path."""
    if settings.policy_dir is None:
        raise Unprocessable("path: this service has no policy_dir (MIXAGENT_POLICY_DIR) to load from")
    try:  # the schema already refused control characters and over-long names; the file system may still object
        root = settings.policy_dir.resolve()
        folder = (root / body.path).resolve()
        if folder != root and root not in folder.parents:
            raise Unprocessable(f"path: {body.path!r} lies outside the policy directory")
        entry = registry.load(folder)
    except ArtifactError as e:
        metrics.policy_load_failures.inc()
        raise Unprocessable(f"path: artifact {body.path!r} refused: {e}") from None
    except (OSError, ValueError) as e:
        metrics.policy_load_failures.inc()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise Unprocessable(f"path: cannot read artifact {body.path!r}: {reason}") from None
    metrics.policies_loaded.inc()
    store.policies.record(entry)
    return _policy_public(registry, entry, store.policies.current_versions())


# ===== /v1/trajectories ==========================================================================
trajectories_router = APIRouter(prefix="/v1/trajectories", tags=["trajectories"])

NDJSON = "application/x-ndjson"


@trajectories_router.get(
    "",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}},
                     "description": "One Trajectory JSON object per line."}, **errors(401, 404, 422, 503)},
)
def export(caller: CallerDep, store: StoreDep, q: Annotated[TrajectoriesQuery, Query()]) -> StreamingResponse:
    """Export runs as trajectories (this token's runs; every run for an admin token), streamed one
    run at a time."""
    owner = None if caller.admin else caller.principal
    # Check the ids first so an unknown run id is a 404 rather than a broken stream; then read one
    # run at a time, so memory stays that of the largest run, not of all of them.
    run_ids = store.check_ids(owner=owner, run_ids=q.run_id) if q.run_id else store.run_ids(owner=owner)

    def body() -> Iterator[str]:
        for t in export_trajectories(store, owner=owner, run_ids=run_ids, finished_only=q.finished_only):
            yield t.model_dump_json() + "\n"

    return StreamingResponse(body(), media_type=NDJSON)


# ===== ops =======================================================================================
ops_router = APIRouter(tags=["ops"])

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@ops_router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    """The process is up."""
    return HealthPublic(status="ok")


@ops_router.get("/readyz", response_model=ReadyPublic,
                responses={503: {"model": ReadyPublic, "description": "Not ready."}})
def readyz(registry: RegistryDep, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """Ready when the default policy is loaded, the policy folder (if set) exists, the database
    answers, every current version the database names can be read here and no bundled artifact was
    refused."""
    name = registry.default_name
    why = ""
    try:
        store.policies.entry(name)
        loaded = True
    except Exception as e:
        loaded, why = False, str(getattr(e, "detail", e))
    if settings.policy_dir is not None and not settings.policy_dir.is_dir():
        loaded, why = False, why or f"policy_dir: {str(settings.policy_dir)!r} is not a folder"
    db = True
    try:
        with store.sessions() as s:
            s.execute(text("SELECT 1"))
        problems = store.policies.problems()
        if problems:
            loaded, why = False, why or "; ".join(problems)
    except Exception as e:
        db, why = False, why or f"database: {type(e).__name__}"
    ok = loaded and db
    body = ReadyPublic(status="ready" if ok else "not ready", default_policy=name, policy_loaded=loaded,
                       database=db, detail=why)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@ops_router.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                 "description": "Prometheus text format."}})
def metrics(m: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency by route and status, decisions, active runs,
    policy load failures."""
    return Response(m.render(), media_type=PROMETHEUS)


ROUTERS = (runs_router, policies_router, trajectories_router, ops_router)
