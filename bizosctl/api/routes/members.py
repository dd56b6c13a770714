"""Members and roles (``members:read|write``, ``roles:read|write``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status

from bizosctl.api.deps import Caller, Ctx, Needs
from bizosctl.resources import members as core
from bizosctl.resources import roles as role_core
from bizosctl.resources.pages import Page
from bizosctl.tenancy.members import MemberPublic, get_member, member_public

router = APIRouter(prefix="/api/v1", tags=["members"])

Read = Annotated[Ctx, Depends(Needs("member:read", "members:read"))]
Invite = Annotated[Ctx, Depends(Needs("member:invite", "members:write"))]
Manage = Annotated[Ctx, Depends(Needs("member:manage", "members:write"))]
RolesRead = Annotated[Ctx, Depends(Needs("member:read", "roles:read"))]
RolesManage = Annotated[Ctx, Depends(Needs("role:manage", "roles:write"))]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]


def granted(caller: Caller) -> frozenset[str] | None:
    """A member's permissions (what they may grant); None for an API key."""
    return caller.permissions if caller.kind == "member" else None


@router.get("/members", summary="Members, newest first")
def list_members(
    ctx: Read,
    status: Annotated[Literal["active", "invited"] | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[MemberPublic]:
    with ctx.session(read_only=True) as s:
        return core.list_members(ctx.ctl, s, status=status, limit=limit, cursor=cursor)


@router.get("/members/{member_id}", summary="One member")
def get_one(member_id: uuid.UUID, ctx: Read) -> MemberPublic:
    with ctx.session(read_only=True) as s:
        return member_public(ctx.ctl, s, get_member(s, member_id))


@router.post("/members", status_code=status.HTTP_201_CREATED, summary="Invite a member")
def invite(body: core.MemberInvite, ctx: Invite) -> MemberPublic:
    with ctx.session() as s:
        return core.invite_member(
            ctx.ctl, s, tenant_id=ctx.caller.tenant_id, data=body, granted=granted(ctx.caller)
        )


@router.patch("/members/{member_id}", summary="Change a member's role")
def change_role(member_id: uuid.UUID, body: core.MemberUpdate, ctx: Manage) -> MemberPublic:
    with ctx.session() as s:
        return core.change_role(
            ctx.ctl,
            s,
            tenant_id=ctx.caller.tenant_id,
            member_id=member_id,
            role=body.role,
            granted=granted(ctx.caller),
        )


@router.delete(
    "/members/{member_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a member"
)
def remove(member_id: uuid.UUID, ctx: Manage) -> None:
    with ctx.session() as s:
        core.remove_member(
            s,
            tenant_id=ctx.caller.tenant_id,
            member_id=member_id,
            caller_member_id=ctx.caller.member_id,
            granted=granted(ctx.caller),
        )


@router.get("/roles", summary="Roles with their permissions")
def list_roles(ctx: RolesRead) -> list[role_core.RolePublic]:
    with ctx.session(read_only=True) as s:
        return role_core.list_roles(s)


@router.get("/roles/{role_id}", summary="One role")
def get_role(role_id: uuid.UUID, ctx: RolesRead) -> role_core.RolePublic:
    with ctx.session(read_only=True) as s:
        return role_core.get_role(s, role_id)


@router.post("/roles", status_code=status.HTTP_201_CREATED, summary="Create a custom role")
def create_role(body: role_core.RoleCreate, ctx: RolesManage) -> role_core.RolePublic:
    with ctx.session() as s:
        return role_core.create_role(
            s, tenant_id=ctx.caller.tenant_id, data=body, granted=granted(ctx.caller)
        )


@router.patch("/roles/{role_id}", summary="Change a custom role")
def update_role(
    role_id: uuid.UUID, body: role_core.RoleUpdate, ctx: RolesManage
) -> role_core.RolePublic:
    with ctx.session() as s:
        return role_core.update_role(
            s,
            tenant_id=ctx.caller.tenant_id,
            role_id=role_id,
            data=body,
            granted=granted(ctx.caller),
        )


@router.delete(
    "/roles/{role_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a custom role"
)
def delete_role(role_id: uuid.UUID, ctx: RolesManage) -> None:
    with ctx.session() as s:
        role_core.delete_role(s, tenant_id=ctx.caller.tenant_id, role_id=role_id)
