"""The caller: a member (their profile, roles and permissions) or an API key."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from bizosctl.api.deps import Ctx, Needs

router = APIRouter(prefix="/api/v1", tags=["me"])


class MePublic(BaseModel):
    tenant: str
    kind: str
    member_id: uuid.UUID | None = None
    email: str | None = None
    name: str | None = None
    roles: list[str] = []
    permissions: list[str] = []
    scopes: list[str] = []


@router.get("/me", summary="Who is calling")
def get_me(ctx: Ctx = Depends(Needs(None, None))) -> MePublic:
    from bizosctl.tenancy.members import get_member, member_public

    c = ctx.caller
    if c.kind == "api_key":
        return MePublic(tenant=c.tenant, kind=c.kind, scopes=sorted(c.scopes))
    assert c.member_id is not None
    with ctx.session(read_only=True) as s:
        pub = member_public(ctx.ctl, s, get_member(s, c.member_id))
    return MePublic(
        tenant=c.tenant,
        kind=c.kind,
        member_id=pub.id,
        email=pub.email,
        name=pub.name,
        roles=pub.roles,
        permissions=sorted(c.permissions),
    )
