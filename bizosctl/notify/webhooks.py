"""Webhook endpoints of tenants and their signing secrets, after the Standard Webhooks spec.

See https://www.standardwebhooks.com/: a secret is ``whsec_`` and the base64 of 24-64 random
bytes (we make 32). Each delivery carries ``webhook-id``, ``webhook-timestamp`` (unix seconds)
and ``webhook-signature``, a space-separated list of ``v1,<base64 HMAC-SHA256>`` over
``{id}.{timestamp}.{payload}``, keyed with the decoded secret.

An endpoint keeps its live secrets, newest first, each sealed with the keyring and bound to
the endpoint. Rotation adds a secret and gives the previous ones an expiry; until then every
delivery is signed with all of them, so a receiver verifies with the old or the new secret
while it switches.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import Text, select
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control
from bizosctl.catalog.lookups import live_tenant_id
from bizosctl.catalog.models import Tenant, WebhookEndpoint
from bizosctl.config import Settings, get_settings
from bizosctl.errors import InvalidInput, InvalidSignature, NotFound, OperationFailed
from bizosctl.notify.targets import check_host

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
EVENT_RE = re.compile(r"[a-z]+(\.[a-z_]+)+")
MSG_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
URL_MAX = 2048
MAX_OVERLAP_MS = 30 * 86_400_000
TOLERANCE_S = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}


class WebhookSecretInfo(BaseModel):
    """When a live secret was made and when it stops signing (never its value)."""

    created_at: dt.datetime
    expires_at: dt.datetime | None


class EndpointCreate(BaseModel):
    """A validated request for a new endpoint (what ``--dry-run`` shows)."""

    tenant: str
    url: str
    events: list[str]


class EndpointPublic(BaseModel):
    id: uuid.UUID
    tenant: str
    url: str
    events: list[str]
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    secrets: list[WebhookSecretInfo]


class SecretRotationPlan(BaseModel):
    """What ``rotate_secret`` would do: until when the current secrets keep signing."""

    endpoint: EndpointPublic
    previous_valid_until: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _context(endpoint_id: uuid.UUID) -> str:
    return f"webhook:{endpoint_id}"


def _expires(entry: Mapping[str, Any]) -> dt.datetime | None:
    value = entry.get("expires_at")
    return None if value is None else dt.datetime.fromisoformat(value)


def _live(entries: list[Any], now: dt.datetime) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        expires = _expires(entry)
        if expires is None or expires > now:
            out.append(dict(entry))
    return out


def _public(ep: WebhookEndpoint, slug: str, now: dt.datetime) -> EndpointPublic:
    return EndpointPublic(
        id=ep.id,
        tenant=slug,
        url=ep.url,
        events=[str(e) for e in ep.events],
        created_at=ep.created_at,
        disabled_at=ep.disabled_at,
        secrets=[
            WebhookSecretInfo(
                created_at=dt.datetime.fromisoformat(e["created_at"]), expires_at=_expires(e)
            )
            for e in _live(ep.secrets, now)
        ],
    )


# -- validation -------------------------------------------------------------------------------
def check_url(url: str, settings: Settings | None = None) -> str:
    """An http(s) URL with a host; plain http only on loopback; no credentials in it; outside
    development a public host only (see ``bizosctl.notify.targets``)."""
    bad = f"invalid webhook URL {url!r}: use https://host[:port]/path"
    if not url or len(url) > URL_MAX or any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidInput(bad)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise InvalidInput(bad) from None
    if "@" in parts.netloc:
        # Not echoed: the URL holds a password.
        raise InvalidInput("webhook URL must not contain a user name or password")
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput(bad)
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise InvalidInput(
            f"webhook URL {url!r} must use https (plain http only for localhost or 127.0.0.1)"
        )
    check_host(host, parts.port or _DEFAULT_PORTS[parts.scheme], settings or get_settings())
    return url


def check_events(events: list[str]) -> list[str]:
    """Event names like ``invoice.paid``; at least one; duplicates dropped."""
    out: list[str] = []
    for event in events:
        if not EVENT_RE.fullmatch(event):
            raise InvalidInput(
                f"invalid event name {event!r}: use lowercase dotted names like invoice.paid"
            )
        if event not in out:
            out.append(event)
    if not out:
        raise InvalidInput("give at least one event, e.g. invoice.paid")
    return out


def check_overlap(overlap_ms: int) -> int:
    if overlap_ms < 0:
        raise InvalidInput("grace period must not be negative")
    if overlap_ms > MAX_OVERLAP_MS:
        raise InvalidInput("grace period must be at most 30d")
    return overlap_ms


def _endpoint_uuid(endpoint_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(endpoint_id, uuid.UUID):
        return endpoint_id
    try:
        return uuid.UUID(endpoint_id)
    except ValueError:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}") from None


_ID_PREFIX = re.compile(r"^[0-9a-f-]{4,36}$")


def resolve_endpoint_id(ctl: Control, ref: str) -> uuid.UUID:
    """The endpoint a full id or a unique prefix of it (at least 4 characters) names, as
    ``webhook list`` shows them. NotFound when none matches; InvalidInput when several do."""
    try:
        return uuid.UUID(ref)
    except ValueError:
        pass
    prefix = ref.strip().lower()
    if not _ID_PREFIX.match(prefix):
        raise NotFound(
            f"no webhook endpoint {ref!r} (give its id, or at least 4 of its first characters)"
        )
    stmt = (
        select(WebhookEndpoint.id)
        .join(Tenant, Tenant.id == WebhookEndpoint.tenant_id)
        .where(
            WebhookEndpoint.id.cast(Text).startswith(prefix, autoescape=True),
            Tenant.status != "deleted",
        )
        .limit(2)
    )
    with ctl.catalog() as s:
        ids = list(s.execute(stmt).scalars())
    if not ids:
        raise NotFound(f"no webhook endpoint {ref!r}")
    if len(ids) > 1:
        raise InvalidInput(f"{ref!r} names more than one webhook endpoint: give more of its id")
    return ids[0]


def _find(
    s: Session, endpoint_id: uuid.UUID | str, *, lock: bool = False, tenant: str | None = None
) -> tuple[WebhookEndpoint, str]:
    """The endpoint (of a live tenant; of ``tenant`` only, when given: another tenant's is
    as unknown as a made-up id) and its tenant's slug."""
    eid = _endpoint_uuid(endpoint_id)
    stmt = (
        select(WebhookEndpoint, Tenant.slug)
        .join(Tenant, Tenant.id == WebhookEndpoint.tenant_id)
        .where(WebhookEndpoint.id == eid, Tenant.status != "deleted")
    )
    if tenant is not None:
        stmt = stmt.where(Tenant.slug == tenant)
    if lock:
        # secrets is read, changed and written back: two rotations must not interleave.
        stmt = stmt.with_for_update(of=WebhookEndpoint)
    row = s.execute(stmt).one_or_none()
    if row is None:
        raise NotFound(f"no webhook endpoint {str(endpoint_id)!r}")
    return row[0], row[1]


