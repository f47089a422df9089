"""The trainer-side client of the mixing service (httpx; no torch).

```
MixagentError                      anything this client raises
 ├── ServiceUnavailable            no answer after every retry (connect/read errors, timeouts, 5xx, 429)
 └── RequestRejected               the service answered 4xx; ``status`` and ``detail`` say why
      ├── AuthError                401 / 403
      ├── RunNotFound              404
      └── StepConflict             409 (step out of order, different payload for a recorded step)
```

Every request is safe to retry, and is retried with exponential backoff: a feedback resends the
*same* step and payload (the service is idempotent per (run, step): a retry of a recorded step
returns the stored decision), and a run creation resends the same body with the same
``Idempotency-Key`` (a retry answers with the run the first attempt created, never a second run).

:class:`MixingRun` is what a training loop holds. Its :meth:`~MixingRun.report` never blocks
training on a service that does not answer: feedbacks go out from a background thread, in order,
and ``report`` waits for the answer at most ``report_wait_s`` (5 s) while the service answers, and
only for one immediate retry (at most 0.2 s) once it has stopped answering; meanwhile training goes
on with the last weights, and the backlog is delivered, each feedback naming the mixture really
trained on, when the service is back.
A run can even start before the service answers (:meth:`MixingClient.start_run`): it trains on the
priors and attaches when the service answers. When the run is done (``horizon + 1`` feedbacks:
``horizon`` counts decisions, not optimizer steps) further reports are not sent and training goes on
with the last weights.

Usage::

    with MixingClient("http://127.0.0.1:8000", token="...") as client:
        run = client.start_run(space, horizon=16, interval=40)   # 17 evaluations: step 0, then every 40 steps
        sampler.set_weights(run.weights)
        for each evaluation:
            sampler.set_weights(run.report(feedback))
        run.close()                                               # deliver what is left (bounded)
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

from mixagent.trajectories.bounds import ShareBounds
from mixagent.trajectories.contract import DomainSpace, Feedback, Weights

__all__ = [
    "MixagentError",
    "ServiceUnavailable",
    "RequestRejected",
    "AuthError",
    "RunNotFound",
    "StepConflict",
    "ServedDecision",
    "MixingClient",
    "MixingRun",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
RETRY_STATUS = frozenset({429, 502, 503, 504})
DEFAULT_REPORT_WAIT_S = 5.0
"""The longest :meth:`MixingRun.report` waits for a decision while the service answers."""
IDLE_EXIT_S = 30.0
"""A sender thread with nothing to send for this long ends (the next report starts another)."""
DOWN_PROBE_S = 0.2
"""The longest :meth:`MixingRun.report` waits while the service is known not to answer (one immediate
retry, which finds it back or fails: a refused connection in about a millisecond)."""


class MixagentError(Exception):
    """Base of every error this client raises."""


class ServiceUnavailable(MixagentError):
    """The service did not answer usefully after all retries."""


class RequestRejected(MixagentError):
    """The service refused the request (4xx)."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class AuthError(RequestRejected):
    pass


class RunNotFound(RequestRejected):
    pass


class StepConflict(RequestRejected):
    pass


_REJECTIONS: dict[int, type[RequestRejected]] = {401: AuthError, 403: AuthError, 404: RunNotFound, 409: StepConflict}


@dataclass(frozen=True)
class ServedDecision:
    """The service's answer to one feedback."""

    run_id: str
    decision_id: str
    step: int
    weights: dict[str, float]
    policy: str
    policy_version: str
    done: bool
    replayed: bool
    served_by: dict[str, Any] | None = None
    """``{"policy": name@version, "fallback": None or a baseline, "reason": ...}`` (None from a
    service older than this field)."""
    warnings: list[str] = field(default_factory=list)
    """What the service accepted but finds less useful (a first feedback after step 0,
    ``tokens_seen`` stuck at 0); logged once each by :class:`MixingRun`."""

