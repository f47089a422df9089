"""Errors of the service and how they reach the wire: every failure is a JSON ``{"detail": ...}``
whose message names the field and the value, with a 4xx status; nothing a client sends yields a 5xx.

```
ServiceError                  -> its ``status``
 ├── NotFound                 404  unknown run / policy, or a run of another token
 ├── Conflict                 409  step out of order, retried step with another payload, run done
 ├── Unprocessable            422  input that is well-formed JSON but breaks the contract
 └── Forbidden                403  a non-admin token on an admin route
RequestValidationError        422  schema violations and malformed JSON (FastAPI)
BodyLimitMiddleware           413  bodies over ``max_body_bytes``
```
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ServiceError",
    "NotFound",
    "Conflict",
    "Unprocessable",
    "Forbidden",
    "Unauthorized",
    "install_error_handlers",
    "BodyLimitMiddleware",
    "format_validation_errors",
]

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Unprocessable(ServiceError):
    status = 422


class Forbidden(ServiceError):
    status = 403


class Unauthorized(ServiceError):
    status = 401


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_errors(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """One readable line (``body.steps: Input should be ... (got 'x')``) and a JSON-safe list."""
    items = []
    lines = []
    for e in errors:
        loc = [str(x) if not isinstance(x, int) else x for x in e.get("loc", ())]
        where = ".".join(str(x) for x in loc) or "request"
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx", {}) or {}
            msg = f"malformed JSON: {ctx.get('error', msg)}"
            line = f"{where}: {msg}"
        elif "input" in e and e.get("type") not in ("missing",):
            line = f"{where}: {msg} (got {_short(e['input'])})"
        else:
            line = f"{where}: {msg}"
        lines.append(line)
        items.append({"loc": [str(x) for x in loc], "msg": msg, "type": str(e.get("type", ""))})
    return "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else ""), items


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail, items = format_validation_errors(list(exc.errors()))
        return JSONResponse({"detail": detail, "errors": items}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8)
            return JSONResponse({"detail": f"body: malformed JSON ({exc.detail})"}, status_code=422)
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


class BodyLimitMiddleware:
    """Reject request bodies larger than ``limit`` bytes with 413, before any parsing.

    The body is read up front (bounded by the limit) and replayed to the app, so a chunked upload
    without Content-Length is bounded too.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def _reject(self, send: Send, size: str) -> None:
        body = (
            f'{{"detail":"request body is {size} bytes; the limit is {self.limit} bytes '
            f'(MIXAGENT_MAX_BODY_BYTES)"}}'
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    await self._reject(send, str(declared))
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._reject(send, f"more than {self.limit}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
