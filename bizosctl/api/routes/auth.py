"""Log in, refresh, log out.

Login answers one message for an unknown e-mail and a wrong password, after the same work;
repeated failures slow down and then lock the address (429 with ``Retry-After``). bcrypt runs
in the server's worker threads (these handlers are plain functions), never on the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, Field

from bizosctl.api.deps import CtlDep, Ctx, Needs, client_address, rate_limit
from bizosctl.security.sessions import TokenPair, login, refresh, revoke

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginRequest(BaseModel):
    tenant: str = Field(min_length=3, max_length=40, pattern=r"^[a-z][a-z0-9-]+$")
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=200)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


@router.post("/login", summary="Log in with e-mail and password")
def post_login(body: LoginRequest, ctl: CtlDep, request: Request, response: Response) -> TokenPair:
    rate_limit(request, response, "auth", f"ip:{client_address(request)}")
    return login(ctl, tenant=body.tenant, email=body.email, password=body.password)


@router.post("/refresh", summary="Trade a refresh token for a new pair")
def post_refresh(
    body: RefreshRequest, ctl: CtlDep, request: Request, response: Response
) -> TokenPair:
    rate_limit(request, response, "auth", f"ip:{client_address(request)}")
    return refresh(ctl, body.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, summary="End this session")
def post_logout(ctx: Ctx = Depends(Needs(None, None, group="auth"))) -> None:
    from bizosctl.errors import Forbidden

    if ctx.caller.session_id is None:
        raise Forbidden("an API key has no session to end: revoke the key instead")
    with ctx.session() as s:
        revoke(s, session_id=ctx.caller.session_id, reason="logout")
