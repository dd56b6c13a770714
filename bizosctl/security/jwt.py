"""Session tokens (JWT, EdDSA) signed with the keyring's ``jwt`` key; ``kid`` names the version.

Each ``jwt`` key version is the 32-byte seed of an Ed25519 key pair: the private key signs,
the public key verifies and is published at ``/.well-known/jwks.json`` (:func:`jwks`, every
live version, the staged one included before it signs), so any service verifies our tokens
with a standard JWKS client and holds no secret. Only ``EdDSA`` is accepted: a token that
says ``none``, ``HS256`` (signed with the public key as a shared secret: the classic
algorithm confusion) or anything else is refused before its signature is looked at.

Rotation makes a new primary version; the previous one stops signing (``demoted_at``) and keeps
verifying the tokens it signed before until ``retire_after`` (when the last of them has
expired), then it is retired and destroyed. A token is refused unless all of these hold:

- its ``kid`` is exactly ``jwt-v<N>`` (ASCII digits, no leading zero) naming a live version;
- that version is not past its ``retire_after``, and if it is no longer primary, the token's
  ``iat`` is not after the moment it stopped signing (plus one keyring reload period, in which
  processes that have not re-read the keyring still sign with it, plus the clock leeway);
- the signature verifies, and ``sub``, ``tenant``, ``iat`` and ``exp`` are present and typed;
- it is not expired, not issued in the future, and ``exp - iat`` is at most
  ``BIZOS_JWT_TTL_SECONDS``.

Every refusal is :class:`~bizosctl.errors.InvalidToken`. The algorithm travels with the key
version (``ALGORITHM``).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bizosctl.catalog.control import Control
from bizosctl.errors import InvalidInput, InvalidToken, KeyringError, TenantSuspended
from bizosctl.security.keyring import DataKey

__all__ = [
    "ALGORITHM",
    "InvalidToken",
    "issue_token",
    "jwks",
    "kid",
    "parse_kid",
    "public_jwk",
    "verify_token",
]

ALGORITHM = "EdDSA"
REQUIRED = ("sub", "tenant", "iat", "exp")
#: No real token comes near this; parsing stops before any work on a huge one.
MAX_TOKEN_CHARS = 8192
# [0-9] (not \d) is ASCII only; fullmatch: no trailing newline; at most 9 digits: an int
_KID = re.compile(r"jwt-v([1-9][0-9]{0,8})")


def kid(version: int) -> str:
    return f"jwt-v{version}"


def parse_kid(value: object) -> int | None:
    """The key version a ``kid`` names, or None when it is not exactly ``jwt-v<N>``."""
    if not isinstance(value, str):
        return None
    m = _KID.fullmatch(value)
    return int(m.group(1)) if m else None


def issue_token(ctl: Control, *, subject: str, tenant: str, ttl_seconds: int | None = None,
                claims: dict[str, Any] | None = None) -> str:  # fmt: skip
    """A token for ``subject`` in ``tenant``, valid ``ttl_seconds`` (at most, and by default,
    ``BIZOS_JWT_TTL_SECONDS``). ``claims`` adds claims; it cannot override the reserved ones."""
    limit = ctl.settings.jwt_ttl_seconds
    ttl = limit if ttl_seconds is None else ttl_seconds
    if not 0 < ttl <= limit:
        raise InvalidInput(f"a token lives 1 to {limit} seconds (BIZOS_JWT_TTL_SECONDS), not {ttl}")
    reserved = sorted(set(claims or {}) & {*REQUIRED, "nbf"})
    if reserved:
        raise InvalidInput(f"claims {', '.join(reserved)} are reserved")
    dk = ctl.keyring.primary("jwt")
    now = int(time.time())
    payload = {**(claims or {}), "sub": subject, "tenant": tenant, "iat": now, "exp": now + ttl}
    return pyjwt.encode(
        payload, _private_key(dk.key), algorithm=ALGORITHM, headers={"kid": kid(dk.version)}
    )


@lru_cache(maxsize=64)
def _private_key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


@lru_cache(maxsize=64)
def _public_key(seed: bytes) -> Ed25519PublicKey:
    return _private_key(seed).public_key()


def public_jwk(dk: DataKey) -> dict[str, str]:
    """The public half of one ``jwt`` key version as a JWK (RFC 8037, OKP / Ed25519)."""
    raw = _public_key(dk.key).public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid(dk.version), "alg": ALGORITHM,
            "use": "sig"}  # fmt: skip


def jwks(ctl: Control) -> dict[str, list[dict[str, str]]]:
    """Every live ``jwt`` public key (primary, staged, demoted but still verifying)."""
    now = time.time()
    keys = [
        public_jwk(dk)
        for dk in ctl.keyring.versions("jwt")
        if dk.retire_after is None or now < dk.retire_after
    ]
    return {"keys": keys}


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


def verify_token(ctl: Control, token: str, *, check_tenant: bool = True) -> dict[str, Any]:
    """The claims of a valid token; :class:`InvalidToken` for anything else.
    ``check_tenant=False`` leaves refusing a suspended tenant to the caller (the API reads
    the tenant's route, and its status with it, anyway)."""
    ring = ctl.keyring  # outside the try: a catalog that cannot be reached is not a bad token
    settings = ctl.settings
    try:
        claims = _verify(
            token,
            lambda version: ring.get("jwt", version),
            ttl=settings.jwt_ttl_seconds,
            leeway=settings.jwt_leeway_seconds,
            reload_s=settings.keyring_reload_seconds,
        )
    except InvalidToken:
        raise
    except Exception as exc:  # whatever a crafted token sets off while it is parsed
        raise InvalidToken("invalid token") from exc
    if check_tenant:
        _refuse_suspended(ctl, claims["tenant"])
    return claims


def _verify(
    token: str, key_for: Callable[[int], DataKey], *, ttl: int, leeway: int, reload_s: float
) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("invalid token")
    try:
        header = pyjwt.get_unverified_header(token)
    except pyjwt.PyJWTError as exc:
        raise InvalidToken("invalid token") from exc
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"the token is not signed with {ALGORITHM}")
    version = parse_kid(header.get("kid"))
    if version is None:
        raise InvalidToken("the token names no known signing key")
    try:
        dk: DataKey = key_for(version)
    except KeyringError as exc:
        raise InvalidToken("the token's signing key is retired or unknown") from exc
    now = time.time()
    if dk.retire_after is not None and now >= dk.retire_after:
        raise InvalidToken("the token's signing key is retired or unknown")
    try:
        # the leeway is for ``iat`` only (below): a token expires at its ``exp``
        claims: dict[str, Any] = pyjwt.decode(
            token,
            _public_key(dk.key),
            algorithms=[ALGORITHM],
            options={"require": list(REQUIRED), "verify_iat": False},
        )
    except pyjwt.ExpiredSignatureError as exc:
        raise InvalidToken("the token has expired") from exc
    except pyjwt.ImmatureSignatureError as exc:
        raise InvalidToken("the token is not valid yet") from exc
    except pyjwt.PyJWTError as exc:
        raise InvalidToken("invalid token") from exc
    for name in ("sub", "tenant"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise InvalidToken(f"the token's {name!r} claim is not a name")
    iat, exp = claims["iat"], claims["exp"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
        raise InvalidToken("the token's times are not whole seconds")
    if iat > now + leeway:
        raise InvalidToken("the token was issued in the future")
    if exp - iat > ttl:
        raise InvalidToken(f"the token's lifetime exceeds {ttl}s (BIZOS_JWT_TTL_SECONDS)")
    if not dk.primary and dk.demoted_at is not None and iat > dk.demoted_at + reload_s + leeway:
        raise InvalidToken("the token was signed after its key stopped signing")
    return claims