class MixingClient:
    """HTTP client of the mixing service. ``transport`` lets tests route requests anywhere."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MixingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, attempts: int | None = None, **kwargs: Any) -> httpx.Response:
        """Send with retries on transport errors and 429/5xx (``attempts`` in all, default
        ``retries + 1``); raise typed errors for 4xx."""
        last = ""
        attempts = self.retries + 1 if attempts is None else attempts
        for attempt in range(attempts):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                r = self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                log.debug("mixagent %s %s failed (attempt %d): %s", method, path, attempt + 1, last)
                continue
            if r.status_code in RETRY_STATUS or r.status_code >= 500:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code >= 400:
                try:
                    detail = str(r.json().get("detail", r.text))
                except ValueError:
                    detail = r.text
                raise _REJECTIONS.get(r.status_code, RequestRejected)(r.status_code, detail)
            return r
        raise ServiceUnavailable(
            f"{method} {self._http.base_url}{path}: no answer after {attempts} attempt{'s' * (attempts != 1)} ({last})")

    # ----- API ----------------------------------------------------------------------------------
    def create_run(
        self,
        space: DomainSpace,
        *,
        horizon: int,
        interval: int,
        policy: str | None = None,
        policy_version: str | None = None,
        idempotency_key: str | None = None,
        attempts: int | None = None,
        bounds: ShareBounds | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Create a run (``extra``: ``setting_name``, ``model``, ``seed``, ``objective``,
        ``initial_weights``); ``bounds``: the smallest and largest share per domain that every
        decision of the run meets (the service projects each policy's mixture onto them).
        ``horizon`` counts *decisions*: the run takes ``horizon + 1`` feedbacks (step 0, then one
        per stage), not optimizer steps.

        Retried like every request, with one ``Idempotency-Key`` (a fresh UUID unless given) on
        every attempt: an attempt whose answer was lost has created the run, and the retry answers
        with that run (``replayed``) instead of creating a second one."""
        body: dict[str, Any] = {
            "domains": [{**d.model_dump(), **({"min_share": bounds.min_share.get(d.name),
                                                "max_share": bounds.max_share.get(d.name)} if bounds else {})}
                        for d in space.domains],
            "horizon": horizon,
            "interval": interval,
            **extra,
        }
        if policy is not None:
            body["policy"] = policy
        if policy_version is not None:
            body["policy_version"] = policy_version
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return cast(dict[str, Any], self._request("POST", "/v1/runs", json=body, headers=headers,
                                                   attempts=attempts).json())

    def post_feedback(self, run_id: str, feedback: Feedback, mixture_id: str | None = None, *,
                      attempts: int | None = None) -> ServedDecision:
        """Report ``feedback``; retried (same step, same payload) until answered."""
        body: dict[str, Any] = feedback.model_dump()
        if mixture_id is not None:
            body["mixture_id"] = mixture_id
        data = self._request("POST", f"/v1/runs/{run_id}/feedback", json=body, attempts=attempts).json()
        optional: dict[str, Any] = {"served_by": None, "warnings": []}
        return ServedDecision(**{k: data.get(k, optional[k]) if k in optional else data[k]
                           for k in ServedDecision.__dataclass_fields__})

    def get_run(self, run_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """The run with history entries ``offset`` to ``offset + limit - 1`` (at most 500 a page;
        ``next_offset`` says where the next page starts, null on the last)."""
        params = {"offset": offset, "limit": limit}
        return cast(dict[str, Any], self._request("GET", f"/v1/runs/{run_id}", params=params).json())

    def policies(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._request("GET", "/v1/policies").json()["data"])

    def export_trajectories(self, run_ids: list[str] | None = None) -> list[str]:
        """The trajectory JSON lines of this token's runs."""
        params = {"run_id": run_ids} if run_ids else None
        return [ln for ln in self._request("GET", "/v1/trajectories", params=params).text.splitlines() if ln]

    def start_run(
        self, space: DomainSpace, *, horizon: int, interval: int, offline_start: bool = True,
        report_wait_s: float = DEFAULT_REPORT_WAIT_S, **kwargs: Any,
    ) -> MixingRun:
        """Create a run and return the handle a training loop keeps.

        ``horizon`` counts decisions, not optimizer steps: a run takes ``horizon + 1`` feedbacks
        (the step-0 evaluation, then one after each stage); size it to the number of evaluations
        of the training minus one. When the service does not answer, ``offline_start`` (default)
        returns a run that trains on the domains' priors and creates itself on the service as soon
        as it answers (its first feedbacks are then delivered in order, saying they trained on the
        priors); ``offline_start=False`` raises :class:`ServiceUnavailable` instead."""
        key = uuid.uuid4().hex
        try:
            created = self.create_run(space, horizon=horizon, interval=interval, idempotency_key=key, **kwargs)
        except ServiceUnavailable as e:
            if not offline_start:
                raise
            log.warning("mixagent service unreachable at the start (%s): training starts on the priors; the run is "
                        "created when the service answers", e)
            return MixingRun(self, space, None, report_wait_s=report_wait_s,
                             create={"horizon": horizon, "interval": interval, **kwargs,
                                     "idempotency_key": f"{key}-offline"})
        return MixingRun(self, space, created, report_wait_s=report_wait_s)


@dataclass
class _Pending:
    feedback: Feedback
    trained_on: str | None
    """The mixture trained on since the previous feedback (None: the initial one, whose id a run
    started offline learns only when it is created)."""


class MixingRun:
    """One run from the trainer's side: the current weights and the feedback loop.

    :meth:`report` queues a feedback for a background sender and returns the weights to train on
    next: the decision, if it comes within ``report_wait_s``, else the last weights (and the service
    is marked unreachable, so later reports do not wait until it answers again). Feedbacks are
    delivered in order, each saying which mixture was really trained on (``mixture_id``), so the
    service's history stays truthful however late they arrive. A run started offline
    (``created`` None) trains on the priors and creates itself, with those as its initial mixture,
    when the service answers. A done run (``horizon + 1`` feedbacks) sends nothing more.
    """

    def __init__(self, client: MixingClient, space: DomainSpace, created: Mapping[str, Any] | None, *,
                 report_wait_s: float = DEFAULT_REPORT_WAIT_S, create: Mapping[str, Any] | None = None):
        self.client = client
        self.space = space
        self.report_wait_s = report_wait_s
        self.run_id: str | None = None
        self.policy: str | None = None
        self.policy_version: str | None = None
        self.initial_mixture_id: str | None = None
        self.mixture_id: str | None = None
        """The id of the weights :meth:`report` last returned (None: the priors of a run started offline)."""
        self._create = dict(create or {})
        self._weights: dict[str, float] = self._weights_of_priors()
        self.served_by: dict[str, Any] | None = None
        """Who chose the current weights (the run's policy, or its fallback baseline and why)."""
        self.done = False
        self.missed: list[int] = []
        """Steps whose decision did not come in time (their feedback is still delivered)."""
        self.horizon: int | None = self._create.get("horizon")
        """Decisions of the run: it takes ``horizon + 1`` feedbacks (not optimizer steps)."""
        self.interval: int | None = self._create.get("interval")
        """Optimizer steps per decision."""
        self._cond = threading.Condition()
        self._outbox: deque[_Pending] = deque()
        self._answers: dict[int, ServedDecision] = {}
        self._down = False
        self._failures = 0
        self._kick = False
        self._error: MixagentError | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._said: set[str] = set()
        if created is not None:
            self._attached(created)

    def _attached(self, created: Mapping[str, Any]) -> None:
        self.run_id = created["run_id"]
        self.policy = created["policy"]
        self.policy_version = created["policy_version"]
        self.initial_mixture_id = created["mixture_id"]
        self.horizon = created.get("horizon", self.horizon)
        self.interval = created.get("interval", self.interval)
        if self.mixture_id is None and not self._create:  # created at the start: train on its initial mixture
            self.mixture_id = created["mixture_id"]
            self._weights = dict(created["weights"])
            self.served_by = created.get("served_by")

    @property
    def attached(self) -> bool:
        """Whether the run exists on the service (False: started offline, not created yet)."""
        return self.run_id is not None

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def weights_array(self) -> list[float]:
        """The current weights in the order of ``space.names``."""
        return [self._weights[n] for n in self.space.names]

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    # ----- the trainer's side -------------------------------------------------------------------
    def report(self, feedback: Feedback) -> dict[str, float]:
        """Queue ``feedback`` and return the weights to train on until the next one (see the class)."""
        with self._cond:
            self._raise_error()
            if self.done:
                self._say_once("done", "mixagent run %s is done: it took its horizon + 1 feedbacks (horizon counts "
                               "decisions, not optimizer steps); step %d and later are not sent and training goes "
                               "on with the last weights. Start the run with a horizon of (evaluations - 1) to "
                               "cover the whole training", self.run_id, feedback.step)
                return self.weights
            self._outbox.append(_Pending(feedback, self.mixture_id))
            self._answers.clear()  # answers to earlier feedbacks came too late to be trained on
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, name="mixagent-report", daemon=True)
                self._thread.start()
            # Wait for this step's decision, but not past the first failed attempt after queueing it:
            # while the service answers, up to report_wait_s; while it does not, only the sender's
            # immediate retry (a refused connection fails in a millisecond), at most DOWN_PROBE_S.
            failures = self._failures
            self._kick = True
            self._cond.notify_all()
            deadline = time.monotonic() + (min(DOWN_PROBE_S, self.report_wait_s) if self._down else self.report_wait_s)
            while (feedback.step not in self._answers and self._error is None and self._failures == failures
                   and not self.done and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
            decision = self._answers.pop(feedback.step, None)
            self._raise_error()
        if decision is None:
            self.missed.append(feedback.step)
            log.warning("mixagent service %s at step %d; keeping the last weights (mixture %s); the feedback is "
                        "delivered when it answers", "unreachable" if self._down else "did not answer in time",
                        feedback.step, self.mixture_id or "priors")
            return self.weights
        self._weights = dict(decision.weights)
        self.served_by = decision.served_by
        self.mixture_id = decision.decision_id
        return self.weights

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued feedback is delivered (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outbox and self._error is None and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return not self._outbox

    def close(self, timeout_s: float = 10.0) -> bool:
        """Deliver what is queued (at most ``timeout_s``), then stop the sender; True if nothing was left."""
        delivered = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=self.client.max_backoff_s + 10)
        if not delivered:
            log.warning("mixagent run %s: %d feedback(s) not delivered", self.run_id, len(self._outbox))
        return delivered

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # ----- the background sender ----------------------------------------------------------------
    def _send_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._outbox or self._closed, timeout=IDLE_EXIT_S) or self._closed:
                    self._thread = None  # idle (or closed): the next report starts a new sender
                    return
                item = self._outbox[0]
            try:
                self._deliver(item)
                failures = 0
            except ServiceUnavailable as e:
                with self._cond:
                    if not self._down:
                        log.warning("mixagent service unreachable (%s); reports go on in the background", e)
                    self._down = True
                    self._failures += 1
                    self._kick = False
                    self._cond.notify_all()
                    delay = min(self.client.max_backoff_s, self.client.backoff_s * 2 ** failures)
                    failures += 1
                    # back off, but retry at once when a new report comes (it may find the service back)
                    self._cond.wait_for(lambda: self._closed or self._kick, timeout=delay * (0.5 + random.random() / 2))
            except MixagentError as e:  # a rejection: the trainer's thread raises it at its next report
                with self._cond:
                    self._error = e
                    self._outbox.clear()
                    self._cond.notify_all()

    def _deliver(self, item: _Pending) -> None:
        """One attempt at delivering the oldest queued feedback (creating the run first if needed)."""
        if self.run_id is None:
            created = self.client.create_run(self.space, initial_weights=self._weights_of_priors(),
                                             attempts=1, **self._create)
            with self._cond:
                self._attached(created)
            log.warning("mixagent run %s created (the service answered); delivering the queued feedbacks",
                        self.run_id)
        assert self.run_id is not None
        try:
            decision = self.client.post_feedback(self.run_id, item.feedback,
                                                 mixture_id=item.trained_on or self.initial_mixture_id, attempts=1)
        except StepConflict:
            if not self._server_says_done():
                raise
            with self._cond:
                self.done = True
                self._outbox.clear()
                self._cond.notify_all()
            return
        for w in decision.warnings:
            self._say_once(w.split(":")[0], "mixagent service: %s", w)
        with self._cond:
            self._outbox.popleft()
            self._answers[item.feedback.step] = decision
            self._down = False
            self.done = self.done or decision.done
            self._cond.notify_all()

    def _weights_of_priors(self) -> dict[str, float]:
        """What a run started offline trains on: the priors, projected onto the run's share bounds."""
        bounds: ShareBounds | None = self._create.get("bounds")
        if bounds is None:
            return dict(zip(self.space.names, self.space.priors().tolist(), strict=True))
        return bounds.project(Weights.from_raw(self.space.priors())).as_dict(self.space)

    def _server_says_done(self) -> bool:
        assert self.run_id is not None
        try:
            return bool(self.client.get_run(self.run_id, limit=1)["done"])
        except MixagentError:
            return False
