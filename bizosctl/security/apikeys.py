"""API keys of tenants: ``bz_<prefix>_<secret>``, shown once, stored as a hash of the secret.

The prefix (10 characters of ``[a-z0-9]``, unique) finds the row and names the key in lists;
the secret is 32 random bytes, stored only as its SHA-256 and compared in constant time. A
fast hash is enough here: the secret is random, so there is no dictionary to try.

Verification answers one message, "invalid API key", for a malformed, unknown, revoked or
expired key, so a caller cannot probe which keys exist; only a valid key used on another
tenant gets its own answer (403).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import string
import uuid
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import ColumnElement, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bizosctl.catalog.control import ROUTE_COLUMNS, ROUTE_JOIN, Control, RouteInfo
from bizosctl.catalog.lookups import live_tenant_id
from bizosctl.catalog.models import ApiKey, Tenant
from bizosctl.db.engines import is_disconnect, translate_errors
from bizosctl.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    OperationFailed,
    TenantSuspended,
    Unauthorized,
)
from bizosctl.security.keycache import KeyCache, auth_changed, key_cache

TOKEN_RE = re.compile(r"bz_([a-z0-9]{10})_([A-Za-z0-9_-]{20,128})")
PREFIX_RE = re.compile(r"[a-z0-9]{10}")
SCOPE_RE = re.compile(r"[a-z][a-z_]*:(read|write)")
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
PREFIX_LEN = 10
NAME_MAX = 100
MAX_EXPIRY_MS = 3650 * 86_400_000
MAX_GRACE_MS = 30 * 86_400_000
INVALID_KEY = "invalid API key"
#: How often a key's ``last_used_at`` is written at most.
LAST_USED_EVERY = dt.timedelta(minutes=1)
# Compared against when the prefix is unknown, so that case costs the same as a wrong secret.
_NO_HASH = hashlib.sha256(b"no such key").hexdigest()

Status = Literal["active", "expired", "revoked"]


class ApiKeyCreate(BaseModel):
    """A validated request for a new key (what ``--dry-run`` shows)."""

    tenant: str
    name: str
    scopes: list[str]
    expires_in_ms: int | None


class ApiKeyPublic(BaseModel):
    """An API key as shown to people and in ``--json``: never the secret nor its hash."""

    id: uuid.UUID
    tenant: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    replaced_by: uuid.UUID | None
    status: Status


class ApiKeyRotationPlan(BaseModel):
    """What ``rotate`` would do: the old key's end of validity and the new key's terms."""

    key: ApiKeyPublic
    old_valid_until: dt.datetime
    new_name: str
    new_scopes: list[str]
    new_expires_at: dt.datetime | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _status(key: ApiKey, now: dt.datetime) -> Status:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def _public(key: ApiKey, slug: str, now: dt.datetime) -> ApiKeyPublic:
    return ApiKeyPublic(
        id=key.id,
        tenant=slug,
        name=key.name,
        prefix=key.prefix,
        scopes=[str(s) for s in key.scopes],
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        replaced_by=key.replaced_by,
        status=_status(key, now),
    )


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# -- validation -------------------------------------------------------------------------------
def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInput("API key name must not be empty")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"API key name is too long ({len(name)} characters; at most {NAME_MAX})")
    return name


def check_scopes(scopes: list[str]) -> list[str]:
    """The scopes, each ``<resource>:read``, ``<resource>:write`` or ``*``; duplicates dropped."""
    out: list[str] = []
    for scope in scopes:
        if scope != "*" and not SCOPE_RE.fullmatch(scope):
            raise InvalidInput(
                f"invalid scope {scope!r}: use <resource>:read, <resource>:write or *, "
                "e.g. invoices:read"
            )
        if scope not in out:
            out.append(scope)
    if not out:
        raise InvalidInput("give at least one scope, e.g. invoices:read")
    return out


def check_within(scopes: list[str], granted: frozenset[str]) -> None:
    """Forbidden unless every scope in ``scopes`` is one ``granted`` allows: an API key never
    makes (or rotates into) a key wider than itself."""
    from bizosctl.security.rbac import scope_allows

    wider = [x for x in scopes if not scope_allows(granted, x)]
    if wider:
        raise Forbidden(
            f"an API key cannot grant scopes it does not have itself: {', '.join(wider)}"
        )


def check_expiry(expires_ms: int | None) -> int | None:
    if expires_ms is None:
        return None
    if expires_ms <= 0:
        raise InvalidInput("API key expiry must be more than zero")
    if expires_ms > MAX_EXPIRY_MS:
        raise InvalidInput("API key expiry must be at most 3650d")
    return expires_ms


def check_grace(grace_ms: int) -> int:
    if grace_ms < 0:
        raise InvalidInput("grace period must not be negative")
    if grace_ms > MAX_GRACE_MS:
        raise InvalidInput("grace period must be at most 30d")
    return grace_ms


def shown_key(key: str) -> str:
    """A key reference safe to print: someone may paste a whole token to revoke it."""
    return key[: 3 + PREFIX_LEN] + "…" if key.startswith("bz_") else key


def _key_filter(key: str) -> ColumnElement[bool]:
    """The condition naming one key by its id, its prefix or a whole token."""
    token = TOKEN_RE.fullmatch(key)
    if token is not None:
        return ApiKey.prefix == token.group(1)
    if PREFIX_RE.fullmatch(key):
        return ApiKey.prefix == key
    try:
        return ApiKey.id == uuid.UUID(key)
    except ValueError:
        raise NotFound(f"no API key with id or prefix {shown_key(key)!r}") from None


def _find(
    s: Session, key: str, *, lock: bool = False, tenant: str | None = None
) -> tuple[ApiKey, str]:
    """The key (of a live tenant; of ``tenant`` only, when given) and its tenant's slug.
    Another tenant's key is as unknown as a made-up one."""
    stmt = (
        select(ApiKey, Tenant.slug)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(_key_filter(key), Tenant.status != "deleted")
    )
    if tenant is not None:
        stmt = stmt.where(Tenant.slug == tenant)
    if lock:
        stmt = stmt.with_for_update(of=ApiKey)
    row = s.execute(stmt).one_or_none()
    if row is None:
        raise NotFound(f"no API key with id or prefix {shown_key(key)!r}")
    return row[0], row[1]


