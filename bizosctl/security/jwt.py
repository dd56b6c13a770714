"""Session tokens (JWT, HS256) signed with the keyring's ``jwt`` key; ``kid`` names the version.

Rotation adds a new primary version; tokens signed with an older version keep verifying
until that version is retired, which ``secrets rotate jwt`` schedules for when the last token
it could have signed has expired (``retire_after``).
"""

from __future__ import annotations

import time
from typing import Any

import jwt as pyjwt

from bizosctl.catalog.control import Control
from bizosctl.errors import BizosError, TenantSuspended

ALGORITHM = "HS256"


class InvalidToken(BizosError):
    """Invalid or expired session token."""

    exit_code = 1
    http_status = 401
    code = "invalid-token"


def kid(version: int) -> str:
    return f"jwt-v{version}"


def issue_token(ctl: Control, *, subject: str, tenant: str, ttl_seconds: int | None = None,
                claims: dict[str, Any] | None = None) -> str:  # fmt: skip
    dk = ctl.keyring.primary("jwt")
    now = int(time.time())
    ttl = ttl_seconds or ctl.settings.jwt_ttl_seconds
    payload = {"sub": subject, "tenant": tenant, "iat": now, "exp": now + ttl, **(claims or {})}
    return pyjwt.encode(payload, dk.key, algorithm=ALGORITHM, headers={"kid": kid(dk.version)})


def _refuse_suspended(ctl: Control, tenant: object) -> None:
    """A suspended tenant's tokens are refused (its data is too, in the database)."""
    from sqlalchemy import select

    from bizosctl.catalog.models import Tenant

    with ctl.catalog() as s:
        status = s.execute(
            select(Tenant.status).where(Tenant.slug == str(tenant), Tenant.status != "deleted")
        ).scalar_one_or_none()
    if status == "suspended":
        raise TenantSuspended(f"tenant {tenant!r} is suspended: its session tokens are refused")


def verify_token(ctl: Control, token: str) -> dict[str, Any]:
    try:
        header = pyjwt.get_unverified_header(token)
        name = str(header.get("kid", ""))
        if not name.startswith("jwt-v") or not name[5:].isdigit():
            raise InvalidToken("the token names no known signing key")
        try:
            dk = ctl.keyring.get("jwt", int(name[5:]))
        except BizosError as exc:
            raise InvalidToken("the token's signing key is retired or unknown") from exc
        claims: dict[str, Any] = pyjwt.decode(
            token, dk.key, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
        _refuse_suspended(ctl, claims.get("tenant"))
        return claims
    except pyjwt.ExpiredSignatureError as exc:
        raise InvalidToken("the token has expired") from exc
    except pyjwt.PyJWTError as exc:
        raise InvalidToken("invalid token") from exc
