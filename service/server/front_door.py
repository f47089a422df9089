"""The front door: the one request trainers send in bulk, answered before Starlette's stack.

A trainer's ``POST /v1/runs/{run_id}/feedback`` is almost every request a busy service sees. Through
the ordinary stack it passes six middleware layers (the app's four, Starlette's two error layers and
FastAPI's), the router's regex scan and FastAPI's per-request machinery (dependency solving, exit
stacks, revalidating and serialising the answer), which at saturation cost about as much CPU as the
decision itself (``bench/service_load.py``, py-spy). :class:`MixingApp` answers a feedback that is
plainly well-formed itself and hands *everything else*, unread body included, to that stack, so
every refusal (401; 413, 414, 431 naming the limit; 422 naming the field and value; 400 for bytes
that are not UTF-8) is the one FastAPI gives.

What the front door does, it does as the stack would: the same limits (:mod:`.limits`, checked
first: a request over one goes to the stack, which refuses it), the same validation
(``json.loads`` then ``FeedbackIn.model_validate(..., from_attributes=True)``, what FastAPI runs),
the same handler (:func:`~mixagent.service.server.api.answer_feedback`), the app's exception
handlers for its errors (404, 409, 503, 500), and the same request counter and latency histogram
(method, route template, status). ``tests/service/server/test_front_door.py`` checks the bytes of
every answer both ways. A deployment under a ``root_path`` takes the ordinary stack.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from mixagent.service.server.api import answer_feedback
from mixagent.service.server.deps import Caller, caller_of
from mixagent.service.server.limits import request_limit_problem
from mixagent.service.server.schemas import FeedbackIn

__all__ = ["MixingApp", "FEEDBACK_ROUTE", "MAX_CALLERS", "lean_request"]

log = logging.getLogger(__name__)

FEEDBACK_ROUTE = "/v1/runs/{run_id}/feedback"
_FEEDBACK_PATH = re.compile(r"/v1/runs/([^/]+)/feedback")
"""The route's template as Starlette compiles it (a path parameter is ``[^/]+``)."""

MAX_CALLERS = 1024
"""Valid tokens whose caller the front door remembers (more: it starts over)."""


def lean_request(state: Any, scope: Scope, message: Message, run_id: str) -> tuple[str, FeedbackIn] | None:
    """(principal, feedback) of a feedback the front door may answer, else None: the whole body in
    one message, ``Content-Type: application/json``, a valid bearer token, a ``run_id`` of 1 to 64
    characters, and a body that ``json.loads`` and ``FeedbackIn`` accept exactly as FastAPI would."""
    if message["type"] != "http.request" or message.get("more_body", False):
        return None
    authorization = content_type = None
    for name, value in scope["headers"]:  # the first of a repeated header counts, as in Starlette's Headers.get
        if name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"content-type" and content_type is None:
            content_type = value
    if content_type != b"application/json" or authorization is None:
        return None
    scheme, token = get_authorization_scheme_param(authorization.decode("latin-1"))
    if scheme.lower() != "bearer" or not token or not 1 <= len(run_id) <= 64:
        return None
    callers: dict[str, Caller] | None = getattr(state, "lean_callers", None)
    if callers is None:
        callers = state.lean_callers = {}
    caller = callers.get(token)
    if caller is None:
        caller = caller_of(state.settings, token)
        if caller is None:
            return None
        if len(callers) >= MAX_CALLERS:
            callers.clear()
        callers[token] = caller  # valid tokens only: the settings are fixed for the app's life
    try:
        body = FeedbackIn.model_validate(json.loads(message.get("body", b"")), from_attributes=True)
    except (ValueError, ValidationError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors;
        return None  # a body nested past the interpreter's depth is the stack's to refuse (422), as is any other
    return caller.principal, body


def _within_limits(scope: Scope, max_body: int) -> bool:
    """The checks of :class:`~.limits.RequestLimitMiddleware` and the declared length of
    :class:`~.limits.BodyLimitMiddleware` (the body itself is measured once read)."""
    if request_limit_problem(scope) is not None:
        return False
    for name, value in scope["headers"]:  # every Content-Length, as the body limit reads them
        if name == b"content-length" and not (value.isdigit() and int(value) <= max_body):
            return False
    return True


class MixingApp(FastAPI):
    """The service's app: FastAPI, with the front door for well-formed feedback (module docstring).
    ``app.state.lean_feedback = False`` sends every request through the ordinary stack."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
                and not self.root_path and getattr(self.state, "lean_feedback", True)):
            match = _FEEDBACK_PATH.fullmatch(scope["path"])
            if match is not None and _within_limits(scope, self.state.settings.max_body_bytes):
                await self._feedback(scope, receive, send, match.group(1))
                return
        await super().__call__(scope, receive, send)

    async def _feedback(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        t0 = time.perf_counter()
        message = await receive()
        scope["app"] = self
        lean = None
        if len(message.get("body", b"")) <= self.state.settings.max_body_bytes:
            lean = lean_request(self.state, scope, message, run_id)
        if lean is None:  # the ordinary stack, the message replayed: its answer is FastAPI's
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return message
                return await receive()

            await super().__call__(scope, replay, send)
            return
        principal, body = lean
        status = 500
        try:
            try:
                decision = await answer_feedback(self.state.store, principal, run_id, body)
            except Exception as exc:  # the app's handler answers it, as Starlette's error layers would
                response, unexpected = await self._handled(scope, receive, exc)
                status = response.status_code
                await response(scope, receive, send)
                if unexpected:  # as ServerErrorMiddleware does: answered, then raised for the server's log
                    raise
                return
            content = decision.model_dump_json().encode()
            status = 200
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(content)).encode()),
                                    (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": content})
        finally:
            metrics = self.state.metrics
            labels = ("POST", FEEDBACK_ROUTE, str(status))
            metrics.requests.labels(*labels).inc()
            metrics.latency.labels(*labels).observe(time.perf_counter() - t0)

    async def _handled(self, scope: Scope, receive: Receive, exc: Exception) -> tuple[Response, bool]:
        """The response of the app's exception handler for ``exc`` (the nearest class in its MRO), and
        whether that was the handler of last resort (``Exception``, which Starlette's outermost layer
        runs and then re-raises); with none, the exception propagates, as it would through the stack."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                break
        else:
            raise exc
        request = Request(scope, receive)
        if inspect.iscoroutinefunction(handler):
            response = await handler(request, exc)
        else:
            response = await run_in_threadpool(handler, request, exc)
        return response, cls is Exception
