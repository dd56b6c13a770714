"""The caller's tenant: ``POST /tenant/upgrade`` (the seed's "Upgrade to Enterprise" button).

An Admin (``billing:manage``; keys: ``tenant:write``) starts a move of the tenant to a higher
tier in the background, as ``bizosctl tenant move SLUG --to-tier TIER --background`` does: the
operation is recorded and its job queued in one transaction, and the answer (202) names the
operation to follow at ``Location: /api/v1/operations/{id}``. The tenant keeps working while
it runs; when it has switched, ``tenant.upgraded`` goes out through the tenant's outbox.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response, status
from pydantic import BaseModel

from bizosctl.api.deps import Ctx, Needs

router = APIRouter(prefix="/api/v1/tenant", tags=["tenant"])


class UpgradeRequest(BaseModel):
    tier: Literal["schema", "isolated"]


class UpgradeAccepted(BaseModel):
    operation: uuid.UUID
    kind: str
    status: str
    tier: str
    location: str
    warning: str | None = None


@router.post(
    "/upgrade",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Move the tenant to a higher tier in the background",
)
def upgrade(
    body: UpgradeRequest,
    response: Response,
    ctx: Annotated[Ctx, Depends(Needs("billing:manage", "tenant:write"))],
) -> UpgradeAccepted:
    from bizosctl.moves.engine import submit_upgrade

    sub = submit_upgrade(ctx.ctl, ctx.caller.tenant, tier=body.tier)
    location = f"/api/v1/operations/{sub.operation}"
    response.headers["Location"] = location
    return UpgradeAccepted(
        operation=sub.operation,
        kind=sub.kind,
        status="queued",
        tier=body.tier,
        location=location,
        warning=sub.warning,
    )