def _new_prefix(s: Session) -> str:
    # 36**10 prefixes: a clash is very unlikely, and the unique constraint catches a race.
    for _ in range(5):
        prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_LEN))
        taken = s.execute(select(ApiKey.id).where(ApiKey.prefix == prefix)).first()
        if taken is None:
            return prefix
    raise OperationFailed("could not find a free API key prefix")


def _insert(
    s: Session,
    *,
    tenant_id: uuid.UUID,
    name: str,
    scopes: list[str],
    now: dt.datetime,
    expires_at: dt.datetime | None,
) -> tuple[ApiKey, str]:
    prefix = _new_prefix(s)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=name,
        prefix=prefix,
        secret_hash=_hash(secret),
        scopes=scopes,
        # Set here rather than by the server, so expires_at - created_at is the key's lifetime
        # exactly, which a rotation hands on to the next key.
        created_at=now,
        expires_at=expires_at,
    )
    s.add(key)
    s.flush()
    return key, f"bz_{prefix}_{secret}"


# -- verbs ------------------------------------------------------------------------------------
def plan_api_key(
    ctl: Control, *, tenant: str, name: str, scopes: list[str], expires_ms: int | None
) -> ApiKeyCreate:
    """Validate a new key's terms without creating it (``--dry-run``)."""
    request = ApiKeyCreate(
        tenant=tenant,
        name=check_name(name),
        scopes=check_scopes(scopes),
        expires_in_ms=check_expiry(expires_ms),
    )
    with ctl.catalog() as s:
        live_tenant_id(s, tenant)
    return request


