"""Sending webhooks: signed, to the address that was checked, no redirects, retried.

The host is resolved once and every address it gives is checked (``targets.pinned_address``);
the connection then goes to that address, with the URL's host in ``Host`` and, for https, in
SNI and the certificate check. A DNS answer that changes between the check and the connect
(rebinding) therefore cannot send the request elsewhere. Redirects are not followed: a
``302`` to the metadata service is just a ``302``.

The catalog's deliveries (made by ``bizosctl.notify.relay``) are sent by :func:`deliver_due`
and :func:`attempt`: claimed under a lease, sent with the event id as ``webhook-id``, every
attempt recorded, retried on the schedule :data:`SCHEDULE_S`, the endpoint disabled on ``410``
or after 5 days of failures.
"""

from __future__ import annotations

import datetime as dt
import http.client
import random
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from bizosctl.catalog.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from bizosctl.errors import BizosError, InvalidInput, NotFound, OperationFailed
from bizosctl.faults import crash_point
from bizosctl.notify.targets import pinned_address
from bizosctl.notify.webhooks import (
    _endpoint_uuid,
    check_url,
    live_secrets,
    sign,
    signed_headers,
)

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings

TIMEOUT_S = 15.0
EXCERPT_MAX = 256  # bytes of the response body kept with each attempt


class Response(BaseModel):
    """What one request got back: any HTTP status (redirects are not followed)."""

    address: str
    status: int
    excerpt: str


def clean_excerpt(raw: bytes) -> str:
    """The start of a response body as one line of printable text: control characters (a
    terminal escape in ``webhook deliveries``) become spaces."""
    text = raw[:EXCERPT_MAX].decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()


