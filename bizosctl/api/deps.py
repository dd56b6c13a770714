"""The API's dependencies: who calls (an API key or a member's access token), what they may
do (one check: the permission of a member, the scope of a key), the rate limit, and the
tenant session every handler runs in.

``Needs(permission, scope)`` is the one dependency routes declare; it authenticates, counts
the request against the rate limit, checks the permission or scope (403 with a problem
body) and hands the handler a :class:`Ctx`, whose :meth:`Ctx.session` is the caller's
tenant session: nothing a handler reaches goes through another door.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bizosctl.api.ratelimit import Limiter
from bizosctl.catalog.control import Control, RouteInfo
from bizosctl.errors import Forbidden, InvalidToken, TenantSuspended, Unauthorized
from bizosctl.security.apikeys import ApiKeyPublic, authenticate_api_key, cached_api_key
from bizosctl.security.rbac import Need, allowed, member_permissions, scope_allows
from bizosctl.tenancy.router import tenant_session

BEARER = "bearer "
#: Declares the bearer scheme in the OpenAPI document (the header is read by ``bearer``).
_SCHEME = HTTPBearer(
    auto_error=False,
    description="An API key (bz_...) or a member's access token (from /api/v1/auth/login).",
)


@dataclass
class Caller:
    tenant: str
    tenant_id: uuid.UUID
    kind: str  # "member" | "api_key"
    member_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    key_prefix: str | None = None
    scopes: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    #: The tenant's route as read when authenticating (the request's sessions reuse it).
    route: RouteInfo | None = None

    @property
    def actor(self) -> str:
        """What the audit trail records as the actor."""
        if self.kind == "member":
            return f"member:{self.member_id}"
        return f"api_key:{self.key_prefix}"

    @property
    def rate_key(self) -> str:
        return f"member:{self.member_id}" if self.kind == "member" else f"key:{self.key_prefix}"


@dataclass
class Ctx:
    """What a handler gets: the control plane and the caller."""

    ctl: Control
    caller: Caller
    request: Request
    extra: dict[str, object] = field(default_factory=dict)

    @contextlib.contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """The caller's tenant session, one transaction (committed on success)."""
        with tenant_session(
            self.ctl,
            self.caller.tenant,
            actor=self.caller.actor,
            read_only=read_only,
            route=self.caller.route,
        ) as s:
            yield s


def get_ctl(request: Request) -> Control:
    ctl: Control = request.app.state.ctl
    return ctl


def get_limiter(request: Request) -> Limiter:
    limiter: Limiter = request.app.state.limiter
    return limiter


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if not header[: len(BEARER)].lower() == BEARER or not header[len(BEARER) :].strip():
        raise Unauthorized("send Authorization: Bearer <API key or access token>")
    return header[len(BEARER) :].strip()


def _key_caller(key: ApiKeyPublic, route: RouteInfo) -> Caller:
    return Caller(
        tenant=key.tenant,
        tenant_id=route.tenant_id,
        kind="api_key",
        key_prefix=key.prefix,
        scopes=frozenset(key.scopes),
        route=route,
    )


def authenticate_cached(ctl: Control, token: str) -> Caller | None:
    """The caller behind an API key when this process's key cache answers (no I/O), None
    when the catalog must be asked (:func:`authenticate`)."""
    if not token.startswith("bz_"):
        return None
    found = cached_api_key(ctl, token)
    return None if found is None else _key_caller(*found)


def authenticate(ctl: Control, token: str) -> Caller:
    """The caller behind a bearer token (no database work for a member: see ``Needs``)."""
    if token.startswith("bz_"):
        return _key_caller(*authenticate_api_key(ctl, token, tenant=None, cached=True))
    from bizosctl.security.jwt import verify_token

    claims = verify_token(ctl, token, check_tenant=False)
    try:
        member_id, session_id = uuid.UUID(claims["sub"]), uuid.UUID(str(claims.get("sid")))
    except ValueError:
        raise InvalidToken("the token is not a member's access token") from None
    route = ctl.route(claims["tenant"])
    if route.status == "suspended":
        raise TenantSuspended(f"tenant {route.slug!r} is suspended: its sessions are refused")
    return Caller(
        tenant=route.slug,
        tenant_id=route.tenant_id,
        kind="member",
        member_id=member_id,
        session_id=session_id,
        route=route,
    )


def load_member(ctl: Control, caller: Caller) -> None:
    """Check the member's session is live and load their permissions (one read-only
    transaction in the tenant's database)."""
    from bizosctl.security.sessions import check_session

    assert caller.member_id is not None and caller.session_id is not None
    with tenant_session(
        ctl, caller.tenant, actor=caller.actor, read_only=True, route=caller.route
    ) as s:
        check_session(s, session_id=caller.session_id, member_id=caller.member_id)
        caller.permissions = member_permissions(s, caller.member_id)


def rate_limit(request: Request, response: Response, group: str, key: str) -> None:
    verdict = get_limiter(request).check(group, key)
    response.headers["RateLimit-Policy"] = verdict.policy
    response.headers["RateLimit"] = f'"{group}";r={verdict.remaining};t={verdict.reset}'


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def Needs(
    permission: str | None, scope: str | None, *, group: str | None = None
) -> Callable[..., Awaitable[Ctx]]:
    """The dependency of a route that needs ``permission`` (members) or ``scope`` (keys);
    None for both: any authenticated caller."""
    need = Need(permission=permission or "", scope=scope or "")
    limit_group = group or (scope.partition(":")[0] if scope else "api")

    async def dependency(
        request: Request,
        response: Response,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)] = None,
    ) -> Ctx:
        # On the event loop what needs no I/O (a key the cache knows, a memory rate limit,
        # the scope check); in a worker thread what reads the catalog, Redis or the tenant.
        ctl = get_ctl(request)
        token = bearer(request)
        caller = authenticate_cached(ctl, token)
        if caller is None:
            caller = await run_in_threadpool(authenticate, ctl, token)
        if get_limiter(request).backend == "memory":
            rate_limit(request, response, limit_group, caller.rate_key)
        else:
            await run_in_threadpool(rate_limit, request, response, limit_group, caller.rate_key)
        if caller.kind == "api_key":
            if need.scope and not scope_allows(caller.scopes, need.scope):
                raise Forbidden(f"this API key lacks the scope {need.scope!r}")
        else:
            await run_in_threadpool(load_member, ctl, caller)
            if need.permission and not allowed(caller.permissions, need.permission):
                raise Forbidden(f"this needs the permission {need.permission!r}")
        return Ctx(ctl=ctl, caller=caller, request=request)

    return dependency


async def _ctl(request: Request) -> Control:
    """:func:`get_ctl` as a dependency (async: no worker thread for a dictionary read)."""
    return get_ctl(request)


CtlDep = Annotated[Control, Depends(_ctl)]
