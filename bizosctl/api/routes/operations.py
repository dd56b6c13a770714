"""Progress of a background operation the caller's tenant started."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from bizosctl.api.deps import Ctx, Needs

router = APIRouter(prefix="/api/v1", tags=["operations"])


class OperationView(BaseModel):
    id: uuid.UUID
    kind: str
    status: str
    progress: dict[str, Any] | None
    error: str | None
    steps: list[str]


@router.get("/operations/{op_id}", summary="A background operation of this tenant")
def get_operation(
    op_id: uuid.UUID, ctx: Annotated[Ctx, Depends(Needs("operation:read", "operations:read"))]
) -> OperationView:
    from bizosctl.catalog.operations import describe
    from bizosctl.errors import NotFound

    try:
        op = describe(ctx.ctl, op_id)
    except NotFound:
        op = None
    # another tenant's operation (or the fleet's) is as unknown as a made-up id
    if op is None or op.target != ctx.caller.tenant or not op.kind.startswith("tenant."):
        raise NotFound(f"no operation {op_id}")
    return OperationView(
        id=op.id,
        kind=op.kind,
        status=op.status,
        progress=op.progress,
        error=op.error,
        steps=[st.name for st in op.steps or []],
    )
