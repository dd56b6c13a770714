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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from bizosctl.catalog.models import WebhookDelivery, WebhookEndpoint
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


def _no_delay(sock: socket.socket) -> None:
    # As http.client's own connect does: headers and body leave in two writes, and with Nagle
    # the second waits for the receiver's delayed ACK (40 ms per request on a kept-alive one).
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        _no_delay(self.sock)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()  # verifies the certificate for ``host``
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        _no_delay(raw)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


KEEP_ALIVE_BODY_MAX = 64 * 1024  # a longer response body closes the connection instead


class Sender:
    """POSTs over kept-alive connections, one per origin, each to the address checked and
    pinned when it was opened (a batch of deliveries to one receiver pays one handshake, and
    the destination is checked again for every new connection). Not thread-safe: one per
    thread. Redirects are never followed."""

    def __init__(self, settings: Settings, *, timeout_s: float = TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._conns: dict[tuple[str, str, int], tuple[http.client.HTTPConnection, str]] = {}

    def _open(self, scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, str]:
        address = str(pinned_address(host, port, self.settings))
        cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        return cls(host, port, address, self.timeout_s), address

    def post(self, url: str, *, payload: bytes, headers: dict[str, str]) -> Response:
        """POST ``payload`` to ``url``; any HTTP status is returned.

        Raises InvalidInput when the URL or its host's addresses are (now) not allowed,
        OperationFailed when the receiver cannot be reached or does not answer in time.
        """
        check_url(url, self.settings)  # the rules may have changed since it was added
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        full = {**headers, "content-type": "application/json", "user-agent": "bizosctl"}
        reused = key in self._conns
        conn, address = self._conns.pop(key) if reused else self._open(*key)
        try:
            try:
                conn.request("POST", path, body=payload, headers=full)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The receiver closed the idle connection: once more on a new one (at least
                # once: the receiver may see this webhook-id twice, which it is told to expect).
                conn.close()
                conn, address = self._open(*key)
                conn.request("POST", path, body=payload, headers=full)
                resp = conn.getresponse()
            raw = resp.read(EXCERPT_MAX)
            rest = resp.read(KEEP_ALIVE_BODY_MAX)
            if resp.will_close or len(rest) == KEEP_ALIVE_BODY_MAX:
                conn.close()
            else:
                self._conns[key] = (conn, address)
        except TimeoutError as exc:
            conn.close()
            raise OperationFailed(
                f"webhook delivery to {host} ({address}) timed out after {self.timeout_s:g} s"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise OperationFailed(
                f"webhook delivery to {host} ({address}) failed: {type(exc).__name__}"
            ) from exc
        except ValueError as exc:  # e.g. a path http.client refuses
            conn.close()
            raise InvalidInput(f"webhook URL cannot be requested: {exc}") from exc
        return Response(address=address, status=resp.status, excerpt=clean_excerpt(raw))

    def close(self) -> None:
        for conn, _address in self._conns.values():
            conn.close()
        self._conns.clear()


def post(
    url: str,
    *,
    payload: bytes,
    headers: dict[str, str],
    settings: Settings,
    timeout_s: float = TIMEOUT_S,
) -> Response:
    """One POST on a connection of its own (see :class:`Sender`)."""
    sender = Sender(settings, timeout_s=timeout_s)
    try:
        return sender.post(url, payload=payload, headers=headers)
    finally:
        sender.close()


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


@dataclass
class _Sent:
    row: Any
    resp: Response | None
    error: str | None
    latency_ms: int


def _send(sender: Sender, row: Any, keys: list[str] | str) -> _Sent:
    if isinstance(keys, str):  # no live secret: nothing can be signed
        return _Sent(row, None, keys, 0)
    payload = row.payload.encode()
    headers = signed_headers(keys, msg_id=row.event_id, timestamp=int(time.time()), payload=payload)
    started = time.perf_counter()
    resp: Response | None = None
    error: str | None = None
    try:
        resp = sender.post(row.url, payload=payload, headers=headers)
    except BizosError as exc:  # refused destination, unreachable, timed out
        error = exc.message
    crash_point("webhook.deliver.sent")  # sent (or failed), not yet recorded
    return _Sent(row, resp, error, int((time.perf_counter() - started) * 1000))


_INSERT_ATTEMPTS = text(
    "INSERT INTO webhook_attempts (delivery_id, at, status_code, error, latency_ms, "
    "response_excerpt) SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[]), "
    "CAST(:codes AS int[]), CAST(:errors AS text[]), CAST(:latencies AS int[]), "
    "CAST(:excerpts AS text[]))"
)
_DELIVERED = text(
    "UPDATE webhook_deliveries AS d SET status = 'delivered', delivered_at = :now, "
    "next_attempt_at = NULL, last_status = u.code, last_error = NULL "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:codes AS int[])) AS u(id, code) WHERE d.id = u.id"
)
_HEALTHY = text(
    "UPDATE webhook_endpoints SET failing_since = NULL "
    "WHERE id = ANY(CAST(:ids AS uuid[])) AND failing_since IS NOT NULL"
)


def _failed(
    s: Session, sent: _Sent, code: int | None, error: str | None, now: dt.datetime
) -> Outcome:
    row = sent.row
    out = Outcome(
        delivery=row.id, event_id=row.event_id, result="retry", status_code=code, error=error
    )
    why = None
    if code == 410:
        why = "the receiver answered 410 Gone"
    else:
        since, disabled = s.execute(_FAIL_ENDPOINT, {"now": now, "id": row.endpoint_id}).one()
        if disabled is None and now - since >= DISABLE_AFTER:
            why = f"every delivery failed for 5 days (since {since:%Y-%m-%d %H:%M} UTC)"
    if why is not None:
        if s.execute(_DISABLE, {"now": now, "id": row.endpoint_id, "why": why}).first():
            out.endpoint_disabled = why
    values: dict[str, Any] = {"last_status": code, "last_error": error}
    delay = None if code == 410 else next_delay_s(row.attempts)
    if delay is None:
        out.result = "failed"
        values.update(status="failed", next_attempt_at=None)
    else:
        out.next_attempt_at = now + dt.timedelta(seconds=delay)
        values.update(next_attempt_at=out.next_attempt_at)
    s.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(**values))
    return out