class DeliveryResult(BaseModel):
    endpoint: uuid.UUID
    msg_id: str
    address: str  # where the request went (the pinned address)
    status: int


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()  # verifies the certificate for ``host``
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def post(
    url: str,
    *,
    payload: bytes,
    headers: dict[str, str],
    settings: Settings,
    timeout_s: float = TIMEOUT_S,
) -> Response:
    """POST ``payload`` to ``url``: the host checked and pinned now, no redirect followed.

    Raises InvalidInput when the URL or its host's addresses are (now) not allowed,
    OperationFailed when the receiver cannot be reached or does not answer in ``timeout_s``.
    """
    check_url(url, settings)  # the rules may have changed since it was added
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = str(pinned_address(host, port, settings))
    cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = cls(host, port, address, timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(
            "POST",
            path,
            body=payload,
            headers={**headers, "content-type": "application/json", "user-agent": "bizosctl"},
        )
        resp = conn.getresponse()
        raw = resp.read(EXCERPT_MAX)
    except TimeoutError as exc:
        raise OperationFailed(
            f"webhook delivery to {host} ({address}) timed out after {timeout_s:g} s"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise OperationFailed(
            f"webhook delivery to {host} ({address}) failed: {type(exc).__name__}"
        ) from exc
    except ValueError as exc:  # e.g. a path http.client refuses
        raise InvalidInput(f"webhook URL cannot be requested: {exc}") from exc
    finally:
        conn.close()
    return Response(address=address, status=resp.status, excerpt=clean_excerpt(raw))


def deliver(
    ctl: Control,
    endpoint_id: uuid.UUID | str,
    *,
    payload: bytes,
    msg_id: str | None = None,
    timeout_s: float = TIMEOUT_S,
) -> DeliveryResult:
    """POST ``payload`` (JSON bytes) to the endpoint, signed with its live secrets, once.

    Args:
        endpoint_id: the endpoint's id.
        payload: the exact request body.
        msg_id: the message's id, the same on every retry (default: a new one).
        timeout_s: connect and read timeout.

    Raises InvalidInput when the URL's host is (now) not allowed, OperationFailed when the
    receiver cannot be reached. Any HTTP status is returned, not raised.
    """
    eid = _endpoint_uuid(endpoint_id)
    with ctl.catalog() as s:
        url = s.execute(
            select(WebhookEndpoint.url).where(WebhookEndpoint.id == eid)
        ).scalar_one_or_none()
    if url is None:
        raise NotFound(f"no webhook endpoint {str(endpoint_id)!r}")
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    check_url(url, ctl.settings)
    headers = sign(ctl, eid, msg_id=msg_id, timestamp=int(time.time()), payload=payload)
    resp = post(url, payload=payload, headers=headers, settings=ctl.settings, timeout_s=timeout_s)
    return DeliveryResult(endpoint=eid, msg_id=msg_id, address=resp.address, status=resp.status)


# -- deliveries: claim, send, record ------------------------------------------------------------
#: Seconds before the n-th attempt (the first at once), each but the first with +-10 % jitter.
SCHEDULE_S = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.1
#: How long a claim holds a delivery: longer than a request may take. A worker killed while
#: sending leaves the delivery due again when it ends, to be sent with the same webhook-id.
LEASE_S = 60
DISABLE_AFTER = dt.timedelta(days=5)
CONCURRENCY = 8

_CLAIM = """
UPDATE webhook_deliveries AS d SET attempts = d.attempts + 1, next_attempt_at = :lease_end
FROM webhook_endpoints AS w
WHERE w.id = d.endpoint_id AND d.id IN (
  SELECT c.id FROM webhook_deliveries AS c JOIN webhook_endpoints AS e ON e.id = c.endpoint_id
  WHERE c.status = 'pending' AND c.next_attempt_at <= :now AND e.disabled_at IS NULL {only}
  ORDER BY c.next_attempt_at LIMIT :limit FOR UPDATE OF c SKIP LOCKED)
RETURNING d.id, d.event_id, d.endpoint_id, d.payload, d.attempts, w.url, w.secrets
"""
CLAIM_DUE = text(_CLAIM.format(only=""))
CLAIM_ONE = text(_CLAIM.format(only="AND c.id = :id"))
_FAIL_ENDPOINT = text(
    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, :now) "
    "WHERE id = :id RETURNING failing_since, disabled_at"
)
_DISABLE = text(
    "UPDATE webhook_endpoints SET disabled_at = :now, disabled_reason = :why "
    "WHERE id = :id AND disabled_at IS NULL RETURNING id"
)


class Outcome(BaseModel):
    """What became of one delivery after an attempt (or why none was made)."""

    delivery: uuid.UUID
    event_id: str | None = None
    # delivered | retry (pending, due at next_attempt_at) | failed | skipped (not due now)
    result: str
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: dt.datetime | None = None
    endpoint_disabled: str | None = None  # why, when this attempt disabled the endpoint


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_delay_s(attempts: int, *, rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after ``attempts`` tries; None when they are exhausted."""
    if attempts >= len(SCHEDULE_S):
        return None
    base = SCHEDULE_S[attempts]
    return base * (1 + (rng or random).uniform(-JITTER, JITTER))


def _claim(s: Session, now: dt.datetime, *, limit: int, only: uuid.UUID | None = None) -> list[Any]:
    params: dict[str, Any] = {
        "now": now,
        "lease_end": now + dt.timedelta(seconds=LEASE_S),
        "limit": limit,
    }
    if only is not None:
        params["id"] = only
    return list(s.execute(CLAIM_ONE if only is not None else CLAIM_DUE, params).all())


def _send(
    ctl: Control, row: Any, keys: list[str], timeout_s: float
) -> tuple[Response | None, str | None, int]:
    payload = row.payload.encode()
    headers = signed_headers(keys, msg_id=row.event_id, timestamp=int(time.time()), payload=payload)
    started = time.perf_counter()
    resp: Response | None = None
    error: str | None = None
    try:
        resp = post(
            row.url, payload=payload, headers=headers, settings=ctl.settings, timeout_s=timeout_s
        )
    except BizosError as exc:  # refused destination, unreachable, timed out
        error = exc.message
    crash_point("webhook.deliver.sent")  # sent (or failed), not yet recorded
    return resp, error, int((time.perf_counter() - started) * 1000)


def _record(
    ctl: Control,
    row: Any,
    resp: Response | None,
    error: str | None,
    latency_ms: int,
    now: dt.datetime,
) -> Outcome:
    code = resp.status if resp is not None else None
    if resp is not None and not 200 <= resp.status < 300:
        error = f"HTTP {resp.status}" + (
            " (redirect not followed)" if 300 <= resp.status < 400 else ""
        )
    out = Outcome(delivery=row.id, event_id=row.event_id, result="retry", status_code=code)
    with ctl.catalog() as s:
        s.add(
            WebhookAttempt(
                delivery_id=row.id,
                at=now,
                status_code=code,
                error=error,
                latency_ms=latency_ms,
                response_excerpt=resp.excerpt if resp is not None else None,
            )
        )
        values: dict[str, Any] = {"last_status": code, "last_error": error}
        if code is not None and 200 <= code < 300:
            out.result = "delivered"
            values.update(status="delivered", delivered_at=now, next_attempt_at=None)
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == row.endpoint_id)
                .values(failing_since=None)
            )
        else:
            out.error = error
            why = None
            if code == 410:
                why = "the receiver answered 410 Gone"
            else:
                since, disabled = s.execute(
                    _FAIL_ENDPOINT, {"now": now, "id": row.endpoint_id}
                ).one()
                if disabled is None and now - since >= DISABLE_AFTER:
                    why = f"every delivery failed for 5 days (since {since:%Y-%m-%d %H:%M} UTC)"
            if why is not None:
                params = {"now": now, "id": row.endpoint_id, "why": why}
                if s.execute(_DISABLE, params).first() is not None:
                    out.endpoint_disabled = why
            delay = None if code == 410 else next_delay_s(row.attempts)
            if delay is None:
                out.result = "failed"
                values.update(status="failed", next_attempt_at=None)
            else:
                out.next_attempt_at = now + dt.timedelta(seconds=delay)
                values.update(next_attempt_at=out.next_attempt_at)
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(**values))
    return out


def _keys_by_endpoint(ctl: Control, rows: list[Any]) -> dict[uuid.UUID, list[str] | str]:
    """Each endpoint's live secrets, unsealed once per batch (or why there are none)."""
    out: dict[uuid.UUID, list[str] | str] = {}
    for row in rows:
        if row.endpoint_id not in out:
            try:
                out[row.endpoint_id] = live_secrets(ctl, row.endpoint_id, row.secrets)
            except BizosError as exc:
                out[row.endpoint_id] = exc.message
    return out


def _run(
    ctl: Control,
    row: Any,
    keys: list[str] | str,
    now: dt.datetime | None,
    timeout_s: float = TIMEOUT_S,
) -> Outcome:
    if isinstance(keys, str):  # no live secret: nothing can be signed
        return _record(ctl, row, None, keys, 0, now or _utcnow())
    resp, error, latency_ms = _send(ctl, row, keys, timeout_s)
    return _record(ctl, row, resp, error, latency_ms, now or _utcnow())


def deliver_due(
    ctl: Control,
    *,
    limit: int = 100,
    now: dt.datetime | None = None,
    concurrency: int = CONCURRENCY,
    timeout_s: float = TIMEOUT_S,
) -> int:
    """Claim up to ``limit`` due deliveries and attempt each; returns how many were attempted.

    The claim is one short transaction (``FOR UPDATE SKIP LOCKED``: any number of workers may
    run this at once, none claims what another holds) that counts the attempt and moves the
    delivery's next time to the end of a lease; the requests then run ``concurrency`` at a
    time, and each outcome is recorded in its own transaction.

    Args:
        limit: at most this many deliveries.
        now: the time to decide what is due and when to retry (tests); default the clock.
        concurrency: requests in flight at once.
        timeout_s: connect and read timeout of each request.
    """
    at = now or _utcnow()
    with ctl.catalog() as s:
        rows = _claim(s, at, limit=limit)
    if not rows:
        return 0
    keys = _keys_by_endpoint(ctl, rows)
    if len(rows) == 1 or concurrency <= 1:
        for row in rows:
            _run(ctl, row, keys[row.endpoint_id], now, timeout_s)
        return len(rows)
    with ThreadPoolExecutor(max_workers=min(concurrency, len(rows))) as pool:
        for future in [
            pool.submit(_run, ctl, r, keys[r.endpoint_id], now, timeout_s) for r in rows
        ]:
            future.result()
    return len(rows)


def attempt(
    ctl: Control,
    delivery_id: uuid.UUID | str,
    *,
    now: dt.datetime | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Outcome:
    """Attempt one delivery if it is due and no one else holds it; NotFound if there is none.

    Returns the outcome; ``skipped`` (with the delivery's next time, if pending) when it was not
    due, is held by another attempt, is finished, or its endpoint is disabled.
    """
    did = delivery_uuid(delivery_id)
    at = now or _utcnow()
    with ctl.catalog() as s:
        rows = _claim(s, at, limit=1, only=did)
        if not rows:
            current = s.execute(
                select(WebhookDelivery.status, WebhookDelivery.next_attempt_at).where(
                    WebhookDelivery.id == did
                )
            ).one_or_none()
    if not rows:
        if current is None:
            raise NotFound(f"no webhook delivery {str(delivery_id)!r}")
        return Outcome(
            delivery=did,
            result="skipped",
            next_attempt_at=current.next_attempt_at if current.status == "pending" else None,
        )
    row = rows[0]
    return _run(ctl, row, _keys_by_endpoint(ctl, rows)[row.endpoint_id], now, timeout_s)


def delivery_uuid(delivery_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(delivery_id, uuid.UUID):
        return delivery_id
    try:
        return uuid.UUID(delivery_id)
    except ValueError:
        raise NotFound(f"no webhook delivery {delivery_id!r}") from None
