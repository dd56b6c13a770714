"""Sending webhooks: signed, to the address that was checked, no redirects, retried.

The host is resolved once and every address it gives is checked (``targets.pinned_address``);
the connection then goes to that address, with the URL's host in ``Host`` and, for https, in
SNI and the certificate check. A DNS answer that changes between the check and the connect
(rebinding) therefore cannot send the request elsewhere. Redirects are not followed: a
``302`` to the metadata service is just a ``302``.

The catalog's deliveries (made by ``bizosctl.notify.relay``) are sent by :func:`deliver_due`
and :func:`attempt` in ``bizosctl.notify.attempts``; this module only makes the request.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import select

from bizosctl.catalog.models import WebhookEndpoint
from bizosctl.errors import InvalidInput, NotFound, OperationFailed
from bizosctl.notify.targets import pinned_address
from bizosctl.notify.webhooks import _endpoint_uuid, check_url, sign

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