def _record(ctl: Control, batch: list[_Sent], now: dt.datetime | None) -> list[Outcome]:
    """Every attempt of a batch and what follows from it, in one catalog transaction."""
    at = now or _utcnow()
    codes: list[int | None] = []
    errors: list[str | None] = []
    for sent in batch:
        code = sent.resp.status if sent.resp is not None else None
        error = sent.error
        if code is not None and not 200 <= code < 300:
            error = f"HTTP {code}" + (" (redirect not followed)" if 300 <= code < 400 else "")
        codes.append(code)
        errors.append(error)
    ok = [i for i, c in enumerate(codes) if c is not None and 200 <= c < 300]
    outcomes: list[Outcome] = []
    with ctl.catalog() as s:
        s.execute(
            _INSERT_ATTEMPTS,
            {
                "ids": [x.row.id for x in batch],
                "ats": [at] * len(batch),
                "codes": codes,
                "errors": errors,
                "latencies": [x.latency_ms for x in batch],
                "excerpts": [x.resp.excerpt if x.resp is not None else None for x in batch],
            },
        )
        if ok:
            s.execute(
                _DELIVERED,
                {"now": at, "ids": [batch[i].row.id for i in ok], "codes": [codes[i] for i in ok]},
            )
            s.execute(_HEALTHY, {"ids": list({batch[i].row.endpoint_id for i in ok})})
        for i, sent in enumerate(batch):
            if i in ok:
                outcomes.append(
                    Outcome(
                        delivery=sent.row.id,
                        event_id=sent.row.event_id,
                        result="delivered",
                        status_code=codes[i],
                    )
                )
            else:
                outcomes.append(_failed(s, sent, codes[i], errors[i], at))
    return outcomes


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


def _run_chunk(
    ctl: Control,
    rows: list[Any],
    keys: dict[uuid.UUID, list[str] | str],
    now: dt.datetime | None,
    timeout_s: float,
) -> list[Outcome]:
    sender = Sender(ctl.settings, timeout_s=timeout_s)
    try:
        sent = [_send(sender, row, keys[row.endpoint_id]) for row in rows]
    finally:
        sender.close()
    return _record(ctl, sent, now)


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
    delivery's next time to the end of a lease. The requests then run in up to
    ``concurrency`` threads, each over kept-alive connections; each thread records its
    attempts in one transaction. A crash before that leaves them to be sent again when the
    lease ends, with the same webhook-id.

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
    # Rows of one endpoint stay together (one connection), spread over the threads.
    rows.sort(key=lambda r: str(r.endpoint_id))
    n = max(1, min(concurrency, len(rows) // 8 or 1))
    size = -(-len(rows) // n)
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
    if len(chunks) == 1:
        _run_chunk(ctl, chunks[0], keys, now, timeout_s)
        return len(rows)
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        for future in [pool.submit(_run_chunk, ctl, c, keys, now, timeout_s) for c in chunks]:
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
    return _run_chunk(ctl, rows, _keys_by_endpoint(ctl, rows), now, timeout_s)[0]


def delivery_uuid(delivery_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(delivery_id, uuid.UUID):
        return delivery_id
    try:
        return uuid.UUID(delivery_id)
    except ValueError:
        raise NotFound(f"no webhook delivery {delivery_id!r}") from None
