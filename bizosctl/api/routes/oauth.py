"""OAuth 2.0 login (Google, GitHub): ``/auth/oauth/{provider}/start`` and ``/callback``.

Start redirects the browser to the provider and sets a binding cookie (HttpOnly, SameSite=Lax,
Secure behind TLS, scoped to these two routes); the callback needs it, so a login started in
one browser cannot be finished in another. The state, the PKCE verifier and the rest live in
the catalog (:mod:`bizosctl.security.oauth`), so several API workers serve these routes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from bizosctl.api.deps import CtlDep, client_address, rate_limit
from bizosctl.security import oauth
from bizosctl.security.sessions import TokenPair

router = APIRouter(prefix="/api/v1/auth/oauth", tags=["auth"])
COOKIE = "bz_oauth"
COOKIE_PATH = "/api/v1/auth/oauth"


def _https(request: Request) -> bool:
    public = request.app.state.ctl.settings.public_url
    return request.url.scheme == "https" or bool(public and public.startswith("https://"))


def callback_url(request: Request, provider: str) -> str:
    """Where the provider sends the browser back: under ``public_url`` when it is set (behind
    a proxy the request's own host may not be the public one)."""
    public = request.app.state.ctl.settings.public_url
    base = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return f"{base}{COOKIE_PATH}/{provider}/callback"


@router.get(
    "/{provider}/start",
    status_code=302,
    response_class=RedirectResponse,
    summary="Go to the provider's login (state, PKCE S256)",
)
def start(
    provider: str,
    tenant: Annotated[str, Query(min_length=3, max_length=40, pattern=r"^[a-z][a-z0-9-]+$")],
    ctl: CtlDep,
    request: Request,
    response: Response,
) -> RedirectResponse:
    rate_limit(request, response, "auth", f"ip:{client_address(request)}")
    url, browser = oauth.start_login(
        ctl,
        provider_name=provider,
        tenant=tenant,
        redirect_uri=callback_url(request, provider),
        browser=request.cookies.get(COOKIE),
    )
    redirect = RedirectResponse(url, status_code=302)
    for name in ("RateLimit", "RateLimit-Policy"):  # set on ``response``, which is not sent
        redirect.headers[name] = response.headers[name]
    redirect.set_cookie(
        COOKIE,
        browser,
        max_age=ctl.settings.oauth_state_ttl_seconds,
        path=COOKIE_PATH,
        httponly=True,
        secure=_https(request),
        samesite="lax",  # sent on the provider's top-level redirect back, not on cross-site posts
    )
    return redirect


@router.get("/{provider}/callback", summary="The provider's redirect back: the token pair")
def callback(
    provider: str,
    ctl: CtlDep,
    request: Request,
    response: Response,
    state: Annotated[str | None, Query(max_length=200)] = None,
    code: Annotated[str | None, Query(max_length=2000)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> TokenPair:
    rate_limit(request, response, "auth", f"ip:{client_address(request)}")
    pair = oauth.finish_login(
        ctl,
        provider_name=provider,
        state=state,
        code=code,
        error=error,
        browser=request.cookies.get(COOKIE),
    )
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax")
    return pair
