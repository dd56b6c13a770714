"""OAuth 2.0 login (Google, GitHub) through authlib: start, callback, link the member.

- **Start**: a random ``state``, a PKCE verifier (S256 challenge) and, for Google, an OIDC
  ``nonce`` are made; the catalog keeps the state's SHA-256 with the verifier (sealed with the
  keyring), the tenant, the redirect URI and the SHA-256 of the browser's binding cookie, for
  ``oauth_state_ttl_seconds``. Nothing lives in process memory, so any API worker can serve
  the callback.
- **Callback**: the state's row is deleted as it is read (one use); it must be this
  provider's, not expired, and come with the browser's cookie. The code is exchanged with the
  verifier; the provider checks it against the challenge, so a code obtained with another
  verifier (or none) is refused. The e-mail must be verified: Google's from the id_token
  (signature by the provider's JWKS, issuer, audience, nonce, expiry; userinfo when the token
  carries no e-mail), GitHub's the primary one of ``/user/emails``.
- **Link**: an identity seen before (provider + subject) names its member; otherwise the
  member with that e-mail in the tenant the login is for: an active one is linked, an invited
  one (``status = 'invited'``) is activated and linked. An unknown e-mail is refused: no
  member is made out of nowhere. Then :func:`bizosctl.security.sessions.open_session` gives
  the token pair (``method = 'oauth:<provider>'``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import OAuthState
from bizosctl.config import Settings
from bizosctl.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    ServerUnavailable,
    Unauthorized,
)
from bizosctl.security.sessions import TokenPair, open_session
from bizosctl.tenancy.names import check_slug

PROVIDERS = ("google", "github")
BROWSER_RE = re.compile(r"[A-Za-z0-9_-]{43}")
TIMEOUT_S = 10.0
DISCOVERY_TTL_S = 300.0
BAD_STATE = "unknown, used or expired login state: start the login again"
NOT_A_MEMBER = "no member of this tenant has this e-mail: ask an admin for an invitation"

_discovered: dict[str, tuple[float, dict[str, Any]]] = {}  # issuer -> (when, metadata)


@dataclass(frozen=True)
class Provider:
    name: str
    client_id: str
    client_secret: str
    authorize_url: str
    token_url: str
    scope: str
    issuer: str | None = None  # OIDC (Google)
    jwks_uri: str | None = None
    userinfo_url: str | None = None
    api_url: str | None = None  # GitHub


@dataclass(frozen=True)
class Identity:
    provider: str
    subject: str
    email: str


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _client(p: Provider, **kw: Any) -> Any:
    from authlib.integrations.httpx_client import OAuth2Client

    return OAuth2Client(
        p.client_id,
        p.client_secret,
        scope=p.scope,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_post",
        timeout=TIMEOUT_S,
        **kw,
    )


def _get_json(client: Any, url: str, **kw: Any) -> Any:
    try:
        r = client.get(url, **kw)
        r.raise_for_status()
        return r.json()
    except ValueError:
        raise ServerUnavailable(
            f"the OAuth provider answered {url} with something not JSON"
        ) from None
    except Exception as exc:  # httpx2 errors: the provider is down or refused
        raise ServerUnavailable(f"the OAuth provider could not be reached ({url}): {exc}") from None


def _discover(issuer: str) -> dict[str, Any]:
    """The issuer's OIDC metadata, cached a few minutes per process (it changes rarely)."""
    import httpx2

    hit = _discovered.get(issuer)
    if hit is not None and time.monotonic() - hit[0] < DISCOVERY_TTL_S:
        return hit[1]
    with httpx2.Client(timeout=TIMEOUT_S) as c:
        meta = _get_json(c, issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not isinstance(meta, dict) or meta.get("issuer") != issuer:
        raise ServerUnavailable(f"the OIDC metadata of {issuer} does not name that issuer")
    _discovered[issuer] = (time.monotonic(), meta)
    return meta


def provider(settings: Settings, name: str) -> Provider:
    """The configured provider ``name``; NotFound for an unknown or unconfigured one."""
    if name == "google" and settings.oauth_google_client_id and settings.oauth_google_client_secret:
        meta = _discover(settings.oauth_google_issuer)
        return Provider(
            name=name,
            client_id=settings.oauth_google_client_id,
            client_secret=settings.oauth_google_client_secret.get_secret_value(),
            authorize_url=meta["authorization_endpoint"],
            token_url=meta["token_endpoint"],
            scope="openid email profile",
            issuer=settings.oauth_google_issuer,
            jwks_uri=meta["jwks_uri"],
            userinfo_url=meta.get("userinfo_endpoint"),
        )
    if name == "github" and settings.oauth_github_client_id and settings.oauth_github_client_secret:
        web = settings.oauth_github_url.rstrip("/")
        return Provider(
            name=name,
            client_id=settings.oauth_github_client_id,
            client_secret=settings.oauth_github_client_secret.get_secret_value(),
            authorize_url=f"{web}/login/oauth/authorize",
            token_url=f"{web}/login/oauth/access_token",
            scope="read:user user:email",
            api_url=settings.oauth_github_api_url.rstrip("/"),
        )
    raise NotFound(f"no OAuth login with {name!r} here (configured: {configured(settings)})")


def configured(settings: Settings) -> str:
    names = [
        n
        for n in PROVIDERS
        if getattr(settings, f"oauth_{n}_client_id")
        and getattr(settings, f"oauth_{n}_client_secret")
    ]
    return ", ".join(names) or "none"


# -- start --------------------------------------------------------------------------------------
def start_login(
    ctl: Control, *, provider_name: str, tenant: str, redirect_uri: str, browser: str | None
) -> tuple[str, str]:
    """Record a login and return the provider's authorization URL and the browser binding
    (the caller's cookie value when it has a well-formed one, else a new one).

    Args:
        provider_name: ``google`` or ``github``.
        tenant: the slug of the tenant the member logs in to.
        redirect_uri: our callback URL, as registered with the provider.
        browser: the value of the browser's binding cookie, if it sent one.
    """
    check_slug(tenant)
    p = provider(ctl.settings, provider_name)
    if browser is None or not BROWSER_RE.fullmatch(browser):
        browser = secrets.token_urlsafe(32)
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters: RFC 7636 allows 43-128
    nonce = secrets.token_urlsafe(16) if p.issuer else None
    now = dt.datetime.now(dt.UTC)
    with ctl.catalog() as s:
        s.execute(delete(OAuthState).where(OAuthState.expires_at < now))
        s.add(
            OAuthState(
                state_hash=_sha(state),
                provider=p.name,
                tenant=tenant,
                browser_hash=_sha(browser),
                verifier_enc=ctl.seal(verifier, context=f"oauth:{_sha(state)}"),
                nonce=nonce,
                redirect_uri=redirect_uri,
                expires_at=now + dt.timedelta(seconds=ctl.settings.oauth_state_ttl_seconds),
            )
        )
    extra = {"nonce": nonce} if nonce else {}
    with _client(p, redirect_uri=redirect_uri) as c:
        url, _ = c.create_authorization_url(
            p.authorize_url, state=state, code_verifier=verifier, **extra
        )
    return str(url), browser


# -- callback -----------------------------------------------------------------------------------
def _consume(
    ctl: Control, *, provider_name: str, state: str, browser: str | None
) -> tuple[OAuthState, str]:
    """The login's row, deleted as it is read, and its PKCE verifier; Unauthorized unless it
    is this provider's, live, and the browser that started it asks."""
    with ctl.catalog() as s:
        row = s.execute(
            delete(OAuthState).where(OAuthState.state_hash == _sha(state)).returning(OAuthState)
        ).scalar_one_or_none()
        if row is None or row.provider != provider_name:
            raise Unauthorized(BAD_STATE)
        verifier = ctl.unseal(row.verifier_enc, context=f"oauth:{row.state_hash}")
    if row.expires_at <= dt.datetime.now(dt.UTC):
        raise Unauthorized("this login took too long: start it again")
    if browser is None or not hmac.compare_digest(_sha(browser), row.browser_hash):
        raise Unauthorized("this login was started in another browser: start it again here")
    return row, verifier


def _exchange(c: Any, p: Provider, *, code: str, verifier: str) -> dict[str, Any]:
    from authlib.integrations.base_client import OAuthError

    try:
        token: dict[str, Any] = c.fetch_token(
            p.token_url, grant_type="authorization_code", code=code, code_verifier=verifier
        )
    except OAuthError as exc:
        raise Unauthorized(f"{p.name} refused the login code: {exc.error}") from None
    except Exception as exc:
        raise ServerUnavailable(
            f"{p.name} could not be reached to exchange the code: {exc}"
        ) from None
    return token


def _google(c: Any, p: Provider, token: dict[str, Any], nonce: str | None) -> Identity:
    from authlib.oidc.core import CodeIDToken
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet
    from joserfc.jws import JWSRegistry

    raw = token.get("id_token")
    if not raw:
        raise Unauthorized("google sent no id_token")
    assert p.jwks_uri is not None
    try:
        keys = KeySet.import_key_set(_get_json(c, p.jwks_uri))
        decoded = jwt.decode(raw, keys, registry=JWSRegistry(algorithms=["RS256", "ES256"]))
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {"iss": {"values": [p.issuer]}},
            {"nonce": nonce, "client_id": p.client_id, "access_token": token.get("access_token")},
        )
        claims.validate(leeway=60)
    except (JoseError, ValueError, KeyError) as exc:
        raise Unauthorized(f"google's id_token does not verify: {exc}") from None
    info: dict[str, Any] = dict(claims)
    if "email" not in info and p.userinfo_url:
        more = _get_json(c, p.userinfo_url)
        if not isinstance(more, dict) or more.get("sub") != info.get("sub"):
            raise Unauthorized("google's userinfo names another account than its id_token")
        info.update(more)
    email = info.get("email")
    if not isinstance(email, str) or info.get("email_verified") is not True:
        raise Forbidden("google has not verified this account's e-mail")
    return Identity("google", str(info["sub"]), email)