def create_api_key(
    ctl: Control,
    *,
    tenant: str,
    name: str,
    scopes: list[str],
    expires_ms: int | None,
    within: frozenset[str] | None = None,
) -> tuple[ApiKeyPublic, str]:
    """Create a key for a tenant; returns it and its token, which is never available again.

    Args:
        tenant: the tenant's slug.
        name: what the key is for, 1-100 characters.
        scopes: ``<resource>:read``, ``<resource>:write`` or ``*``; at least one.
        expires_ms: lifetime in milliseconds, or None for a key that does not expire.
        within: the scopes of the API key asking, if one asks: the new key's must not be
            wider (Forbidden).
    """
    name = check_name(name)
    scopes = check_scopes(scopes)
    if within is not None:
        check_within(scopes, within)
    expires_ms = check_expiry(expires_ms)
    now = _now()
    expires_at = None if expires_ms is None else now + dt.timedelta(milliseconds=expires_ms)
    with ctl.catalog() as s:
        tenant_id = live_tenant_id(s, tenant)
        key, token = _insert(
            s, tenant_id=tenant_id, name=name, scopes=scopes, now=now, expires_at=expires_at
        )
        return _public(key, tenant, now), token


def list_api_keys(ctl: Control, *, tenant: str | None = None) -> list[ApiKeyPublic]:
    """Keys of every live tenant, or of one tenant (by slug), oldest first."""
    now = _now()
    stmt = (
        select(ApiKey, Tenant.slug)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(Tenant.status != "deleted")
        .order_by(Tenant.slug, ApiKey.created_at, ApiKey.id)
    )
    with ctl.catalog() as s:
        if tenant is not None:
            stmt = stmt.where(ApiKey.tenant_id == live_tenant_id(s, tenant))
        return [_public(key, slug, now) for key, slug in s.execute(stmt).all()]


def get_api_key(ctl: Control, key: str, *, tenant: str | None = None) -> ApiKeyPublic:
    """One key, named by its id or its prefix (of ``tenant`` only, when given)."""
    with ctl.catalog() as s:
        row, slug = _find(s, key, tenant=tenant)
        return _public(row, slug, _now())


def revoke_api_key(ctl: Control, key: str, *, tenant: str | None = None) -> ApiKeyPublic:
    """Revoke a key (by id or prefix; of ``tenant`` only, when given) now. Revoking a revoked
    key changes nothing."""
    now = _now()
    with ctl.catalog() as s:
        row, slug = _find(s, key, lock=True, tenant=tenant)
        if row.revoked_at is None:
            row.revoked_at = now
            auth_changed(s, prefix=row.prefix)
        return _public(row, slug, now)


def _check_rotatable(key: ApiKey, now: dt.datetime) -> None:
    if key.revoked_at is not None:
        raise InvalidInput(f"API key {key.prefix!r} is revoked: create a new key instead")
    if key.replaced_by is not None:
        raise InvalidInput(
            f"API key {key.prefix!r} was already rotated (replaced by {key.replaced_by}): "
            "rotate its replacement"
        )
    if key.expires_at is not None and key.expires_at <= now:
        raise InvalidInput(f"API key {key.prefix!r} has expired: create a new key instead")


def _lifetime(key: ApiKey) -> dt.timedelta | None:
    return None if key.expires_at is None else key.expires_at - key.created_at


def _old_valid_until(key: ApiKey, now: dt.datetime, grace_ms: int) -> dt.datetime:
    end = now + dt.timedelta(milliseconds=grace_ms)
    return end if key.expires_at is None else min(key.expires_at, end)


def plan_rotation(ctl: Control, key: str, *, grace_ms: int) -> ApiKeyRotationPlan:
    """What ``rotate_api_key`` would do, changing nothing (``--dry-run``)."""
    check_grace(grace_ms)
    now = _now()
    with ctl.catalog() as s:
        row, slug = _find(s, key)
        _check_rotatable(row, now)
        lifetime = _lifetime(row)
        return ApiKeyRotationPlan(
            key=_public(row, slug, now),
            old_valid_until=_old_valid_until(row, now, grace_ms),
            new_name=row.name,
            new_scopes=[str(x) for x in row.scopes],
            new_expires_at=None if lifetime is None else now + lifetime,
        )


