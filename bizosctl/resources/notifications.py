"""A member's own notifications: written by the core where something concerns them (a task
assigned to them, their role changed), listed newest or unread first, marked read.

RLS separates tenants; within a tenant every query here also names the member, so one
member never reads or marks another's (their ids are as unknown as made-up ones).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import Integer, cast, func, insert, select, text, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from bizosctl.errors import InvalidInput, NotFound
from bizosctl.resources.pages import Page, check_limit, decode_cursor, encode_cursor
from tenant_schema.models import Notification

Order = Literal["newest", "unread_first"]
#: The context's tenant, as the outbox insert takes it (the caller need not pass it).
_TENANT = text("NULLIF(current_setting('bizos.tenant_id', true), '')::uuid")


class NotificationPublic(BaseModel):
    id: uuid.UUID
    kind: str
    title: str
    body: str | None
    read_at: dt.datetime | None
    created_at: dt.datetime


class UnreadCount(BaseModel):
    unread: int


class Marked(BaseModel):
    marked: int


def notify_member(
    s: Session, *, member_id: uuid.UUID, kind: str, title: str, body: str | None = None
) -> uuid.UUID:
    """Leave ``member_id`` a notification, in the caller's transaction (it exists exactly
    when the change that caused it committed). Returns its id.

    Args:
        kind: what it is about, dotted like an event (``task.assigned``).
        title: one line (cut to 200 characters); body: optional text (cut to 2,000).
    """
    return s.execute(
        insert(Notification)
        .values(
            tenant_id=_TENANT,
            member_id=member_id,
            kind=kind,
            title=title[:200],
            body=None if body is None else body[:2000],
        )
        .returning(Notification.id)
    ).scalar_one()


def _public(n: Notification) -> NotificationPublic:
    return NotificationPublic(
        id=n.id, kind=n.kind, title=n.title, body=n.body, read_at=n.read_at, created_at=n.created_at
    )


def _unread_flag() -> ColumnElement[int]:
    return cast(Notification.read_at.is_(None), Integer)


def _encode(unread: int, at: dt.datetime, row_id: uuid.UUID) -> str:
    return f"{unread}{encode_cursor(at, row_id)}"


def _decode(cursor: str) -> tuple[int, dt.datetime, uuid.UUID]:
    if cursor[:1] not in ("0", "1"):
        raise InvalidInput("cursor: not a cursor this API gave out")
    return (int(cursor[0]), *decode_cursor(cursor[1:]))


def list_notifications(
    s: Session,
    *,
    member_id: uuid.UUID,
    order: Order = "newest",
    unread_only: bool = False,
    limit: int = 20,
    cursor: str | None = None,
) -> Page[NotificationPublic]:
    """The member's notifications, newest first (``unread_first``: the unread ones, newest
    first, then the read ones); ``next_cursor`` continues after the last one shown."""
    limit = check_limit(limit)
    # Newest order keys on (0, at, id): one cursor shape for both orders.
    flag = _unread_flag() if order == "unread_first" else cast(0, Integer)
    key = tuple_(flag, Notification.created_at, Notification.id)
    stmt = (
        select(Notification, flag)
        .where(Notification.member_id == member_id)
        .order_by(flag.desc(), Notification.created_at.desc(), Notification.id.desc())
    )
    if unread_only:
        stmt = stmt.where(Notification.read_at.is_(None))
    if cursor:
        stmt = stmt.where(key < tuple_(*_decode(cursor)))
    rows = list(s.execute(stmt.limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = None
    if more and rows:
        last, last_flag = rows[-1]
        nxt = _encode(last_flag, last.created_at, last.id)
    return Page(items=[_public(n) for n, _ in rows], next_cursor=nxt)


def unread_count(s: Session, *, member_id: uuid.UUID) -> UnreadCount:
    n = s.execute(
        select(func.count())
        .select_from(Notification)
        .where(Notification.member_id == member_id, Notification.read_at.is_(None))
    ).scalar_one()
    return UnreadCount(unread=n)


def mark_read(
    s: Session, *, member_id: uuid.UUID, notification_id: uuid.UUID
) -> NotificationPublic:
    """Mark one read (again: no change; its first ``read_at`` stays)."""
    row = s.execute(
        select(Notification).where(
            Notification.id == notification_id, Notification.member_id == member_id
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    if row.read_at is None:
        row = s.execute(
            update(Notification)
            .where(Notification.id == notification_id, Notification.member_id == member_id)
            .values(read_at=func.now())
            .returning(Notification)
        ).scalar_one()
    return _public(row)


def mark_all_read(s: Session, *, member_id: uuid.UUID) -> Marked:
    result = s.execute(
        update(Notification)
        .where(Notification.member_id == member_id, Notification.read_at.is_(None))
        .values(read_at=func.now())
    )
    return Marked(marked=int(getattr(result, "rowcount", 0) or 0))
