"""Runs and their decisions: the rules of the feedback loop, on top of the database.

The rules (docs/architecture.md, "The loop"):

* The first feedback of a run (normally step 0, before training) becomes ``history.feedback[0]``,
  the reference for relative gains. Each feedback is answered with the next weights, which become
  the next ``history.weights`` entry. The initial weights of "create run" are stored on the run.
* Steps strictly increase and ``tokens_seen`` never decreases (409 naming both values). A retry of a
  recorded step with the same payload returns the stored decision; a different payload for a
  recorded step is a conflict.
* A feedback may say which mixture it trained on (``mixture_id``); when that is an earlier mixture
  (the trainer missed a decision, e.g. while the service was unreachable), the history records the
  mixture really trained on, so exported trajectories stay truthful.
* A run takes ``horizon + 1`` feedbacks; the last one is answered with ``done = true``.
* Every decision says who served it (:class:`ServedBy`): the run's policy, or the fallback baseline
  and why (the run's domains do not fit a learned policy, or its observation is outside the ranges
  seen in training). It is stored with the decision, so a retry answers with the same.

Which version of a policy a new run gets is :mod:`~mixagent.service.server.policy_versions`'s
business (one truth in the database); a run stays on the version it was created with.

A decision is acknowledged only after its row is committed. Each process caches the state of the
runs it serves, so any replica or worker continues any run: a cached run that does not know the
mixture a feedback names (minted by another process), or whose new decision collides with one
another process wrote meanwhile (a unique-key conflict on insert), is read again from the database
and the rules are applied to what is there. Only a run read just now can answer "not a mixture of
this run" (409).

The cache is bounded by memory, not by a count of runs: each run's size is estimated from its
domains, fields and decisions (:func:`estimate_bytes`, measured in ``tests/service/server/test_memory.py``
and ``bench/service_memory.py``) and the least recently used runs leave it first once the total passes
``cache_bytes`` (``MIXAGENT_RUN_CACHE_MB``). A run that left the cache is read back from the database
on its next feedback. Reads for ``GET /v1/runs/{id}`` never go through the cache and load one page
of decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mixagent.agent.onnx_policy import GuardedDecision, decide, decide_async
from mixagent.service.server.errors import Conflict, NotFound, Unprocessable
from mixagent.service.server.group_commit import GroupCommit
from mixagent.service.server.metrics import Metrics
from mixagent.service.server.models import DecisionRow, RunRow
from mixagent.service.server.policy_versions import PolicyVersions
from mixagent.service.server.registry import PolicyEntry, PolicyRegistry, SpaceFallback
from mixagent.service.server.schemas import FeedbackIn, RunCreate
from mixagent.trajectories.bounds import ShareBounds
from mixagent.trajectories.contract import (
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Objective,
    Weights,
    stable_hash,
)
from mixagent.trajectories.policy import MixingPolicy

__all__ = ["RunStore", "RunState", "StoredDecision", "RunPage", "ServedBy", "estimate_bytes", "decision_warnings",
           "TRAINER_CHOSE"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
RUN_BYTES = 8_000
"""Estimated fixed cost of a cached run (state, domain space, policy handle, lock)."""
DECISION_BYTES = 2_000
"""Estimated fixed cost of one cached decision (feedback, weights, ids, history entries)."""
CELL_BYTES = 80
"""Estimated cost of one number of a cached decision (a domain loss, a field score or a weight with
its dict slot and float object). Set from the server's resident memory: a cached run of 1025
decisions x 256 domains adds 43 MB of RSS (``bench/service_memory.py``) against 44 MB estimated;
tracemalloc counts less (45 B a number at 256 domains, 53 B at 64, plus about 1.6 kB a decision),
so the estimate is conservative (``tests/service/server/test_memory.py``)."""
_INSERT_DECISION = insert(DecisionRow.__table__)  # type: ignore[arg-type]  # __table__ is FromClause to the stubs, a Table at run time
MAX_REASON = 500
"""Characters of a fallback reason kept (a domain-level card's reason lists every domain)."""


@dataclass(frozen=True)
class ServedBy:
    """Who made a decision: the run's policy (``fallback`` None) or the named fallback baseline,
    with the reason."""

    fallback: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, decision: GuardedDecision) -> ServedBy:
        if decision.fallback is None:
            return cls()
        reason = decision.reason or ""
        return cls(decision.fallback, reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "...")

    def to_json(self) -> str | None:
        return None if self.fallback is None else json.dumps({"fallback": self.fallback, "reason": self.reason})

    @classmethod
    def from_json(cls, text: str | None) -> ServedBy:
        if not text:
            return cls()
        d = json.loads(text)
        return cls(d.get("fallback"), d.get("reason"))


