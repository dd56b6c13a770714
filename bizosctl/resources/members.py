"""A tenant's members as the API sees them: list, invite, change role, remove.

The rules that keep a tenant governable live here, checked under the tenant's members lock
(:func:`~bizosctl.tenancy.members.lock_members`) so two requests at once cannot break them:
an active Admin always remains (the last one is neither demoted nor removed), no member
removes themselves, and a member grants no role holding a permission they lack themselves
(nor manages a member who holds more than they do). Events: ``member.invited``,
``member.removed``; their data names the member by id only (no e-mail: the outbox and the
webhook deliveries are not encrypted).
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control
from bizosctl.errors import Conflict, InvalidInput
from bizosctl.notify.outbox import emit_event
from bizosctl.resources.notifications import notify_member
from bizosctl.resources.pages import Page, keyset
from bizosctl.resources.roles import check_covers, role_permissions
from bizosctl.security.rbac import DEFAULT_ROLES, member_permissions
from bizosctl.tenancy.members import (
    MemberPublic,
    add_member,
    get_member,
    lock_members,
    member_public,
    set_role,
)
from tenant_schema.models import Member, MemberRole, Role, Task

ADMIN = "Admin"


class MemberInvite(BaseModel):
    email: str = Field(min_length=3, max_length=254)
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(default="Staff", min_length=1, max_length=100)


class MemberUpdate(BaseModel):
    role: str = Field(min_length=1, max_length=100)


def list_members(
    ctl: Control,
    s: Session,
    *,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[MemberPublic]:
    """Members (decrypted e-mail and name), newest first."""
    stmt = select(Member)
    if status:
        stmt = stmt.where(Member.status == status)
    rows, nxt = keyset(s, stmt, at=Member.created_at, row_id=Member.id, limit=limit, cursor=cursor)
    return Page(items=[member_public(ctl, s, m) for m in rows], next_cursor=nxt)


def _check_grantable(s: Session, role: str, granted: frozenset[str] | None) -> None:
    """422 for an unknown role; 403 when it holds more than the granting member."""
    role_id = s.execute(select(Role.id).where(Role.name == role)).scalar_one_or_none()
    if role_id is not None:
        perms = role_permissions(s, role_id)
    elif role in DEFAULT_ROLES:  # not made yet in this tenant: add_member makes them
        perms = frozenset(DEFAULT_ROLES[role])
    else:
        raise InvalidInput(f"role: no role named {role!r} (GET /api/v1/roles lists them)")
    check_covers(granted, perms, what=f"granting the role {role!r}")


def _active_admins(s: Session) -> set[uuid.UUID]:
    return set(
        s.execute(
            select(MemberRole.member_id)
            .join(Role, Role.id == MemberRole.role_id)
            .join(Member, Member.id == MemberRole.member_id)
            .where(Role.name == ADMIN, Member.status == "active")
        ).scalars()
    )


def _keep_an_admin(s: Session, member_id: uuid.UUID, *, doing: str) -> None:
    admins = _active_admins(s)
    if member_id in admins and not admins - {member_id}:
        raise Conflict(f"cannot {doing} the last Admin: make another member Admin first")


def invite_member(
    ctl: Control,
    s: Session,
    *,
    tenant_id: uuid.UUID,
    data: MemberInvite,
    granted: frozenset[str] | None,
) -> MemberPublic:
    """Add a member with status ``invited`` and no password (they set one, or sign in with
    OAuth, when they accept); emits ``member.invited``.

    Args:
        granted: the inviting member's permissions (None for an API key); the role must not
            hold more.
    """
    lock_members(s, tenant_id)  # before the role is read: a role deleted meanwhile waits
    _check_grantable(s, data.role, granted)
    mid = add_member(
        ctl,
        s,
        tenant_id=tenant_id,
        email=data.email,
        name=data.name,
        role=data.role,
        password=None,
        status="invited",
    )
    out = member_public(ctl, s, get_member(s, mid))
    emit_event(s, "member.invited", {"id": str(mid), "role": data.role, "status": out.status})
    return out


def change_role(
    ctl: Control,
    s: Session,
    *,
    tenant_id: uuid.UUID,
    member_id: uuid.UUID,
    role: str,
    granted: frozenset[str] | None,
) -> MemberPublic:
    """Replace the member's roles with ``role``; the last active Admin keeps Admin."""
    lock_members(s, tenant_id)
    member = get_member(s, member_id)
    check_covers(granted, member_permissions(s, member_id), what="managing this member")
    _check_grantable(s, role, granted)
    if role != ADMIN:
        _keep_an_admin(s, member_id, doing="demote")
    before = member_public(ctl, s, member).roles
    set_role(s, tenant_id=tenant_id, member_id=member_id, role=role)
    if before != [role]:
        notify_member(
            s, member_id=member_id, kind="member.role_changed", title=f"Your role is now {role}"
        )
    return member_public(ctl, s, member)


def remove_member(
    s: Session,
    *,
    tenant_id: uuid.UUID,
    member_id: uuid.UUID,
    caller_member_id: uuid.UUID | None,
    granted: frozenset[str] | None,
) -> None:
    """Delete the member (their sessions, roles, project places and notifications go with
    them; their tasks become unassigned); emits ``member.removed``."""
    lock_members(s, tenant_id)
    get_member(s, member_id)
    if member_id == caller_member_id:
        raise Conflict("you cannot remove yourself: another member with member:manage can")
    check_covers(granted, member_permissions(s, member_id), what="removing this member")
    _keep_an_admin(s, member_id, doing="remove")
    s.execute(update(Task).where(Task.assignee_id == member_id).values(assignee_id=None))
    s.execute(delete(Member).where(Member.id == member_id))
    emit_event(s, "member.removed", {"id": str(member_id)})
