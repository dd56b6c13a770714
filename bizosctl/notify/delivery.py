"""Sending one webhook delivery: signed, to the address that was checked, no redirects.

The host is resolved once and every address it gives is checked (``targets.pinned_address``);
the connection then goes to that address, with the URL's host in ``Host`` and, for https, in
SNI and the certificate check. A DNS answer that changes between the check and the connect
(rebinding) therefore cannot send the request elsewhere. Redirects are not followed: a
``302`` to the metadata service is just a ``302``.
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

TIMEOUT_S = 10.0


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


def deliver(
    ctl: Control,
    endpoint_id: uuid.UUID | str,
    *,
    payload: bytes,
    msg_id: str | None = None,
    timeout_s: float = TIMEOUT_S,
) -> DeliveryResult:
    """POST ``payload`` (JSON bytes) to the endpoint, signed with its live secrets.

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
    check_url(url, ctl.settings)  # the rules may have changed since it was added
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = str(pinned_address(host, port, ctl.settings))
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    headers = sign(ctl, eid, msg_id=msg_id, timestamp=int(time.time()), payload=payload)
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
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        raise OperationFailed(
            f"webhook delivery to {host} ({address}) failed: {type(exc).__name__}"
        ) from exc
    except ValueError as exc:  # e.g. a path http.client refuses
        raise InvalidInput(f"webhook URL cannot be requested: {exc}") from exc
    finally:
        conn.close()
    return DeliveryResult(endpoint=eid, msg_id=msg_id, address=address, status=status)