TRAINER_CHOSE = ServedBy("trainer", "the trainer's own initial mixture (initial_weights at creation: it trained "
                                    "before the run was created)")
"""Who chose an initial mixture a trainer gave at creation."""


def decision_warnings(seq: int, feedback: Feedback) -> list[str]:
    """What makes a run's history less useful without making it wrong: accepted, and said in the
    answer (the same on a retry, since it follows from the stored feedback)."""
    warnings = []
    if seq == 0 and feedback.step > 0:
        warnings.append(
            f"step: the run's first feedback is at step {feedback.step}, so it becomes the reference and every "
            "gain is measured from there, not from the start of training; evaluate at step 0, before training "
            "(Hugging Face: TrainingArguments(eval_on_start=True))")
    if feedback.step > 0 and feedback.tokens_seen == 0:
        warnings.append(
            f"tokens_seen: 0 at step {feedback.step}; report the tokens trained on since the start of the run "
            "(Hugging Face: TrainingArguments(include_num_input_tokens_seen=True) or "
            "MixagentCallback(tokens_per_step=...)), or the history has no token axis")
    return warnings


@dataclass(frozen=True)
class StoredDecision:
    seq: int
    step: int
    decision_id: str
    payload_hash: str
    feedback: Feedback
    mixture_id: str | None
    weights: Weights
    created_at: float
    served_by: ServedBy = ServedBy()


def estimate_bytes(domains: int, fields: int, decisions: int) -> int:
    """Estimated memory of a cached run of ``decisions`` decisions over ``domains`` domains."""
    return RUN_BYTES + decisions * (DECISION_BYTES + CELL_BYTES * (2 * domains + fields))


@dataclass(frozen=True)
class RunPage:
    """One page of a run's decisions, read from the database (``GET /v1/runs/{id}``)."""

    state: RunState
    """The run, with ``decisions`` holding only this page."""
    total: int
    """Decisions recorded in all."""
    offset: int



def _bounded(decision: GuardedDecision, bounds: ShareBounds | None) -> GuardedDecision:
    """The decision with its mixture projected onto the run's share bounds (unchanged without any)."""
    return decision if bounds is None else replace(decision, weights=bounds.project(decision.weights))

