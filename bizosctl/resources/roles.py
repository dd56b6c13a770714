"""A tenant's roles: the built-in Admin, Manager and Staff, and custom ones.

A custom role picks its permissions from :data:`~bizosctl.security.rbac.PERMISSIONS` (``*``
stays the Admin role's alone). Built-in roles are neither changed nor deleted here (the
last-Admin rule and every tenant's defaults rest on them); a role some member holds is not
deleted (409: move them to another role first). Creating or changing a role never grants
more than the member doing it holds.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bizosctl.errors import AlreadyExists, Conflict, Forbidden, InvalidInput, NotFound
from bizosctl.security.rbac import DEFAULT_ROLES, check_permission
from bizosctl.tenancy.members import lock_members
from tenant_schema.models import MemberRole, Permission, Role

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9 _.-]{0,49}$"
Name = Annotated[str, StringConstraints(strip_whitespace=True, pattern=NAME_PATTERN)]


class RoleCreate(BaseModel):
    name: Name
    description: str | None = Field(default=None, max_length=500)
    permissions: list[str] = Field(min_length=1, max_length=100)


class RoleUpdate(BaseModel):
    description: str | None = Field(default=None, max_length=500)
    permissions: list[str] | None = Field(default=None, min_length=1, max_length=100)


class RolePublic(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    built_in: bool
    permissions: list[str]
    members: int


def role_permissions(s: Session, role_id: uuid.UUID) -> frozenset[str]:
    return frozenset(
        s.execute(select(Permission.permission).where(Permission.role_id == role_id)).scalars()
    )


def _check_permissions(perms: list[str]) -> list[str]:
    out: list[str] = []
    for p in perms:
        if p == "*":
            raise InvalidInput("permissions: '*' is the built-in Admin role's alone")
        check_permission(p)
        if p not in out:
            out.append(p)
    return sorted(out)


def check_covers(granted: frozenset[str] | None, wanted: frozenset[str], *, what: str) -> None:
    """Forbidden unless ``granted`` holds every permission in ``wanted`` (None: an API key,
    whose scope already allowed the change)."""
    if granted is None or "*" in granted:
        return
    missing = sorted(wanted - granted)
    if missing:
        raise Forbidden(f"{what} needs permissions you do not hold: {', '.join(missing)}")


def _public(s: Session, role: Role) -> RolePublic:
    held = s.execute(
        select(func.count()).select_from(MemberRole).where(MemberRole.role_id == role.id)
    ).scalar_one()
    return RolePublic(
        id=role.id,
        name=role.name,
        description=role.description,
        built_in=role.name in DEFAULT_ROLES,
        permissions=sorted(role_permissions(s, role.id)),
        members=held,
    )


def list_roles(s: Session) -> list[RolePublic]:
    """Every role of the tenant with its permissions and how many members hold it."""
    rows = s.execute(select(Role).order_by(Role.name)).scalars()
    return [_public(s, r) for r in rows]


def _get(s: Session, role_id: uuid.UUID, *, lock: bool = False) -> Role:
    stmt = select(Role).where(Role.id == role_id)
    if lock:
        stmt = stmt.with_for_update()
    role = s.execute(stmt).scalar_one_or_none()
    if role is None:
        raise NotFound(f"no role {role_id}")
    return role


def get_role(s: Session, role_id: uuid.UUID) -> RolePublic:
    return _public(s, _get(s, role_id))


def _set_permissions(
    s: Session, *, tenant_id: uuid.UUID, role_id: uuid.UUID, perms: list[str]
) -> None:
    s.execute(delete(Permission).where(Permission.role_id == role_id))
    s.execute(
        insert(Permission),
        [{"tenant_id": tenant_id, "role_id": role_id, "permission": p} for p in perms],
    )


def create_role(
    s: Session, *, tenant_id: uuid.UUID, data: RoleCreate, granted: frozenset[str] | None
) -> RolePublic:
    """A custom role (409 for a name in use, the built-in ones included)."""
    perms = _check_permissions(data.permissions)
    check_covers(granted, frozenset(perms), what="this role")
    name = data.name
    if name.lower() in {r.lower() for r in DEFAULT_ROLES}:
        raise AlreadyExists(f"{name!r} is a built-in role")
    role_id = uuid.uuid4()
    try:
        with s.begin_nested():
            s.execute(
                insert(Role).values(
                    tenant_id=tenant_id, id=role_id, name=name, description=data.description
                )
            )
    except IntegrityError:
        raise AlreadyExists(f"a role named {name!r} exists") from None
    _set_permissions(s, tenant_id=tenant_id, role_id=role_id, perms=perms)
    return get_role(s, role_id)


def _custom(role: Role, doing: str) -> None:
    if role.name in DEFAULT_ROLES:
        raise Conflict(f"the built-in role {role.name!r} cannot be {doing}: make a custom role")


def update_role(
    s: Session,
    *,
    tenant_id: uuid.UUID,
    role_id: uuid.UUID,
    data: RoleUpdate,
    granted: frozenset[str] | None,
) -> RolePublic:
    """Replace a custom role's permissions and/or description."""
    role = _get(s, role_id, lock=True)
    _custom(role, "changed")
    if "description" in data.model_fields_set:
        s.execute(update(Role).where(Role.id == role_id).values(description=data.description))
    if data.permissions is not None:
        perms = _check_permissions(data.permissions)
        check_covers(granted, frozenset(perms), what="this role")
        _set_permissions(s, tenant_id=tenant_id, role_id=role_id, perms=perms)
    return get_role(s, role_id)


def delete_role(s: Session, *, tenant_id: uuid.UUID, role_id: uuid.UUID) -> None:
    """Delete a custom role no member holds."""
    lock_members(s, tenant_id)  # an invitation or role change naming it waits, then fails
    role = _get(s, role_id, lock=True)
    _custom(role, "deleted")
    held = s.execute(
        select(func.count()).select_from(MemberRole).where(MemberRole.role_id == role_id)
    ).scalar_one()
    if held:
        raise Conflict(f"{held} member(s) hold the role {role.name!r}: give them another first")
    s.execute(delete(Role).where(Role.id == role_id))
