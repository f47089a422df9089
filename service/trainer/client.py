"""The trainer-side client of the mixing service (httpx; no torch).

```
MixagentError                      anything this client raises
 ├── ServiceUnavailable            no answer after every retry (connect/read errors, timeouts, 5xx, 429)
 └── RequestRejected               the service answered 4xx; ``status`` and ``detail`` say why
      ├── AuthError                401 / 403
      ├── RunNotFound              404
      └── StepConflict             409 (step out of order, different payload for a recorded step)
```

Feedback posts are retried with exponential backoff and resend the *same* step and payload, which
is safe because the service is idempotent per (run, step): a retry of a step the service already
recorded returns the stored decision. :class:`MixingRun` is what a training loop holds: it keeps the
current weights, and when the service cannot be reached it keeps training on the last weights and
logs that it did.

Usage::

    with MixingClient("http://127.0.0.1:8000", token="...") as client:
        run = client.start_run(space, horizon=16, interval=40)
        sampler.set_weights(run.weights)
        for each evaluation:
            sampler.set_weights(run.report(feedback))
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from mixagent.trajectories.contract import DomainSpace, Feedback

__all__ = [
    "MixagentError",
    "ServiceUnavailable",
    "RequestRejected",
    "AuthError",
    "RunNotFound",
    "StepConflict",
    "Decision",
    "MixingClient",
    "MixingRun",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
RETRY_STATUS = frozenset({429, 502, 503, 504})


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
class Decision:
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
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries on transport errors and 429/5xx; raise typed errors for 4xx."""
        last = ""
        for attempt in range(self.retries + 1):
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
            f"{method} {self._http.base_url}{path}: no answer after {self.retries + 1} attempts ({last})")

    # ----- API ----------------------------------------------------------------------------------
    def create_run(
        self,
        space: DomainSpace,
        *,
        horizon: int,
        interval: int,
        policy: str | None = None,
        policy_version: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Create a run (``extra``: ``setting_name``, ``model``, ``seed``, ``objective``)."""
        body: dict[str, Any] = {
            "domains": [d.model_dump() for d in space.domains],
            "horizon": horizon,
            "interval": interval,
            **extra,
        }
        if policy is not None:
            body["policy"] = policy
        if policy_version is not None:
            body["policy_version"] = policy_version
        # Not retried on a lost answer: a second POST would create a second run.
        return self._request("POST", "/v1/runs", json=body).json()  # type: ignore[no-any-return]

    def post_feedback(self, run_id: str, feedback: Feedback, mixture_id: str | None = None) -> Decision:
        """Report ``feedback``; retried (same step, same payload) until answered."""
        body: dict[str, Any] = feedback.model_dump()
        if mixture_id is not None:
            body["mixture_id"] = mixture_id
        data = self._request("POST", f"/v1/runs/{run_id}/feedback", json=body).json()
        return Decision(**{k: data.get(k) if k == "served_by" else data[k] for k in Decision.__dataclass_fields__})

    def get_run(self, run_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """The run with history entries ``offset`` to ``offset + limit - 1`` (at most 500 a page;
        ``next_offset`` says where the next page starts, null on the last)."""
        params = {"offset": offset, "limit": limit}
        return self._request("GET", f"/v1/runs/{run_id}", params=params).json()  # type: ignore[no-any-return]

    def policies(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/policies").json()["data"]  # type: ignore[no-any-return]

    def export_trajectories(self, run_ids: list[str] | None = None) -> list[str]:
        """The trajectory JSON lines of this token's runs."""
        params = {"run_id": run_ids} if run_ids else None
        return [ln for ln in self._request("GET", "/v1/trajectories", params=params).text.splitlines() if ln]

    def start_run(self, space: DomainSpace, *, horizon: int, interval: int, **kwargs: Any) -> MixingRun:
        """Create a run and return the handle a training loop keeps."""
        created = self.create_run(space, horizon=horizon, interval=interval, **kwargs)
        return MixingRun(self, space, created)


class MixingRun:
    """One run from the trainer's side: the current weights and the feedback loop.

    :meth:`report` posts a feedback and returns the weights to train on next. If the service is
    unreachable (after the client's retries) it logs a warning and returns the last weights, so
    training goes on; the next report says which mixture was really trained on (``mixture_id``),
    so the service's history stays truthful.
    """

    def __init__(self, client: MixingClient, space: DomainSpace, created: Mapping[str, Any]):
        self.client = client
        self.space = space
        self.run_id: str = created["run_id"]
        self.policy: str = created["policy"]
        self.policy_version: str = created["policy_version"]
        self.mixture_id: str = created["mixture_id"]
        self._weights: dict[str, float] = dict(created["weights"])
        self.served_by: dict[str, Any] | None = created.get("served_by")
        """Who chose the current weights (the run's policy, or its fallback baseline and why)."""
        self.done = False
        self.missed: list[int] = []

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def weights_array(self) -> list[float]:
        """The current weights in the order of ``space.names``."""
        return [self._weights[n] for n in self.space.names]

    def report(self, feedback: Feedback) -> dict[str, float]:
        try:
            decision = self.client.post_feedback(self.run_id, feedback, mixture_id=self.mixture_id)
        except ServiceUnavailable as e:
            self.missed.append(feedback.step)
            log.warning(
                "mixagent service unreachable at step %d (%s); keeping the last weights (mixture %s)",
                feedback.step, e, self.mixture_id,
            )
            return self.weights
        self._weights = dict(decision.weights)
        self.served_by = decision.served_by
        self.mixture_id = decision.decision_id
        self.done = decision.done
        return self.weights