@dataclass
class RunState:
    id: str
    owner: str
    created_at: float
    space: DomainSpace
    objective: Objective
    meta: dict[str, Any]
    horizon: int
    interval: int
    policy: PolicyEntry | None
    bounds: ShareBounds | None
    """Per-domain share bounds every decision is projected onto (None: none)."""
    policy_name: str
    policy_version: str
    initial_mixture_id: str
    initial_weights: Weights
    initial_served_by: ServedBy = ServedBy()
    decisions: list[StoredDecision] = field(default_factory=list)
    history: History | None = None
    decider: MixingPolicy | None = field(default=None, repr=False)
    """The run's policy, built for its horizon, objective and space (on first use after a load)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    busy: asyncio.Future[None] | None = field(default=None, repr=False)
    """Done when the feedback being decided and written on the event loop is (group commit only)."""

    _by_step: dict[int, StoredDecision] = field(default_factory=dict, repr=False)
    _by_id: dict[str, StoredDecision] = field(default_factory=dict, repr=False)

    def by_step(self) -> dict[int, StoredDecision]:
        """Decisions by step (decisions are only ever appended, so new ones are added as they come)."""
        self._index()
        return self._by_step

    def _index(self) -> None:
        for d in self.decisions[len(self._by_step):]:
            self._by_step[d.step] = d
            self._by_id[d.decision_id] = d

    @property
    def done(self) -> bool:
        return len(self.decisions) >= self.horizon + 1

    @property
    def policy_ref(self) -> str:
        return f"{self.policy_name}@{self.policy_version}"

    @property
    def nbytes(self) -> int:
        return estimate_bytes(self.space.size, len(self.space.fields), len(self.decisions))

    @property
    def current_mixture_id(self) -> str:
        return self.decisions[-1].decision_id if self.decisions else self.initial_mixture_id

    def mixture(self, mixture_id: str) -> Weights | None:
        if mixture_id == self.initial_mixture_id:
            return self.initial_weights
        self._index()
        d = self._by_id.get(mixture_id)
        return d.weights if d is not None else None

    def rebuild_history(self) -> History:
        h = History(space=self.space)
        for d in self.decisions:
            self._append(h, d)
        self.history = h
        return h

    def _append(self, h: History, d: StoredDecision) -> None:
        if h.weights and d.mixture_id is not None:
            trained = self.mixture(d.mixture_id)
            if trained is not None:
                h.weights[-1] = trained
        h.record_feedback(d.feedback)
        h.record_weights(d.weights)


def _owned(state: RunState | None, owner: str | None, run_id: str) -> RunState:
    """``state`` if it exists and belongs to ``owner`` (any owner when None); else 404, the same
    answer for another token's run as for no run, so ids of others' runs cannot be probed."""
    if state is None or (owner is not None and state.owner != owner):
        raise NotFound(f"run_id: no run {run_id!r} for this token")
    return state


class _Begun(NamedTuple):
    feedback: Feedback
    trained: Weights | None
    """The mixture the feedback says it trained on (None: the last one served)."""
    decider: MixingPolicy


class _Prepared(NamedTuple):
    decision: StoredDecision
    row: dict[str, Any] | None
    """The decision's row to insert; None when the decision is a recorded one (a replay)."""


def _weights_json(w: Weights) -> str:
    return json.dumps(list(w.values))


def _weights_of(text: str) -> Weights:
    return Weights(values=tuple(json.loads(text)))


