"""Domain events, written to the tenant's own ``outbox`` in the transaction of the change.

The event commits or rolls back with the change that caused it: no event for a change that
did not happen, no change without its event. The relay (``bizosctl.notify.relay``) then moves
it to the catalog as one delivery per subscribed endpoint. The event id is made here, once, and
becomes the Standard Webhooks ``webhook-id`` of every attempt of every delivery of it, so a
receiver can drop a duplicate (delivery is at least once).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from bizosctl.errors import InvalidInput
from bizosctl.notify.webhooks import check_events

EVENT_PREFIX = "evt_"
EVENT_ID_RE = re.compile(r"evt_[0-9a-f]{32}")
DATA_MAX_BYTES = 256 * 1024

_INSERT = text(
    "INSERT INTO outbox (tenant_id, id, type, data, endpoint_id) VALUES ("
    "NULLIF(current_setting('bizos.tenant_id', true), '')::uuid, "
    ":id, :type, CAST(:data AS jsonb), :endpoint) "
    # an event with a given id (a step run again after a crash) is recorded once
    "ON CONFLICT DO NOTHING"
)


def new_event_id() -> str:
    return EVENT_PREFIX + uuid.uuid4().hex


def derived_event_id(name: str) -> str:
    """A stable event id for ``name`` (e.g. ``tenant.upgraded:<operation id>``)."""
    return EVENT_PREFIX + uuid.uuid5(uuid.NAMESPACE_URL, f"bizosctl:{name}").hex


def emit_event(
    session: Session,
    type: str,  # the Standard Webhooks name of the field
    data: dict[str, Any],
    *,
    endpoint: uuid.UUID | None = None,
    event_id: str | None = None,
) -> str:
    """Record an event in the caller's transaction; returns its id (``evt_...``).

    Args:
        session: a session from ``tenant_session`` (its tenant is the event's tenant).
        type: a dotted lowercase name, e.g. ``invoice.paid``.
        data: the event's JSON object (at most 256 KiB encoded).
        endpoint: deliver to this endpoint only, whatever it subscribes to (``webhook test``).
        event_id: the event's id when the caller derives it (``evt_`` and 32 hex digits), so
            emitting the same event again (a step re-run after a crash) records it once and a
            receiver sees one ``webhook-id``; default: a new one.
    """
    check_events([type])
    if not isinstance(data, dict):
        raise InvalidInput("event data must be a JSON object")
    try:
        encoded = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"event data is not JSON: {exc}") from None
    if len(encoded.encode()) > DATA_MAX_BYTES:
        raise InvalidInput(f"event data is larger than {DATA_MAX_BYTES // 1024} KiB")
    if event_id is None:
        event_id = new_event_id()
    elif not EVENT_ID_RE.fullmatch(event_id):
        raise InvalidInput(f"invalid event id {event_id!r}: use evt_ and 32 hex digits")
    session.execute(_INSERT, {"id": event_id, "type": type, "data": encoded, "endpoint": endpoint})
    return event_id
