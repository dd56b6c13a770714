"""The tenant's audit trail (``audit:read`` for members, ``audit_logs:read`` for API keys)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from bizosctl.api.deps import Ctx, Needs
from bizosctl.api.params import IsoDateTime
from bizosctl.resources import audit as core
from bizosctl.resources.pages import Page

router = APIRouter(prefix="/api/v1", tags=["audit"])

Read = Annotated[Ctx, Depends(Needs("audit:read", "audit_logs:read"))]


@router.get("/audit-logs", summary="Audit trail, newest first, filtered, by cursor")
def list_audit_logs(
    ctx: Read,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    table: Annotated[str | None, Query(max_length=63)] = None,
    since: IsoDateTime = None,
    until: IsoDateTime = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[core.AuditLogPublic]:
    with ctx.session(read_only=True) as s:
        return core.list_audit_logs(
            s, actor=actor, table=table, since=since, until=until, limit=limit, cursor=cursor
        )