def _github(c: Any, p: Provider) -> Identity:
    headers = {"Accept": "application/vnd.github+json"}
    user = _get_json(c, f"{p.api_url}/user", headers=headers)
    emails = _get_json(c, f"{p.api_url}/user/emails", headers=headers)
    if not isinstance(user, dict) or "id" not in user or not isinstance(emails, list):
        raise ServerUnavailable("github answered /user or /user/emails unexpectedly")
    primary = next((e for e in emails if isinstance(e, dict) and e.get("primary")), None)
    if primary is None or primary.get("verified") is not True or not primary.get("email"):
        raise Forbidden("github has not verified this account's primary e-mail")
    return Identity("github", str(user["id"]), str(primary["email"]))


def read_identity(
    p: Provider, *, code: str, verifier: str, redirect_uri: str, nonce: str | None
) -> Identity:
    """Exchange the code (with the PKCE verifier) and read the account's verified e-mail."""
    with _client(p, redirect_uri=redirect_uri) as c:
        token = _exchange(c, p, code=code, verifier=verifier)
        if p.name == "google":
            return _google(c, p, token, nonce)
        return _github(c, p)


def link_member(ctl: Control, *, tenant: str, identity: Identity) -> uuid.UUID:
    """The member this identity logs in as (linked, or activated and linked), in ``tenant``."""
    from bizosctl.tenancy.members import find_by_email, get_member
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Member, MemberIdentity

    try:
        route = ctl.route(tenant)
    except NotFound:
        raise Forbidden(NOT_A_MEMBER) from None
    with tenant_session(ctl, tenant, actor=f"auth:oauth:{identity.provider}") as s:
        linked = s.get(MemberIdentity, (route.tenant_id, identity.provider, identity.subject))
        if linked is not None:
            member = get_member(s, linked.member_id)
        else:
            found = find_by_email(ctl, s, identity.email.strip().lower())
            if found is None:
                raise Forbidden(NOT_A_MEMBER)
            member = found
        if member.status == "invited":  # the invitation is accepted by this login
            s.execute(update(Member).where(Member.id == member.id).values(status="active"))
        elif member.status != "active":
            raise Forbidden("this member cannot log in")
        if linked is None:
            s.execute(
                insert(MemberIdentity)
                .values(
                    tenant_id=route.tenant_id,
                    provider=identity.provider,
                    subject=identity.subject,
                    member_id=member.id,
                )
                .on_conflict_do_nothing()
            )
        return member.id


def finish_login(
    ctl: Control,
    *,
    provider_name: str,
    state: str | None,
    code: str | None,
    error: str | None,
    browser: str | None,
) -> TokenPair:
    """The callback: check the state, exchange the code, link the member, open a session."""
    if not state:
        raise InvalidInput("state: the provider's redirect carries the login's state")
    p = provider(ctl.settings, provider_name)
    row, verifier = _consume(ctl, provider_name=p.name, state=state, browser=browser)
    if error:
        raise Unauthorized(f"{p.name} did not grant the login: {error[:100]}")
    if not code:
        raise InvalidInput("code: the provider's redirect carries no code")
    identity = read_identity(
        p, code=code, verifier=verifier, redirect_uri=row.redirect_uri, nonce=row.nonce
    )
    member_id = link_member(ctl, tenant=row.tenant, identity=identity)
    return open_session(ctl, tenant=row.tenant, member_id=member_id, method=f"oauth:{p.name}")