class RunStore:
    def __init__(
        self, sessions: sessionmaker[Session], registry: PolicyRegistry, metrics: Metrics, *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        self.sessions = sessions
        self.registry = registry
        self.metrics = metrics
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, RunState] = OrderedDict()
        self._cached_bytes: dict[str, int] = {}
        self._cache_total = 0
        self._cache_lock = threading.Lock()
        self.engine = sessions.kw["bind"]
        sqlite = self.engine.dialect.name == "sqlite"
        self.inline = sqlite
        """Serve feedback on the event loop: an SQLite write is a local call of ~0.1 ms, cheaper
        than the two thread-pool hops a sync route costs. PostgreSQL writes go to the thread pool."""
        # SQLite has one writer; its busy handler sleeps in steps of up to 100 ms when writers
        # collide, so writers of this process queue on a lock instead.
        self.write_lock: threading.Lock | None = threading.Lock() if sqlite else None
        """This process's SQLite writers queue here (and the WAL checkpointer takes it to truncate)."""
        self.group = GroupCommit(self.engine, _INSERT_DECISION, self.write_lock)
        """Decision rows of one event-loop turn committed together (:meth:`post_feedback_grouped`)."""
        self.policies = PolicyVersions(sessions, registry, metrics, self.write_lock)
        """Which version of each policy is current, and the recorded artifacts (one truth in the database)."""

    # ----- create ------------------------------------------------------------------------------
    def create_run(self, *, owner: str, req: RunCreate, idempotency_key: str | None = None) -> tuple[RunState, bool]:
        """A new run on the current version of its policy (the database's truth, else this
        process's start-up choice); returns (run, replayed). 422 for an unknown policy or an
        objective outside a learned policy's trained range (the message names the range); a run
        whose domains do not fit a learned policy is served by the fallback, never refused.

        With an ``idempotency_key`` (the ``Idempotency-Key`` header) a retry of the same request
        answers with the run the first attempt created (``replayed``), on any replica; the same key
        with another body is a 409. ``req.initial_weights`` (a trainer that trained before it could
        create the run) becomes the initial mixture, served by ``trainer``."""
        request_hash = stable_hash(req.model_dump()) if idempotency_key is not None else None
        if idempotency_key is not None:
            earlier = self._created_with(owner, idempotency_key, request_hash)
            if earlier is not None:
                return earlier, True
        objective = Objective(**(req.objective.model_dump() if req.objective else {}))
        try:
            space = req.space()
            entry = self.policies.entry(req.policy, req.policy_version)
            decider = entry.policy(req.horizon, objective, space)
            # the policy's own first decision even when the trainer chose the initial mixture: a policy
            # that cannot act on this space is refused now, not at every feedback after a 201
            bounds = req.bounds()
            first = _bounded(decide(decider, space, History(space=space)), bounds)
            if req.initial_weights is not None:
                initial = Weights.from_raw([req.initial_weights[n] for n in space.names])
                served = TRAINER_CHOSE
            else:
                initial, served = first.weights, ServedBy.of(first)
        except ContractError as e:
            raise Unprocessable(str(e)) from None
        meta = {"setting_name": req.setting_name, "model": req.model, "seed": req.seed}
        state = RunState(
            id=uuid.uuid4().hex, owner=owner, created_at=time.time(), space=space, objective=objective,
            meta=meta, horizon=req.horizon, interval=req.interval, policy=entry, bounds=bounds,
            policy_name=entry.name, policy_version=entry.version,
            initial_mixture_id=uuid.uuid4().hex, initial_weights=initial, initial_served_by=served,
            decider=decider,
        )
        state.history = History(space=space)
        try:
            with self.write_lock or contextlib.nullcontext(), self.sessions() as s:
                s.add(RunRow(
                    id=state.id, owner=owner, created_at=state.created_at, space_json=space.model_dump_json(),
                    objective_json=objective.model_dump_json(), meta_json=json.dumps(meta),
                    horizon=req.horizon, interval=req.interval, policy_name=entry.name,
                    policy_version=entry.version, initial_mixture_id=state.initial_mixture_id,
                    initial_weights_json=_weights_json(initial), initial_served_by_json=served.to_json(),
                    idempotency_key=idempotency_key, request_hash=request_hash,
                    bounds_json=json.dumps(bounds.to_json()) if bounds is not None else None,
                ))
                s.commit()
        except IntegrityError:
            # the same key raced in on another replica (or thread): answer with the run it created
            earlier = self._created_with(owner, idempotency_key, request_hash) if idempotency_key else None
            if earlier is None:
                raise
            return earlier, True
        self._remember(state)
        self.metrics.runs_created.labels(entry.name).inc()
        self._count_fallback(state, served)
        return state, False

    def _created_with(self, owner: str, key: str, request_hash: str | None) -> RunState | None:
        """The run ``owner`` created with ``key`` (None: none yet); 409 when that request had another body."""
        with self.sessions() as s:
            row = s.execute(select(RunRow.id, RunRow.request_hash).where(
                RunRow.owner == owner, RunRow.idempotency_key == key)).first()
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise Conflict(
                f"Idempotency-Key: {key!r} was used for another run creation with a different body (run "
                f"{row.id}); a retry must resend the same body, a new run needs a new key")
        return self.get(owner=owner, run_id=row.id)

    def _count_fallback(self, state: RunState, served: ServedBy) -> None:
        if served.fallback is not None and served != TRAINER_CHOSE:
            kind = "space" if isinstance(state.decider, SpaceFallback) else "observation"
            self.metrics.fallbacks.labels(state.policy_ref, kind).inc()

    # ----- read --------------------------------------------------------------------------------
    def _remember(self, state: RunState) -> None:
        """Put ``state`` first in the cache (or update its size) and evict the least recently used
        runs until the estimate fits ``cache_bytes``; the run just used always stays."""
        with self._cache_lock:
            self._cache[state.id] = state
            self._cache.move_to_end(state.id)
            size = state.nbytes
            self._cache_total += size - self._cached_bytes.get(state.id, 0)
            self._cached_bytes[state.id] = size
            while self._cache_total > self.cache_bytes and len(self._cache) > 1:
                old, _ = self._cache.popitem(last=False)
                self._cache_total -= self._cached_bytes.pop(old)

    def forget(self, run_id: str) -> None:
        """Drop ``run_id`` from this process's cache (its next use reads the database)."""
        with self._cache_lock:
            self._cache.pop(run_id, None)
            self._cache_total -= self._cached_bytes.pop(run_id, 0)

    def cache_stats(self) -> dict[str, int]:
        """Runs in the cache, their estimated bytes and the bound."""
        with self._cache_lock:
            return {"runs": len(self._cache), "bytes": self._cache_total, "limit": self.cache_bytes}

    def _load(self, run_id: str, page: tuple[int, int] | None = None) -> RunState | None:
        """The run with all its decisions, or only ``page = (offset, limit)`` of them (by ``seq``)."""
        with self.sessions() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                return None
            q = select(DecisionRow).where(DecisionRow.run_id == run_id)
            if page is not None:
                q = q.where(DecisionRow.seq >= page[0], DecisionRow.seq < page[0] + page[1])
            rows = s.scalars(q.order_by(DecisionRow.seq)).all()
        space = DomainSpace.model_validate_json(row.space_json)
        state = RunState(
            id=row.id, owner=row.owner, created_at=row.created_at, space=space,
            objective=Objective.model_validate_json(row.objective_json), meta=json.loads(row.meta_json),
            horizon=row.horizon, interval=row.interval,
            policy=self.policies.resolve(row.policy_name, row.policy_version),
            bounds=ShareBounds.from_json(space, json.loads(row.bounds_json)) if row.bounds_json else None,
            policy_name=row.policy_name, policy_version=row.policy_version,
            initial_mixture_id=row.initial_mixture_id, initial_weights=_weights_of(row.initial_weights_json),
            initial_served_by=ServedBy.from_json(row.initial_served_by_json),
            decisions=[
                StoredDecision(
                    seq=d.seq, step=d.step, decision_id=d.decision_id, payload_hash=d.payload_hash,
                    feedback=Feedback.model_validate_json(d.feedback_json), mixture_id=d.mixture_id,
                    weights=_weights_of(d.weights_json), created_at=d.created_at,
                    served_by=ServedBy.from_json(d.served_by_json),
                )
                for d in rows
            ],
        )
        if page is None:
            state.rebuild_history()
        return state

    def get(self, *, owner: str | None, run_id: str) -> RunState:
        """The run ``run_id`` of ``owner`` (any owner when None); 404 for others' runs too."""
        return self._get(owner, run_id)[0]

    def _get(self, owner: str | None, run_id: str) -> tuple[RunState, bool]:
        """The run and whether it was read from the database just now (not from the cache, which
        another replica's or worker's writes may have left behind)."""
        with self._cache_lock:
            state = self._cache.get(run_id)
        loaded = state is None
        if state is None:
            state = self._load(run_id)
            if state is not None:
                self._remember(state)
        return _owned(state, owner, run_id), loaded

    def read(self, *, owner: str | None, run_id: str) -> RunState:
        """The run as the database holds it now, without touching the cache."""
        return _owned(self._load(run_id), owner, run_id)

    def read_page(self, *, owner: str | None, run_id: str, offset: int, limit: int) -> RunPage:
        """The run with decisions ``offset`` to ``offset + limit - 1`` only, from the database."""
        state = _owned(self._load(run_id, page=(offset, limit)), owner, run_id)
        with self.sessions() as s:
            total = s.scalar(select(func.count()).where(DecisionRow.run_id == run_id)) or 0
        return RunPage(state=state, total=int(total), offset=offset)

    def fresh(self, *, owner: str | None, run_id: str) -> RunState:
        """Like :meth:`get` but read from the database (another replica may have written)."""
        self.forget(run_id)
        return self.get(owner=owner, run_id=run_id)

    def list_runs(self, *, owner: str | None, limit: int, offset: int) -> tuple[list[tuple[RunRow, int]], int]:
        with self.sessions() as s:
            q = select(RunRow)
            if owner is not None:
                q = q.where(RunRow.owner == owner)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            runs = s.scalars(q.order_by(RunRow.created_at, RunRow.id).offset(offset).limit(limit)).all()
            counts = dict(
                s.execute(
                    select(DecisionRow.run_id, func.count()).where(DecisionRow.run_id.in_([r.id for r in runs]))
                    .group_by(DecisionRow.run_id)
                ).all()
            )
        return [(r, int(counts.get(r.id, 0))) for r in runs], int(total)

    def check_ids(self, *, owner: str | None, run_ids: list[str]) -> list[str]:
        """``run_ids`` (duplicates dropped, order kept) if each is a run of ``owner`` (any when None);
        NotFound names the first that is not."""
        wanted = list(dict.fromkeys(run_ids))
        with self.sessions() as s:
            q = select(RunRow.id).where(RunRow.id.in_(wanted))
            if owner is not None:
                q = q.where(RunRow.owner == owner)
            found = set(s.scalars(q).all())
        for run_id in wanted:
            if run_id not in found:
                _owned(None, owner, run_id)
        return wanted

    def run_ids(self, *, owner: str | None) -> list[str]:
        with self.sessions() as s:
            q = select(RunRow.id).order_by(RunRow.created_at, RunRow.id)
            if owner is not None:
                q = q.where(RunRow.owner == owner)
            return list(s.scalars(q).all())

    def active_runs(self) -> int:
        with self.sessions() as s:
            n = select(func.count()).where(DecisionRow.run_id == RunRow.id).scalar_subquery()
            return int(s.scalar(select(func.count()).select_from(RunRow).where(n <= RunRow.horizon)) or 0)

    # ----- feedback ----------------------------------------------------------------------------
    def post_feedback(self, *, owner: str, run_id: str, fb: FeedbackIn) -> tuple[RunState, StoredDecision, bool]:
        """Record ``fb`` and decide the next weights; returns (run, decision, replayed)."""
        payload_hash = stable_hash(fb.model_dump())
        state, loaded = self._get(owner, run_id)
        for _attempt in range(3):
            with state.lock:
                got = self._prepared(state, fb, payload_hash, cached=not loaded)
                if got is not None and got.row is not None and not self._write_one(state, got.row):
                    got = None
                if got is not None:
                    return state, self._recorded(state, got), got.row is None
            # the cached run is behind the database (another replica or worker wrote, or minted the
            # mixture the trainer names): read it again and apply the rules to what is there
            state, loaded = self.fresh(owner=owner, run_id=run_id), True
        raise Conflict(f"step: concurrent writers kept conflicting on run {run_id!r}; retry")

    async def post_feedback_grouped(self, *, owner: str, run_id: str,
                                    fb: FeedbackIn) -> tuple[RunState, StoredDecision, bool]:
        """:meth:`post_feedback` on the event loop with the new decision's row committed by
        :attr:`group` together with those of the other feedbacks of this loop turn (SQLite only).

        A run's feedbacks are decided one at a time (:attr:`RunState.busy`, on the loop in place
        of the thread lock): one that arrives while the run's previous one is being decided or
        written (a trainer's retry) waits for it first."""
        payload_hash = stable_hash(fb.model_dump())
        state, loaded = self._get(owner, run_id)
        for _attempt in range(3):
            while state.busy is not None:
                await asyncio.wait([state.busy])
                state, loaded = self._get(owner, run_id)  # a failed decision dropped it from the cache
            busy = state.busy = asyncio.get_running_loop().create_future()
            try:
                got = await self._prepared_async(state, fb, payload_hash, cached=not loaded)
                if got is not None and got.row is not None:
                    try:
                        await self.group.submit(got.row)
                    except IntegrityError:
                        self.forget(state.id)
                        got = None
                    except BaseException:
                        self.forget(state.id)
                        raise
            finally:
                state.busy = None
                busy.set_result(None)
            if got is not None:
                return state, self._recorded(state, got), got.row is None
            state, loaded = self.fresh(owner=owner, run_id=run_id), True
        raise Conflict(f"step: concurrent writers kept conflicting on run {run_id!r}; retry")

    def _prepare(self, state: RunState, fb: FeedbackIn, payload_hash: str,
                 cached: bool) -> _Prepared | _Begun | None:
        """The rules of the loop before the policy decides: the recorded decision of a replayed step
        (``row`` None), or what the policy needs for a new one (:class:`_Begun`); None when ``state``
        may be behind the database (a ``cached`` state that does not know the mixture ``fb``
        names). Once a new decision is in the run's history, its row must be committed or the run
        forgotten."""
        d = state.by_step().get(fb.step)
        if d is not None:
            if d.payload_hash != payload_hash:
                raise Conflict(
                    f"step: step {fb.step} of run {state.id} was already recorded with a different "
                    "payload; a retry must resend the same feedback"
                )
            return _Prepared(d, None)
        if state.decisions and fb.step <= state.decisions[-1].step:
            raise Conflict(
                f"step: {fb.step} does not come after the last recorded step {state.decisions[-1].step} "
                f"of run {state.id}; steps must strictly increase"
            )
        if state.decisions and fb.tokens_seen < state.decisions[-1].feedback.tokens_seen:
            last = state.decisions[-1]
            raise Conflict(
                f"tokens_seen: {fb.tokens_seen} at step {fb.step} is less than the {last.feedback.tokens_seen} "
                f"reported at step {last.step} of run {state.id}; tokens_seen counts the tokens trained on "
                "since the start of the run and never decreases"
            )
        if state.done:
            raise Conflict(
                f"step: run {state.id} is done: it took its horizon+1 = {state.horizon + 1} feedbacks"
            )
        feedback = Feedback(step=fb.step, tokens_seen=fb.tokens_seen, field_scores=fb.field_scores,
                            domain_losses=fb.domain_losses)
        try:
            feedback.check_space(state.space)
        except ContractError as e:
            raise Unprocessable(self._space_message(state.space, fb)) from e
        trained: Weights | None = None
        if fb.mixture_id is not None:
            trained = state.mixture(fb.mixture_id)
            if trained is None:
                if cached:
                    return None
                raise Conflict(f"mixture_id: {fb.mixture_id!r} is not a mixture of run {state.id}")
        return _Begun(feedback, trained, self._decider(state))

    def _prepared(self, state: RunState, fb: FeedbackIn, payload_hash: str, cached: bool) -> _Prepared | None:
        """:meth:`_prepare` with the decision made here (for a caller off the event loop)."""
        begun = self._prepare(state, fb, payload_hash, cached)
        if not isinstance(begun, _Begun):
            return begun
        with self._deciding(state):
            history = self._record_feedback(state, begun)
            return self._new_decision(state, fb, payload_hash, begun, decide(begun.decider, state.space, history))

    async def _prepared_async(self, state: RunState, fb: FeedbackIn, payload_hash: str,
                              cached: bool) -> _Prepared | None:
        """:meth:`_prepared` with the policy awaited (a learned policy batches its network calls)."""
        begun = self._prepare(state, fb, payload_hash, cached)
        if not isinstance(begun, _Begun):
            return begun
        with self._deciding(state):
            history = self._record_feedback(state, begun)
            decision = await decide_async(begun.decider, state.space, history)
            return self._new_decision(state, fb, payload_hash, begun, decision)

    @contextlib.contextmanager
    def _deciding(self, state: RunState) -> Iterator[None]:
        """The run's history holds the new feedback meanwhile: on any error the run is forgotten
        (read again next time), and a contract error is the caller's 422."""
        try:
            yield
        except ContractError as e:
            self.forget(state.id)
            raise Unprocessable(str(e)) from None
        except BaseException:
            self.forget(state.id)
            raise

    @staticmethod
    def _record_feedback(state: RunState, begun: _Begun) -> History:
        history = state.history if state.history is not None else state.rebuild_history()
        if history.weights and begun.trained is not None:
            history.weights[-1] = begun.trained
        history.record_feedback(begun.feedback)
        return history

    @staticmethod
    def _new_decision(state: RunState, fb: FeedbackIn, payload_hash: str, begun: _Begun,
                      decision: GuardedDecision) -> _Prepared:
        """The stored decision and its row, after the policy decided; the history gets its weights."""
        decision = _bounded(decision, state.bounds)
        weights = decision.weights
        assert state.history is not None
        state.history.record_weights(weights)
        feedback = begun.feedback
        stored = StoredDecision(
            seq=len(state.decisions), step=fb.step, decision_id=uuid.uuid4().hex, payload_hash=payload_hash,
            feedback=feedback, mixture_id=fb.mixture_id, weights=weights, created_at=time.time(),
            served_by=ServedBy.of(decision),
        )
        return _Prepared(stored, {
            "run_id": state.id, "seq": stored.seq, "step": stored.step, "decision_id": stored.decision_id,
            "payload_hash": payload_hash, "feedback_json": feedback.model_dump_json(),
            "mixture_id": fb.mixture_id, "weights_json": _weights_json(weights),
            "created_at": stored.created_at, "served_by_json": stored.served_by.to_json(),
        })

    def _write_one(self, state: RunState, row: dict[str, Any]) -> bool:
        """Commit one decision's row; False (the run forgotten) when another writer took its place."""
        try:
            # A Core insert of a cached statement on a plain connection: the ORM's unit of work and
            # statement building cost several times the write itself on this hot path.
            with self.write_lock or contextlib.nullcontext(), self.engine.begin() as conn:
                conn.execute(_INSERT_DECISION, row)
        except IntegrityError:
            self.forget(state.id)
            return False
        except BaseException:
            self.forget(state.id)
            raise
        return True

    def _recorded(self, state: RunState, got: _Prepared) -> StoredDecision:
        """The decision, counted and added to the cached run once its row is committed."""
        if got.row is None:
            self.metrics.replays.inc()
            return got.decision
        state.decisions.append(got.decision)
        self._remember(state)  # its size grew
        self.metrics.decisions.labels(state.policy_name, state.policy_version).inc()
        self._count_fallback(state, got.decision.served_by)
        return got.decision

    def _decider(self, state: RunState) -> MixingPolicy:
        """The run's policy (built on first use after a restart or a reload, with the stored
        objective); 503 when its artifact cannot be read here."""
        if state.decider is not None:
            return state.decider
        if state.policy is None:
            state.policy = self.policies.recorded(state.policy_name, state.policy_version)
            if state.policy is None:
                raise Conflict(
                    f"policy: run {state.id} is pinned to {state.policy_ref}, which this service has not "
                    "loaded and the database does not record; load that artifact again"
                )
        try:
            state.decider = state.policy.policy(state.horizon, state.objective, state.space)
        except ContractError as e:  # the card of a pinned version cannot change; guard anyway
            raise Conflict(f"policy: run {state.id} cannot be served by {state.policy_ref}: {e}") from None
        return state.decider

    @staticmethod
    def _space_message(space: DomainSpace, fb: FeedbackIn) -> str:
        parts = []
        for what, got, want in (
            ("field_scores", set(fb.field_scores), set(space.fields)),
            ("domain_losses", set(fb.domain_losses), set(space.names)),
        ):
            missing, unknown = sorted(want - got), sorted(got - want)
            if missing:
                parts.append(f"{what}: missing {missing}")
            if unknown:
                parts.append(f"{what}: unknown {unknown}")
        return "; ".join(parts) + f" (the run's fields are {list(space.fields)}, domains {list(space.names)})"

