"""A tenant's own names, the dictionary that ``mask(names=...)`` needs and no model knows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from bizosctl.security.fields import decrypt
from bizosctl.tenancy.router import tenant_session
from tenant_schema.models import Customer, Member

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control


def tenant_names(ctl: Control, slug: str, *, actor: str = "bizosctl:mask") -> list[str]:
    """The names of ``slug``'s members (decrypted) and customers, in one read-only session.

    Args:
        ctl: the control plane.
        slug: the tenant; NotFound (exit 3) when there is none.
        actor: who reads, for the tenant's audit context.

    Company names among the customers are returned too; the masking leaves those that read
    as companies (``PT ...``, ``... Ltd``) out of its dictionary.
    """
    route = ctl.route(slug)
    with tenant_session(ctl, slug, actor=actor, read_only=True) as s:
        members = s.execute(select(Member.id, Member.name_enc)).all()
        customers = s.execute(select(Customer.name)).scalars().all()
    names = [
        decrypt(
            ctl.keyring,
            token,
            tenant_id=route.tenant_id,
            table="members",
            column="name",
            row=member_id,
        )
        for member_id, token in members
        if token
    ]
    return names + [name for name in customers if name]
