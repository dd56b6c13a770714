"""Small catalog look-ups shared by several core modules."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from bizosctl.catalog.models import Tenant
from bizosctl.errors import NotFound


def live_tenant_id(s: Session, slug: str) -> uuid.UUID:
    """The id of the live (not deleted) tenant named ``slug``; NotFound otherwise."""
    from bizosctl.tenancy.names import check_slug

    check_slug(slug)
    tid = s.execute(
        select(Tenant.id).where(Tenant.slug == slug, Tenant.status != "deleted")
    ).scalar_one_or_none()
    if tid is None:
        raise NotFound(f"no tenant named {slug!r}")
    return tid
