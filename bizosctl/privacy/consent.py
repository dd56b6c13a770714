"""Consents of a tenant's members: recorded, listed, withdrawn (GDPR Art. 7).

A consent names the member (found by the e-mail's blind index, never stored in clear here),
the purpose, the version of the text agreed to and where it was given. Withdrawing sets
``withdrawn_at``: the record that consent was once given stays, as it must be demonstrable.
Every change is in the tenant's audit trail (the table has the audit trigger).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

from pydantic import BaseModel
from sqlalchemy import insert, select, update

from bizosctl.catalog.control import Control
from bizosctl.errors import InvalidInput, NotFound
from bizosctl.privacy.find import subject_email
from bizosctl.tenancy.members import find_by_email
from bizosctl.tenancy.router import tenant_session
from tenant_schema.models import Consent

_PURPOSE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class ConsentPublic(BaseModel):
    id: uuid.UUID
    member_id: uuid.UUID
    purpose: str
    version: str
    granted: bool
    source: str | None
    recorded_at: dt.datetime
    withdrawn_at: dt.datetime | None


def _check(purpose: str, version: str | None = None, source: str | None = None) -> None:
    if not _PURPOSE.match(purpose):
        raise InvalidInput(
            "a purpose is 1 to 64 lower-case letters, digits, '.', '_' or '-' (e.g. marketing)"
        )
    if version is not None and not (0 < len(version) <= 40):
        raise InvalidInput("a consent version has 1 to 40 characters")
    if source is not None and len(source) > 200:
        raise InvalidInput("a consent source has at most 200 characters")


def _public(c: Consent) -> ConsentPublic:
    return ConsentPublic(
        id=c.id, member_id=c.member_id, purpose=c.purpose, version=c.version,
        granted=c.granted and c.withdrawn_at is None, source=c.source,
        recorded_at=c.recorded_at, withdrawn_at=c.withdrawn_at,
    )  # fmt: skip


def record_consent(
    ctl: Control, slug: str, email: str, *, purpose: str, version: str, source: str | None,
    actor: str, dry_run: bool = False,
) -> ConsentPublic:  # fmt: skip
    """Record that the member gave consent to ``purpose`` (text ``version``)."""
    email = subject_email(email)
    _check(purpose, version, source)
    route = ctl.route(slug)
    with tenant_session(ctl, slug, actor=actor) as s:
        member = find_by_email(ctl, s, email)
        if member is None:
            raise NotFound(f"no member with this e-mail in tenant {slug!r}")
        row = s.execute(
            insert(Consent)
            .values(
                tenant_id=route.tenant_id, member_id=member.id, purpose=purpose,
                version=version, granted=True, source=source,
            )
            .returning(Consent)
        ).scalar_one()  # fmt: skip
        out = _public(row)
        if dry_run:
            s.rollback()
    return out


def list_consents(
    ctl: Control, slug: str, email: str | None = None, *, actor: str
) -> list[ConsentPublic]:
    """The tenant's consents (one member's with ``email``), newest first."""
    with tenant_session(ctl, slug, actor=actor, read_only=True) as s:
        stmt = select(Consent).order_by(Consent.recorded_at.desc())
        if email is not None:
            member = find_by_email(ctl, s, subject_email(email))
            if member is None:
                raise NotFound(f"no member with this e-mail in tenant {slug!r}")
            stmt = stmt.where(Consent.member_id == member.id)
        return [_public(c) for c in s.execute(stmt).scalars()]


def withdraw_consent(
    ctl: Control, slug: str, email: str, *, purpose: str, actor: str, dry_run: bool = False
) -> list[ConsentPublic]:
    """Withdraw the member's open consents to ``purpose`` (every version); NotFound when
    there is none to withdraw."""
    email = subject_email(email)
    _check(purpose)
    with tenant_session(ctl, slug, actor=actor) as s:
        member = find_by_email(ctl, s, email)
        if member is None:
            raise NotFound(f"no member with this e-mail in tenant {slug!r}")
        rows = s.execute(
            update(Consent)
            .where(
                Consent.member_id == member.id,
                Consent.purpose == purpose,
                Consent.withdrawn_at.is_(None),
            )
            .values(withdrawn_at=dt.datetime.now(dt.UTC))
            .returning(Consent)
        ).scalars().all()  # fmt: skip
        if not rows:
            raise NotFound(f"no open consent to {purpose!r} for this member")
        out = [_public(c) for c in rows]
        if dry_run:
            s.rollback()
    return out
