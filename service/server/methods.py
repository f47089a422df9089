"""HTTP methods per path: ``OPTIONS`` answers with every method a path allows, and a 405 lists them
all (Starlette answers with the methods of the first route that matched the path only, so
``OPTIONS /v1/runs`` said ``allow: POST`` although ``GET /v1/runs`` exists)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from mixagent.service.server.limits import send_json

__all__ = ["allowed_methods", "OptionsMiddleware"]


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, inside included routers too (FastAPI keeps ``include_router``'s routers whole;
    the app includes them without a prefix, so their routes' own paths are the full paths)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def allowed_methods(scope: Scope) -> list[str]:
    """The methods the routes of ``scope["app"]`` allow on ``scope``'s path (empty: no such path)."""
    methods: set[str] = set()
    for route in _routes(scope["app"].router.routes):
        match, _ = route.matches(scope)  # PARTIAL: the path matches, the method does not
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if methods:
        methods |= {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set())
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))


class OptionsMiddleware:
    """``OPTIONS <path>``: 204 with ``Allow`` listing every method of the path; 404 for no path.
    No token is needed (it reveals nothing beyond the public OpenAPI document)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        methods = allowed_methods(scope)
        if not methods:
            await send_json(send, 404, f"path: no route {scope['path']!r}")
            return
        await send({"type": "http.response.start", "status": 204,
                    "headers": [(b"allow", ", ".join(methods).encode())]})
        await send({"type": "http.response.body", "body": b""})