# -- secrets and signatures -------------------------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    try:
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError(secret)
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (ValueError, binascii.Error):
        raise InvalidInput("invalid webhook secret: expected whsec_<base64>") from None
    if not 24 <= len(key) <= 64:
        raise InvalidInput("invalid webhook secret: the key must be 24 to 64 bytes")
    return key


def signature(secret: str, *, msg_id: str, timestamp: int, payload: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of one message under one secret."""
    content = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _seal_entry(ctl: Control, endpoint_id: uuid.UUID, secret: str, now: dt.datetime) -> Any:
    return {
        "secret_enc": ctl.seal(secret, context=_context(endpoint_id)),
        "created_at": now.isoformat(),
        "expires_at": None,
    }


# -- verbs ------------------------------------------------------------------------------------
def plan_endpoint(ctl: Control, *, tenant: str, url: str, events: list[str]) -> EndpointCreate:
    """Validate a new endpoint without adding it (``--dry-run``)."""
    request = EndpointCreate(
        tenant=tenant, url=check_url(url, ctl.settings), events=check_events(events)
    )
    with ctl.catalog() as s:
        live_tenant_id(s, tenant)
    return request


def add_endpoint(
    ctl: Control, *, tenant: str, url: str, events: list[str]
) -> tuple[EndpointPublic, str]:
    """Add an endpoint for a tenant; returns it and its first secret, never shown again.

    Args:
        tenant: the tenant's slug.
        url: where deliveries go; https, or http on localhost / 127.0.0.1.
        events: event names like ``invoice.paid``; at least one.
    """
    url = check_url(url, ctl.settings)
    events = check_events(events)
    now = _now()
    endpoint_id = uuid.uuid4()
    secret = new_secret()
    entry = _seal_entry(ctl, endpoint_id, secret, now)
    with ctl.catalog() as s:
        ep = WebhookEndpoint(
            id=endpoint_id,
            tenant_id=live_tenant_id(s, tenant),
            url=url,
            events=events,
            secrets=[entry],
            created_at=now,
        )
        s.add(ep)
        s.flush()
        return _public(ep, tenant, now), secret


def list_endpoints(ctl: Control, *, tenant: str | None = None) -> list[EndpointPublic]:
    """Endpoints of every live tenant, or of one tenant (by slug), oldest first. No secrets."""
    now = _now()
    stmt = (
        select(WebhookEndpoint, Tenant.slug)
        .join(Tenant, Tenant.id == WebhookEndpoint.tenant_id)
        .where(Tenant.status != "deleted")
        .order_by(Tenant.slug, WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    with ctl.catalog() as s:
        if tenant is not None:
            stmt = stmt.where(WebhookEndpoint.tenant_id == live_tenant_id(s, tenant))
        return [_public(ep, slug, now) for ep, slug in s.execute(stmt).all()]


def get_endpoint(
    ctl: Control, endpoint_id: uuid.UUID | str, *, tenant: str | None = None
) -> EndpointPublic:
    """One endpoint (of ``tenant`` only, when given)."""
    with ctl.catalog() as s:
        ep, slug = _find(s, endpoint_id, tenant=tenant)
        return _public(ep, slug, _now())


DISABLED_BY_TENANT = "disabled by the tenant"


def update_endpoint(
    ctl: Control,
    endpoint_id: uuid.UUID | str,
    *,
    tenant: str | None = None,
    url: str | None = None,
    events: list[str] | None = None,
    enabled: bool | None = None,
) -> EndpointPublic:
    """Change an endpoint's URL or events, or disable / re-enable it (None: unchanged).

    Re-enabling clears why it was disabled (a 410, days of failures, the tenant): its pending
    deliveries go out again on their schedule; failed ones wait for a replay.

    Args:
        tenant: only an endpoint of this tenant (another tenant's is NotFound).
    """
    url = None if url is None else check_url(url, ctl.settings)
    events = None if events is None else check_events(events)
    now = _now()
    with ctl.catalog() as s:
        ep, slug = _find(s, endpoint_id, lock=True, tenant=tenant)
        if url is not None:
            ep.url = url
        if events is not None:
            ep.events = events
        if enabled is True and ep.disabled_at is not None:
            ep.disabled_at, ep.disabled_reason, ep.failing_since = None, None, None
        elif enabled is False and ep.disabled_at is None:
            ep.disabled_at, ep.disabled_reason = now, DISABLED_BY_TENANT
        s.flush()
        return _public(ep, slug, now)


def delete_endpoint(
    ctl: Control, endpoint_id: uuid.UUID | str, *, tenant: str | None = None
) -> None:
    """Remove an endpoint with its deliveries and their attempts."""
    with ctl.catalog() as s:
        ep, _slug = _find(s, endpoint_id, lock=True, tenant=tenant)
        s.delete(ep)


def plan_secret_rotation(
    ctl: Control, endpoint_id: uuid.UUID | str, *, overlap_ms: int
) -> SecretRotationPlan:
    """What ``rotate_secret`` would do, changing nothing (``--dry-run``)."""
    check_overlap(overlap_ms)
    now = _now()
    with ctl.catalog() as s:
        ep, slug = _find(s, endpoint_id)
        return SecretRotationPlan(
            endpoint=_public(ep, slug, now),
            previous_valid_until=now + dt.timedelta(milliseconds=overlap_ms),
        )


def rotate_secret(
    ctl: Control, endpoint_id: uuid.UUID | str, *, overlap_ms: int, tenant: str | None = None
) -> tuple[EndpointPublic, str]:
    """Give an endpoint a new secret; the current ones keep signing for ``overlap_ms``.

    Secrets already expired are dropped. A secret that expires sooner than the overlap keeps
    its own expiry. Returns the endpoint and the new secret, never shown again.

    Args:
        endpoint_id: the endpoint's id.
        overlap_ms: how long the previous secrets still sign, in milliseconds.
        tenant: only an endpoint of this tenant (another tenant's is NotFound).
    """
    check_overlap(overlap_ms)
    eid = _endpoint_uuid(endpoint_id)
    now = _now()
    end = now + dt.timedelta(milliseconds=overlap_ms)
    secret = new_secret()
    fresh = _seal_entry(ctl, eid, secret, now)
    with ctl.catalog() as s:
        ep, slug = _find(s, eid, lock=True, tenant=tenant)
        previous = []
        for entry in _live(ep.secrets, now):
            expires = _expires(entry)
            entry["expires_at"] = (end if expires is None else min(expires, end)).isoformat()
            previous.append(entry)
        # A new list: the JSONB column is not tracked for in-place changes.
        ep.secrets = [fresh, *previous]
        s.flush()
        return _public(ep, slug, now), secret


def sign(
    ctl: Control, endpoint_id: uuid.UUID | str, *, msg_id: str, timestamp: int, payload: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery, signed with every live secret.

    Args:
        msg_id: the message's unique id (the same on every retry), e.g. ``msg_2Kw...``.
        timestamp: when the delivery is attempted, in unix seconds.
        payload: the exact bytes of the request body.
    """
    if not MSG_ID_RE.fullmatch(msg_id):
        raise InvalidInput(
            f"invalid webhook message id {msg_id!r}: use 1-255 letters, digits, '_' or '-'"
        )
    if timestamp < 0:
        raise InvalidInput("webhook timestamp must not be negative")
    with ctl.catalog() as s:
        ep, _slug = _find(s, endpoint_id)
        keys = live_secrets(ctl, ep.id, ep.secrets)
    return signed_headers(keys, msg_id=msg_id, timestamp=timestamp, payload=payload)


def live_secrets(
    ctl: Control, endpoint_id: uuid.UUID, entries: list[Any], *, now: dt.datetime | None = None
) -> list[str]:
    """The endpoint's live secrets in clear, newest first (``entries``: its ``secrets`` column).
    OperationFailed when none is live."""
    live = _live(entries, now or _now())
    if not live:
        raise OperationFailed(f"webhook endpoint {endpoint_id} has no live secret: rotate it")
    return [ctl.unseal(e["secret_enc"], context=_context(endpoint_id)) for e in live]


def signed_headers(
    keys: list[str], *, msg_id: str, timestamp: int, payload: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers, one ``v1,`` signature per secret in ``keys``."""
    signatures = [
        signature(key, msg_id=msg_id, timestamp=timestamp, payload=payload) for key in keys
    ]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    payload: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> None:
    """The receiver's check of one delivery; raises InvalidSignature unless it verifies.

    Args:
        secret: the receiver's ``whsec_...`` secret.
        headers: the request's headers (any case).
        payload: the exact bytes of the request body.
        tolerance_s: how far the timestamp may be from ``now``, either way (replays).
        now: the current unix time (default: the clock).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
    missing = [n for n in names if not lower.get(n)]
    if missing:
        raise InvalidSignature(f"missing header(s): {', '.join(missing)}")
    msg_id, raw_ts, signatures = (lower[n] for n in names)
    if not re.fullmatch(r"[0-9]{1,12}", raw_ts):
        raise InvalidSignature(f"invalid webhook-timestamp {raw_ts!r}")
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if current - timestamp > tolerance_s:
        raise InvalidSignature(f"webhook timestamp is too old (more than {tolerance_s} s)")
    if timestamp - current > tolerance_s:
        raise InvalidSignature(
            f"webhook timestamp is too far in the future (more than {tolerance_s} s)"
        )
    expected = signature(secret, msg_id=msg_id, timestamp=timestamp, payload=payload)
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise InvalidSignature("no webhook signature matches")
