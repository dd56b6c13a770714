"""What operators do with webhook deliveries: list them, replay them, re-enable an endpoint,
send a test event, and run the relay and the due deliveries once in the foreground."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel
from sqlalchemy import Select, and_, or_, select, update

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Tenant, WebhookDelivery, WebhookEndpoint
from bizosctl.errors import InvalidInput, NotFound
from bizosctl.notify.delivery import deliver_due, delivery_uuid
from bizosctl.notify.webhooks import (
    EndpointPublic,
    get_endpoint,
    resolve_endpoint_id,
    update_endpoint,
)
from bizosctl.resources.pages import Page, check_limit, decode_cursor, encode_cursor

STATUSES = ("pending", "delivered", "failed")
LIST_MAX = 1000


class DeliveryPublic(BaseModel):
    id: uuid.UUID
    event_id: str  # the webhook-id
    event_type: str
    endpoint: uuid.UUID
    tenant: str
    status: str
    attempts: int
    next_attempt_at: dt.datetime | None
    last_status: int | None
    last_error: str | None
    event_at: dt.datetime
    created_at: dt.datetime
    delivered_at: dt.datetime | None


class ReplayPlan(BaseModel):
    """The deliveries a replay sends again, from their first attempt, with their webhook-id."""

    deliveries: list[uuid.UUID]
    waiting_for_enable: list[uuid.UUID]  # of disabled endpoints: sent once re-enabled


class DeliverReport(BaseModel):
    events: int  # outbox rows relayed
    deliveries: int  # deliveries created
    attempted: int  # attempts made


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"invalid status {status!r}: use one of {', '.join(STATUSES)}")
    return status


def parse_since(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise), or a duration ago (``24h``)."""
    from bizosctl.durations import parse_ms

    raw = value.strip()
    try:
        at = dt.datetime.fromisoformat(raw)
    except ValueError:
        try:
            return (now or _now()) - dt.timedelta(milliseconds=parse_ms(raw, what="--since"))
        except InvalidInput:
            raise InvalidInput(
                f"invalid --since {value!r}: use an ISO time like 2026-12-01T09:00 or a "
                "duration ago like 24h"
            ) from None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def _delivery_public(d: WebhookDelivery, slug: str) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id,
        event_id=d.event_id,
        event_type=d.event_type,
        endpoint=d.endpoint_id,
        tenant=slug,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at,
        last_status=d.last_status,
        last_error=d.last_error,
        event_at=d.event_at,
        created_at=d.created_at,
        delivered_at=d.delivered_at,
    )


