"""Roles and permissions of a tenant's members, and API-key scopes.

A member's permissions are the union of their roles' (``Admin``, ``Manager``, ``Staff`` are
made for every tenant on first use; a tenant adds custom roles). An API key has scopes named
after the resource path instead (``invoices:read``, ``invoices:write``, ``*``). A route asks
for both at once (:class:`Need`): the permission when a member calls, the scope when a key
does. The check happens in the API's one dependency; the database's RLS stays the backstop
for which tenant's rows are reachable at all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from bizosctl.errors import Forbidden, InvalidInput
from tenant_schema.models import MemberRole, Permission, Role

#: Every permission a role can grant (custom roles pick from these).
PERMISSIONS: tuple[str, ...] = (
    "invoice:read", "invoice:create", "invoice:update", "invoice:delete",
    "customer:read", "customer:write",
    "member:read", "member:invite", "member:manage", "role:manage",
    "project:read", "project:create", "project:manage", "task:write",
    "notification:read", "audit:read", "api_key:manage", "webhook:manage",
    "billing:manage", "salary:read", "operation:read",
)  # fmt: skip

_STAFF = (
    "invoice:read", "customer:read", "member:read", "project:read", "task:write",
    "notification:read", "operation:read",
)  # fmt: skip
_MANAGER = (
    *_STAFF, "invoice:create", "invoice:update", "invoice:delete", "customer:write",
    "member:invite", "project:create", "project:manage", "audit:read", "salary:read",
)  # fmt: skip
#: The built-in roles; ``*`` is every permission, present and future.
DEFAULT_ROLES: dict[str, tuple[str, ...]] = {
    "Admin": ("*",),
    "Manager": _MANAGER,
    "Staff": _STAFF,
}


@dataclass(frozen=True)
class Need:
    """What a route needs: ``permission`` from a member, ``scope`` from an API key."""

    permission: str
    scope: str


def check_permission(name: str) -> str:
    if name != "*" and name not in PERMISSIONS:
        raise InvalidInput(f"unknown permission {name!r}: choose from {', '.join(PERMISSIONS)}")
    return name


def ensure_default_roles(s: Session, tenant_id: uuid.UUID) -> dict[str, uuid.UUID]:
    """Make the built-in roles when missing (idempotent; concurrent callers are serialised on
    a transaction lock). Returns name -> role id of the built-in roles."""
    have: dict[str, uuid.UUID] = {
        name: rid
        for name, rid in s.execute(select(Role.name, Role.id).where(Role.name.in_(DEFAULT_ROLES)))
    }
    if len(have) == len(DEFAULT_ROLES):
        return have
    s.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"roles:{tenant_id}"},
    )
    for name, perms in DEFAULT_ROLES.items():
        rid = s.execute(
            insert(Role)
            .values(tenant_id=tenant_id, name=name, description="built-in")
            .on_conflict_do_nothing(index_elements=["tenant_id", "name"])
            .returning(Role.id)
        ).scalar_one_or_none()
        if rid is None:
            continue  # made meanwhile (or before): keep its permissions as they are
        have[name] = rid
        for perm in perms:
            s.execute(insert(Permission).values(tenant_id=tenant_id, role_id=rid, permission=perm))
    if len(have) < len(DEFAULT_ROLES):
        have = {
            name: rid
            for name, rid in s.execute(
                select(Role.name, Role.id).where(Role.name.in_(DEFAULT_ROLES))
            )
        }
    return have


def member_permissions(s: Session, member_id: uuid.UUID) -> frozenset[str]:
    rows = s.execute(
        select(Permission.permission)
        .join(MemberRole, MemberRole.role_id == Permission.role_id)
        .where(MemberRole.member_id == member_id)
    ).scalars()
    return frozenset(rows)


def allowed(granted: frozenset[str], wanted: str) -> bool:
    return "*" in granted or wanted in granted


def scope_allows(scopes: frozenset[str], wanted: str) -> bool:
    """``invoices:write`` implies ``invoices:read``; ``*`` allows everything."""
    if "*" in scopes or wanted in scopes:
        return True
    resource, _, access = wanted.partition(":")
    return access == "read" and f"{resource}:write" in scopes


def require(granted: frozenset[str], wanted: str, *, what: str) -> None:
    if not allowed(granted, wanted):
        raise Forbidden(f"{what} needs the permission {wanted!r}")