def rotate_api_key(
    ctl: Control,
    key: str,
    *,
    grace_ms: int,
    tenant: str | None = None,
    within: frozenset[str] | None = None,
) -> tuple[ApiKeyPublic, str]:
    """Replace a key by a new one with the same tenant, name, scopes and lifetime.

    The old key keeps working until now + ``grace_ms`` (or its own expiry, if sooner), so the
    clients using it can switch; it records the new key in ``replaced_by``.

    Args:
        key: the old key's id or prefix.
        grace_ms: how long the old key stays valid, in milliseconds (0: not at all).
        tenant: only a key of this tenant (another tenant's is NotFound).
        within: the scopes of the API key asking, if one asks: the new key's (the old key's)
            must not be wider (Forbidden).
    """
    check_grace(grace_ms)
    now = _now()
    with ctl.catalog() as s:
        old, slug = _find(s, key, lock=True, tenant=tenant)
        _check_rotatable(old, now)
        if within is not None:
            check_within([str(x) for x in old.scopes], within)
        lifetime = _lifetime(old)
        new, token = _insert(
            s,
            tenant_id=old.tenant_id,
            name=old.name,
            scopes=[str(x) for x in old.scopes],
            now=now,
            expires_at=None if lifetime is None else now + lifetime,
        )
        old.expires_at = _old_valid_until(old, now, grace_ms)
        old.replaced_by = new.id
        auth_changed(s, prefix=old.prefix)
        return _public(new, slug, now), token


def verify_api_key(ctl: Control, token: str, *, tenant: str | None) -> ApiKeyPublic:
    """The key behind a bearer token (see :func:`authenticate_api_key`)."""
    return authenticate_api_key(ctl, token, tenant=tenant)[0]


def authenticate_api_key(
    ctl: Control, token: str, *, tenant: str | None, cached: bool = False
) -> tuple[ApiKeyPublic, RouteInfo]:
    """The key behind a bearer token, if it is valid for ``tenant`` (None: the key's own
    tenant, as the API server asks), and its tenant's route read in the same catalog
    transaction (what the API needs to serve the request); records its use.

    ``cached``: the record may come from this process's cache (the API server; see
    :mod:`bizosctl.security.keycache`): the secret is checked against its hash all the same.

    Raises:
        Unauthorized: the token is malformed, unknown, revoked or expired (one message).
        Forbidden: the key is valid but belongs to another tenant.
        TenantSuspended: the key is valid but its tenant is suspended.
    """
    prefix, digest = _parse_token(token)
    cache = key_cache(ctl) if cached else None
    epoch = 0
    if cache is not None:
        epoch = cache.epoch
        hit = _from_cache(cache, prefix, digest, tenant)
        if hit is not None:
            return hit
    found = _authenticate_retrying(ctl, prefix, digest, tenant, _now())
    if cache is not None:
        cache.put(epoch, digest, *found)
    return found


def cached_api_key(ctl: Control, token: str) -> tuple[ApiKeyPublic, RouteInfo] | None:
    """:func:`authenticate_api_key` for the API (``tenant=None``, ``cached=True``) when this
    process's cache can answer without the catalog (no I/O: the event loop may call it);
    None when it cannot."""
    cache = key_cache(ctl)
    if cache is None:
        return None
    prefix, digest = _parse_token(token)
    return _from_cache(cache, prefix, digest, None)


def _parse_token(token: str) -> tuple[str, str]:
    """The prefix and the secret's hash of a well-formed token."""
    match = TOKEN_RE.fullmatch(token)
    if match is None:
        raise Unauthorized(INVALID_KEY)
    prefix, secret = match.groups()
    return prefix, _hash(secret)