def _deliveries(
    *, endpoint_id: uuid.UUID | None, status: str | None, tenant: str | None
) -> Select[WebhookDelivery, str]:
    """Deliveries newest first (ties: the larger id first, as a cursor continues)."""
    check_status(status)
    stmt = (
        select(WebhookDelivery, Tenant.slug)
        .join(Tenant, Tenant.id == WebhookDelivery.tenant_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    )
    if tenant is not None:
        stmt = stmt.where(Tenant.slug == tenant)
    if endpoint_id is not None:
        stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    return stmt


def list_deliveries(
    ctl: Control,
    *,
    endpoint: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[DeliveryPublic]:
    """Deliveries, newest first; of one endpoint (id or unique prefix) and/or one status."""
    check_status(status)
    if not 1 <= limit <= LIST_MAX:
        raise InvalidInput(f"--limit must be between 1 and {LIST_MAX}")
    eid = None
    if endpoint is not None:
        eid = get_endpoint(ctl, resolve_endpoint_id(ctl, endpoint)).id  # NotFound if none
    stmt = _deliveries(endpoint_id=eid, status=status, tenant=None).limit(limit)
    with ctl.catalog() as s:
        return [_delivery_public(d, slug) for d, slug in s.execute(stmt).all()]


def page_deliveries(
    ctl: Control,
    *,
    tenant: str,
    endpoint_id: uuid.UUID | None = None,
    status: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Page[DeliveryPublic]:
    """One tenant's deliveries, newest first, a page at a time (the API's list); of one of
    its endpoints (another tenant's endpoint is NotFound) and/or one status."""
    limit = check_limit(limit)
    if endpoint_id is not None:
        get_endpoint(ctl, endpoint_id, tenant=tenant)
    stmt = _deliveries(endpoint_id=endpoint_id, status=status, tenant=tenant)
    if cursor:
        at, did = decode_cursor(cursor)
        stmt = stmt.where(
            or_(
                WebhookDelivery.created_at < at,
                and_(WebhookDelivery.created_at == at, WebhookDelivery.id < did),
            )
        )
    with ctl.catalog() as s:
        rows = s.execute(stmt.limit(limit + 1)).all()
    more, rows = len(rows) > limit, rows[:limit]
    nxt = encode_cursor(rows[-1][0].created_at, rows[-1][0].id) if more and rows else None
    return Page(items=[_delivery_public(d, slug) for d, slug in rows], next_cursor=nxt)


def plan_replay(
    ctl: Control,
    *,
    delivery_id: str | None = None,
    since: dt.datetime | None = None,
    tenant: str | None = None,
) -> ReplayPlan:
    """One delivery (any status), or every failed delivery created since ``since``; of
    ``tenant`` only, when given (another tenant's delivery is NotFound)."""
    if (delivery_id is None) == (since is None):
        raise InvalidInput("give a delivery id or --since, not both")
    stmt = select(WebhookDelivery.id, WebhookEndpoint.disabled_at).join(
        WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id
    )
    if tenant is not None:
        stmt = stmt.join(Tenant, Tenant.id == WebhookDelivery.tenant_id).where(
            Tenant.slug == tenant
        )
    if delivery_id is not None:
        stmt = stmt.where(WebhookDelivery.id == delivery_uuid(delivery_id))
    else:
        stmt = stmt.where(WebhookDelivery.status == "failed", WebhookDelivery.created_at >= since)
    with ctl.catalog() as s:
        rows = s.execute(stmt.order_by(WebhookDelivery.created_at)).all()
    if delivery_id is not None and not rows:
        raise NotFound(f"no webhook delivery {delivery_id!r}")
    return ReplayPlan(
        deliveries=[r.id for r in rows if r.disabled_at is None],
        waiting_for_enable=[r.id for r in rows if r.disabled_at is not None],
    )


def replay(
    ctl: Control,
    *,
    delivery_id: str | None = None,
    since: dt.datetime | None = None,
    tenant: str | None = None,
) -> ReplayPlan:
    """Send deliveries again from their first attempt, with the same webhook-id (a receiver
    that already has one drops the copy). Their recorded attempts stay."""
    plan = plan_replay(ctl, delivery_id=delivery_id, since=since, tenant=tenant)
    ids = plan.deliveries + plan.waiting_for_enable
    if ids:
        with ctl.catalog() as s:
            s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(status="pending", attempts=0, next_attempt_at=_now(), delivered_at=None)
            )
    return plan


def enable_endpoint(ctl: Control, endpoint: str, *, dry_run: bool = False) -> EndpointPublic:
    """Re-enable a disabled endpoint: its pending deliveries are sent again on their schedule
    (those past due at once); failed ones wait for ``webhook replay``."""
    eid = resolve_endpoint_id(ctl, endpoint)
    current = get_endpoint(ctl, eid)
    if dry_run or current.disabled_at is None:
        return current
    return update_endpoint(ctl, eid, enabled=True)


def send_test(ctl: Control, endpoint: str, *, dry_run: bool = False) -> str | None:
    """Emit a ``webhook.test`` event for one endpoint through the tenant's outbox (the path
    every event takes); returns its id (None with ``dry_run``)."""
    from bizosctl.notify.outbox import emit_event
    from bizosctl.tenancy.router import tenant_session

    ep = get_endpoint(ctl, resolve_endpoint_id(ctl, endpoint))
    if ep.disabled_at is not None:
        raise InvalidInput(
            f"webhook endpoint {ep.id} is disabled: enable it first (bizosctl webhook enable)"
        )
    if dry_run:
        return None
    with tenant_session(ctl, ep.tenant, actor="bizosctl webhook test") as s:
        return emit_event(
            s,
            "webhook.test",
            {"endpoint": str(ep.id), "message": "test event from bizosctl"},
            endpoint=ep.id,
        )


def deliver_once(ctl: Control, *, limit: int = 1000) -> DeliverReport:
    """Relay every target's outbox once, then attempt due deliveries until none is left (at
    most ``limit``): what a worker does continuously, in the foreground."""
    from bizosctl.notify.relay import Relay

    if limit < 1:
        raise InvalidInput("--limit must be at least 1")
    relay = Relay(ctl)
    try:
        relay.sweep()
    finally:
        relay.close()
    attempted = 0
    while attempted < limit and (n := deliver_due(ctl, limit=min(100, limit - attempted))):
        attempted += n
    return DeliverReport(
        events=relay.stats.events, deliveries=relay.stats.deliveries, attempted=attempted
    )
