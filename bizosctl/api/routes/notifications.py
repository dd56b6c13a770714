"""The calling member's notifications (members only: an API key has none and gets 403)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from bizosctl.api.deps import Ctx, Needs
from bizosctl.errors import Forbidden
from bizosctl.resources import notifications as core
from bizosctl.resources.pages import Page

router = APIRouter(prefix="/api/v1", tags=["notifications"])

Own = Annotated[Ctx, Depends(Needs("notification:read", None))]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]


def member_of(ctx: Ctx) -> uuid.UUID:
    if ctx.caller.member_id is None:
        raise Forbidden(
            "notifications belong to a member: call with a member's access token, not an API key"
        )
    return ctx.caller.member_id


@router.get("/notifications", summary="The caller's notifications, newest or unread first")
def list_notifications(
    ctx: Own,
    order: Annotated[core.Order, Query()] = "newest",
    unread: bool = False,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[core.NotificationPublic]:
    member = member_of(ctx)
    with ctx.session(read_only=True) as s:
        return core.list_notifications(
            s, member_id=member, order=order, unread_only=unread, limit=limit, cursor=cursor
        )


@router.get("/notifications/unread-count", summary="How many are unread")
def unread_count(ctx: Own) -> core.UnreadCount:
    member = member_of(ctx)
    with ctx.session(read_only=True) as s:
        return core.unread_count(s, member_id=member)


@router.post("/notifications/read-all", summary="Mark every notification read")
def mark_all_read(ctx: Own) -> core.Marked:
    member = member_of(ctx)
    with ctx.session() as s:
        return core.mark_all_read(s, member_id=member)


@router.post("/notifications/{notification_id}/read", summary="Mark one read")
def mark_read(notification_id: uuid.UUID, ctx: Own) -> core.NotificationPublic:
    member = member_of(ctx)
    with ctx.session() as s:
        return core.mark_read(s, member_id=member, notification_id=notification_id)
