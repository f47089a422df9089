"""The size limits of a request, each set on purpose, and the middleware that enforces them.

| what | limit | answer | set by |
|---|---|---|---|
| path + query string | 8 KiB (``MAX_URL_BYTES``) | 414 JSON | :class:`RequestLimitMiddleware` |
| header lines | 64 (``MAX_HEADERS``) | 431 JSON | :class:`RequestLimitMiddleware` |
| header names + values | 16 KiB (``MAX_HEADER_BYTES``) | 431 JSON | :class:`RequestLimitMiddleware` |
| body | 256 KiB (``MIXAGENT_MAX_BODY_BYTES``, 1 KiB to 64 MiB) | 413 JSON | :class:`BodyLimitMiddleware` |
| request line (httptools), head (h11) | 64 KiB (``SERVER_MAX_HEAD_BYTES``) | 400 ``text/plain``, closed | uvicorn |

The app's limits sit well below the HTTP server's, so every request a client can reasonably send
gets a JSON answer naming the limit; only a request line of 64 KiB or more is refused by uvicorn
itself. The largest legitimate body, a feedback of 256 domains and 32 fields with 64-character names,
is about 25 KiB; a run creation with 256 domains about 30 KiB.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# the run and page limits of the wire schemas, restated in the OpenAPI text below
from mixagent.service.server.schemas import (
    MAX_DOMAINS,
    MAX_FIELDS,
    MAX_HORIZON,
    MAX_PAGE,
    MAX_PATH_PART_BYTES,
    MAX_QUERY_RUN_IDS,
)

__all__ = [
    "MAX_URL_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "SERVER_MAX_HEAD_BYTES",
    "RequestLimitMiddleware",
    "request_limit_problem",
    "BodyLimitMiddleware",
    "uvicorn_limits",
    "LIMITS_DOC",
]

MAX_URL_BYTES = 8 * 1024
MAX_HEADERS = 64
MAX_HEADER_BYTES = 16 * 1024
SERVER_MAX_HEAD_BYTES = 64 * 1024

LIMITS_DOC = f"""**Limits.** Path and query string: {MAX_URL_BYTES // 1024} KiB (414). Headers: \
{MAX_HEADERS} lines and {MAX_HEADER_BYTES // 1024} KiB of names and values (431). Body: \
`MIXAGENT_MAX_BODY_BYTES`, 256 KiB by default (413). These answers are JSON `{{"detail": ...}}` naming \
the limit. A request line of {SERVER_MAX_HEAD_BYTES // 1024} KiB or more is refused by the HTTP server \
itself (400, plain text, connection closed). Runs: at most {MAX_DOMAINS} domains, {MAX_FIELDS} fields, a \
horizon of {MAX_HORIZON} decisions; `GET /v1/runs/{{id}}` returns at most {MAX_PAGE} history entries a page; \
`GET /v1/trajectories` takes at most {MAX_QUERY_RUN_IDS} `run_id`s (what fits the URL limit); a part of an \
artifact path is at most {MAX_PATH_PART_BYTES} bytes (the file system's limit)."""


def uvicorn_limits() -> dict[str, Any]:
    """uvicorn options that match the table above (h11 bounds the whole head; httptools the URL)."""
    return {"h11_max_incomplete_event_size": SERVER_MAX_HEAD_BYTES}


async def send_json(send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``{"detail": detail}`` from ASGI middleware (before FastAPI's handlers can run)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestLimitMiddleware:
    """Refuse a URL over :data:`MAX_URL_BYTES` (414) and headers over :data:`MAX_HEADERS` lines or
    :data:`MAX_HEADER_BYTES` bytes (431), before routing."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = request_limit_problem(scope) if scope["type"] == "http" else None
        if problem is not None:
            await send_json(send, *problem)
            return
        await self.app(scope, receive, send)


def request_limit_problem(scope: Scope) -> tuple[int, str] | None:
    """(status, detail) of an HTTP request over the URL or header limits, or None (the checks of
    :class:`RequestLimitMiddleware`, also run by the front door, ``front_door.py``)."""
    url = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
    if url > MAX_URL_BYTES:
        return 414, f"url: the path and query string are {url} bytes; the limit is {MAX_URL_BYTES} bytes"
    headers = scope.get("headers", ())
    size = sum(len(k) + len(v) for k, v in headers)
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
        return 431, (f"headers: {len(headers)} header lines, {size} bytes; the limits "
                     f"are {MAX_HEADERS} lines and {MAX_HEADER_BYTES} bytes")
    return None


class BodyLimitMiddleware:
    """Reject request bodies larger than ``limit`` bytes with 413, before any parsing.

    The body is read up front (bounded by the limit) and replayed to the app, so a chunked upload
    without Content-Length is bounded too.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def _reject(self, send: Send, size: str) -> None:
        await send_json(send, 413, f"request body is {size} bytes; the limit is {self.limit} bytes "
                                   "(MIXAGENT_MAX_BODY_BYTES)")

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
