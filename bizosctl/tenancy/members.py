"""A tenant's members: add (invite), find by e-mail, change roles, remove.

E-mails and names are encrypted; a member is found by the e-mail's blind index. During a PII
key rotation a member's index may still be under the previous key version, so uniqueness is
checked against the index under every live version, under a transaction lock per tenant
(two invitations of one address at once cannot both pass the check).
"""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control
from bizosctl.errors import AlreadyExists, InvalidInput, NotFound
from bizosctl.security.fields import blind_index, blind_indexes, decrypt, encrypt, normalize_email
from bizosctl.security.passwords import hash_password
from bizosctl.security.rbac import ensure_default_roles
from tenant_schema.models import Member, MemberRole, Role

EMAIL_MAX = 254


class MemberPublic(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    status: str
    roles: list[str]
    created_at: dt.datetime | None = None


def check_email(email: str) -> str:
    value = normalize_email(email)
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or len(value) > EMAIL_MAX or " " in value:
        raise InvalidInput(f"{email!r} is not an e-mail address")
    return value


def lock_members(s: Session, tenant_id: uuid.UUID) -> None:
    """Serialise changes to the tenant's members and their roles (until the transaction
    ends; taking it again in the same transaction does not wait)."""
    s.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"members:{tenant_id}"},
    )


def find_by_email(ctl: Control, s: Session, email: str) -> Member | None:
    """The member with this e-mail under any live index version (a rotation in flight)."""
    return s.execute(
        select(Member).where(Member.email_bidx.in_(blind_indexes(ctl.keyring, email)))
    ).scalar_one_or_none()


def add_member(
    ctl: Control,
    s: Session,
    *,
    tenant_id: uuid.UUID,
    email: str,
    name: str,
    role: str = "Staff",
    password: str | None = None,
    status: str = "active",
) -> uuid.UUID:
    """Add a member in the caller's tenant session (AlreadyExists for a known e-mail)."""
    email = check_email(email)
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("a member's name has 1 to 200 characters")
    hashed = hash_password(password) if password is not None else None
    roles = ensure_default_roles(s, tenant_id)
    role_id = (
        roles.get(role) or s.execute(select(Role.id).where(Role.name == role)).scalar_one_or_none()
    )
    if role_id is None:
        raise NotFound(f"no role named {role!r}")
    lock_members(s, tenant_id)
    if find_by_email(ctl, s, email) is not None:
        raise AlreadyExists("a member with this e-mail exists in this tenant")
    ring = ctl.keyring
    mid = uuid.uuid4()
    # the routing key first, in the catalog: a rolled-back insert leaves a key to a tenant
    # without the person (harmless), never a person without a key (gdpr find would miss them)
    from bizosctl.privacy.subjects import note_subject

    note_subject(ctl, email, tenant_id)

    def enc(value: str, column: str) -> str:
        return encrypt(ring, value, tenant_id=tenant_id, table="members", column=column, row=mid)

    s.execute(
        insert(Member).values(
            tenant_id=tenant_id,
            id=mid,
            email_enc=enc(email, "email"),
            email_bidx=blind_index(ring, email),
            name_enc=enc(name, "name"),
            password_hash=hashed,
            status=status,
        )
    )
    s.execute(insert(MemberRole).values(tenant_id=tenant_id, member_id=mid, role_id=role_id))
    return mid


def member_public(ctl: Control, s: Session, member: Member) -> MemberPublic:
    ring = ctl.keyring

    def dec(token: str, column: str) -> str:
        return decrypt(
            ring, token, tenant_id=member.tenant_id, table="members", column=column, row=member.id
        )

    roles = s.execute(
        select(Role.name)
        .join(MemberRole, MemberRole.role_id == Role.id)
        .where(MemberRole.member_id == member.id)
        .order_by(Role.name)
    ).scalars()
    return MemberPublic(
        id=member.id,
        email=dec(member.email_enc, "email"),
        name=dec(member.name_enc, "name"),
        status=member.status,
        roles=list(roles),
        created_at=member.created_at,
    )


def get_member(s: Session, member_id: uuid.UUID) -> Member:
    member = s.execute(select(Member).where(Member.id == member_id)).scalar_one_or_none()
    if member is None:
        raise NotFound(f"no member {member_id}")
    return member


def set_role(s: Session, *, tenant_id: uuid.UUID, member_id: uuid.UUID, role: str) -> None:
    """Replace a member's roles with ``role``."""
    get_member(s, member_id)
    ensure_default_roles(s, tenant_id)
    role_id = s.execute(select(Role.id).where(Role.name == role)).scalar_one_or_none()
    if role_id is None:
        raise NotFound(f"no role named {role!r}")
    s.execute(delete(MemberRole).where(MemberRole.member_id == member_id))
    s.execute(insert(MemberRole).values(tenant_id=tenant_id, member_id=member_id, role_id=role_id))


def set_password(s: Session, *, member_id: uuid.UUID, password: str) -> None:
    get_member(s, member_id)
    s.execute(
        update(Member).where(Member.id == member_id).values(password_hash=hash_password(password))
    )
