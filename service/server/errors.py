"""Errors of the service and how they reach the wire: every failure is a JSON ``{"detail": ...}``
whose message names the field and the value, with a 4xx status; nothing a client sends yields a 5xx.

```
ServiceError                  -> its ``status``
 ├── NotFound                 404  unknown run / policy, or a run of another token
 ├── Conflict                 409  step out of order, retried step with another payload, run done
 ├── Unprocessable            422  input that is well-formed JSON but breaks the contract
 ├── Forbidden                403  a non-admin token on an admin route
 ├── Unauthorized             401  no bearer token, or one that is not valid
 └── Unavailable              503  this replica cannot read a policy artifact the database names
                                   (a deployment problem, not the client's: another replica may serve)
RequestValidationError        422  schema violations and malformed JSON (FastAPI)
HTTPException 405             405  a method the path does not allow (``Allow`` lists every one it does)
OperationalError (database)   503  the database is unreachable (``Retry-After``); not the client's fault
limits.py                     413 / 414 / 431  body, URL and header sizes (JSON, before routing)
```
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mixagent.service.server.methods import allowed_methods
from mixagent.trajectories.contract import format_validation_errors

__all__ = [
    "ServiceError",
    "NotFound",
    "Conflict",
    "Unprocessable",
    "Forbidden",
    "Unauthorized",
    "Unavailable",
    "install_error_handlers",
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


class Unavailable(ServiceError):
    status = 503

    def __init__(self, detail: str):
        super().__init__(detail, {"Retry-After": "1"})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail, items = format_validation_errors(list(exc.errors()))
        return JSONResponse({"detail": detail, "errors": items}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8)
            return JSONResponse({"detail": f"body: malformed JSON ({exc.detail})"}, status_code=422)
        if exc.status_code == 405:  # Starlette lists the methods of one route; the path may have several
            allow = ", ".join(allowed_methods(request.scope))
            return JSONResponse({"detail": f"method: {request.method} is not allowed on {request.url.path}; "
                                           f"allowed: {allow}"}, status_code=405, headers={"Allow": allow})
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError) -> JSONResponse:
        # The database went away (a PostgreSQL restart, a full disk): the client may retry.
        log.error("database error on %s %s: %s", request.method, request.url.path, exc.orig)
        return JSONResponse({"detail": "database: unavailable, retry later"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)