def _from_cache(
    cache: KeyCache, prefix: str, digest: str, tenant: str | None
) -> tuple[ApiKeyPublic, RouteInfo] | None:
    hit = cache.get(prefix)
    if hit is None:
        return None
    # the secret is checked on every request: the cache keeps its hash, never its verdict
    if not hmac.compare_digest(hit.secret_hash, digest):
        raise Unauthorized(INVALID_KEY)
    key, now = hit.key, _now()
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized(INVALID_KEY)
    # the once-a-minute last_used_at write is the catalog read's
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
        return None
    _admit(key.tenant, hit.route.status, tenant)
    return key, hit.route


def _authenticate_retrying(
    ctl: Control, prefix: str, digest: str, tenant: str | None, now: dt.datetime
) -> tuple[ApiKeyPublic, RouteInfo]:
    # One statement, outside a transaction (a read needs no BEGIN/COMMIT round trips): the
    # key, its tenant and the tenant's route. This runs on every API request, so its pooled
    # connection is not pinged first: a dead one (the server restarted) is retried once.
    # The statement goes through the driver's cursor: SQLAlchemy's result processing of its
    # twenty columns was a fifth of the request's own work.
    import psycopg

    engine = ctl.catalog_engine_unpinged
    with translate_errors("catalog"):
        for attempt in (1, 2):
            try:
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    try:
                        return _authenticate(ctl, conn, prefix, digest, tenant, now)
                    except psycopg.OperationalError:
                        if conn.connection.driver_connection.closed:  # type: ignore[union-attr]
                            conn.invalidate()  # not back into the pool
                        raise
            except DBAPIError as exc:
                if attempt == 2 or not is_disconnect(exc):
                    raise
            except psycopg.OperationalError as exc:
                if attempt == 2 or not is_disconnect(exc):
                    raise
    raise AssertionError("unreachable")


def _authenticate(
    ctl: Control,
    conn: Connection,
    prefix: str,
    digest: str,
    tenant: str | None,
    now: dt.datetime,
) -> tuple[ApiKeyPublic, RouteInfo]:
    from psycopg.rows import namedtuple_row

    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor(row_factory=namedtuple_row) as cur:
        row = cur.execute(_AUTH_SQL, {"prefix": prefix}).fetchone()
    matches = hmac.compare_digest(row.secret_hash if row else _NO_HASH, digest)
    if row is None or not matches or _row_status(row, now) != "active":
        raise Unauthorized(INVALID_KEY)
    slug = row.slug
    _admit(slug, row.status, tenant)
    # At most one write a minute per key: concurrent requests with one key must not queue
    # on its row.
    last_used = row.last_used_at
    if last_used is None or now - last_used > LAST_USED_EVERY:
        with raw.cursor() as cur:
            cur.execute(
                "UPDATE api_keys SET last_used_at = %(now)s WHERE id = %(id)s",
                {"now": now, "id": row.key_id},
            )
        last_used = now
    public = ApiKeyPublic(
        id=row.key_id,
        tenant=slug,
        name=row.name,
        prefix=prefix,
        scopes=[str(x) for x in row.scopes],
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=None,
        last_used_at=last_used,
        replaced_by=row.replaced_by,
        status="active",
    )
    return public, ctl.route_from_row(row)


def _admit(slug: str, status: str, tenant: str | None) -> None:
    """Refuse a valid key asked for another tenant, or of a suspended tenant."""
    if tenant is not None and slug != tenant:
        raise Forbidden(f"this API key does not belong to tenant {tenant!r}")
    if status == "suspended":
        raise TenantSuspended(f"tenant {slug!r} is suspended: its API keys are refused")


_AUTH_SQL = (
    f"SELECT k.id AS key_id, k.name, k.secret_hash, k.scopes, k.created_at, k.expires_at, "
    f"k.revoked_at, k.last_used_at, k.replaced_by, {ROUTE_COLUMNS} "
    f"FROM api_keys AS k JOIN {ROUTE_JOIN} ON t.id = k.tenant_id "
    "WHERE k.prefix = %(prefix)s AND t.status <> 'deleted'"
)


def _row_status(row: Any, now: dt.datetime) -> Status:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"
