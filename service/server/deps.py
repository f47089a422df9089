"""Dependencies of the routes: the caller (from its bearer token) and the app's components.

They are ``async`` because none of them blocks: a sync dependency costs a thread-pool hop per request.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mixagent.service.server.config import Settings, principal_of
from mixagent.service.server.errors import Forbidden, Unauthorized
from mixagent.service.server.metrics import Metrics
from mixagent.service.server.registry import PolicyRegistry
from mixagent.service.server.runs import RunStore

__all__ = ["Caller", "CallerDep", "AdminDep", "StoreDep", "RegistryDep", "SettingsDep", "MetricsDep", "caller_of"]

_bearer = HTTPBearer(auto_error=False, description="A token from MIXAGENT_TOKENS or MIXAGENT_ADMIN_TOKENS.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    principal: str
    admin: bool


def _matches(token: str, allowed: list[str]) -> bool:
    return any(hmac.compare_digest(token.encode(), a.encode()) for a in allowed)


def caller_of(settings: Settings, token: str) -> Caller | None:
    """The caller a bearer token stands for; None when the token is not valid."""
    admin = _matches(token, settings.admin_token_list)
    if not admin and not _matches(token, settings.token_list):
        return None
    return Caller(principal=principal_of(token), admin=admin)


async def get_caller(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    settings: Settings = request.app.state.settings
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("authorization: a bearer token is required (Authorization: Bearer <token>)", _CHALLENGE)
    caller = caller_of(settings, creds.credentials)
    if caller is None:
        raise Unauthorized("authorization: the bearer token is not valid", _CHALLENGE)
    return caller


async def get_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.admin:
        raise Forbidden("authorization: this route needs an admin token (MIXAGENT_ADMIN_TOKENS)")
    return caller


async def get_store(request: Request) -> RunStore:
    return cast(RunStore, request.app.state.store)  # app.state is untyped; main.create_app sets it


async def get_registry(request: Request) -> PolicyRegistry:
    return cast(PolicyRegistry, request.app.state.registry)


async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def get_metrics(request: Request) -> Metrics:
    return cast(Metrics, request.app.state.metrics)


CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(get_admin)]
StoreDep = Annotated[RunStore, Depends(get_store)]
RegistryDep = Annotated[PolicyRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
