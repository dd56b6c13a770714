"""The log of data-subject requests: what was asked, when it is due, what answered it.

GDPR Art. 12(3): an answer within one month of receipt, extendable by two further months
with a reason. The subject is the routing key (a keyed hash), never the e-mail; the receipt
holds counts per tenant and table, never values.
"""

from __future__ import annotations

import datetime as dt
import getpass
import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, text, update

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import GdprRequest
from bizosctl.errors import InvalidInput, NotFound

KINDS = ("find", "export", "delete")
STATUSES = ("received", "in_progress", "partially_done", "done", "failed")
OPEN = ("received", "in_progress", "partially_done", "failed")


class RequestPublic(BaseModel):
    id: uuid.UUID
    kind: str
    subject_ref: str
    tenant: str | None
    source: str
    received_at: dt.datetime
    due_at: dt.datetime
    extended_to: dt.datetime | None
    extension_reason: str | None
    status: str
    operation_id: uuid.UUID | None
    actor: str
    receipt: dict[str, Any] | None
    finished_at: dt.datetime | None
    overdue: bool

    @classmethod
    def of(cls, r: GdprRequest, now: dt.datetime) -> RequestPublic:
        due = r.extended_to or r.due_at
        return cls(
            id=r.id,
            kind=r.kind,
            subject_ref=r.subject_ref,
            tenant=r.tenant,
            source=r.source,
            received_at=r.received_at,
            due_at=r.due_at,
            extended_to=r.extended_to,
            extension_reason=r.extension_reason,
            status=r.status,
            operation_id=r.operation_id,
            actor=r.actor,
            receipt=r.receipt,
            finished_at=r.finished_at,
            overdue=r.status in OPEN and due < now,
        )


def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def open_request(
    ctl: Control,
    *,
    kind: str,
    subject_ref: str,
    tenant: str | None,
    actor: str,
    source: str = "cli",
    operation_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Log a request as received now, due one calendar month later."""
    rid = uuid.uuid4()
    with ctl.catalog() as s:
        s.execute(
            text(
                "INSERT INTO gdpr_requests (id, kind, subject_ref, tenant, source, due_at, "
                "status, operation_id, actor) VALUES (:id, :kind, :ref, :tenant, :source, "
                "now() + interval '1 month', :status, :op, :actor)"
            ),
            {
                "id": rid,
                "kind": kind,
                "ref": subject_ref,
                "tenant": tenant,
                "source": source,
                "status": "in_progress" if operation_id else "received",
                "op": operation_id,
                "actor": actor,
            },
        )
    return rid


def request_for_operation(ctl: Control, op_id: uuid.UUID) -> uuid.UUID | None:
    with ctl.catalog() as s:
        return s.execute(
            select(GdprRequest.id).where(GdprRequest.operation_id == op_id)
        ).scalar_one_or_none()


def finish_request(
    ctl: Control, rid: uuid.UUID, *, status: str, receipt: dict[str, Any] | None
) -> None:
    """Record the outcome (``done``, ``partially_done``, ``failed``) and its receipt."""
    assert status in STATUSES
    with ctl.catalog() as s:
        s.execute(
            update(GdprRequest)
            .where(GdprRequest.id == rid)
            .values(
                status=status,
                receipt=receipt,
                finished_at=func.now() if status == "done" else None,
            )
        )


def list_requests(
    ctl: Control, *, status: str | None = None, overdue: bool = False, limit: int = 200
) -> list[RequestPublic]:
    """Requests, newest first; ``overdue``: open ones past their (extended) due date."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
    stmt = select(GdprRequest).order_by(GdprRequest.received_at.desc()).limit(limit)
    if status:
        stmt = stmt.where(GdprRequest.status == status)
    if overdue:
        stmt = stmt.where(
            GdprRequest.status.in_(OPEN),
            func.coalesce(GdprRequest.extended_to, GdprRequest.due_at) < func.now(),
        )
    with ctl.catalog() as s:
        now = s.execute(select(func.now())).scalar_one()
        return [RequestPublic.of(r, now) for r in s.execute(stmt).scalars()]


def get_request(ctl: Control, rid: uuid.UUID) -> RequestPublic:
    with ctl.catalog() as s:
        now = s.execute(select(func.now())).scalar_one()
        row = s.get(GdprRequest, rid)
        if row is None:
            raise NotFound(f"no GDPR request {rid}")
        return RequestPublic.of(row, now)


def parse_request_id(ref: str) -> uuid.UUID:
    try:
        return uuid.UUID(ref.strip())
    except ValueError:
        raise InvalidInput(f"{ref!r} is not a request id (a uuid)") from None


def extend_request(
    ctl: Control, rid: uuid.UUID, *, months: int, reason: str, dry_run: bool = False
) -> RequestPublic:
    """Extend the due date to ``months`` (2 or 3) after receipt, with a recorded reason
    (Art. 12(3): complex or numerous requests)."""
    if months not in (2, 3):
        raise InvalidInput("an extension runs to 2 or 3 months after receipt (GDPR Art. 12(3))")
    reason = reason.strip()
    if not reason or len(reason) > 500:
        raise InvalidInput("an extension needs a reason of 1 to 500 characters")
    current = get_request(ctl, rid)
    if current.status == "done":
        raise InvalidInput(f"request {rid} is done already: there is nothing to extend")
    if dry_run:
        return current
    with ctl.catalog() as s:
        s.execute(
            update(GdprRequest)
            .where(GdprRequest.id == rid)
            .values(
                extended_to=GdprRequest.received_at + func.make_interval(0, months),
                extension_reason=reason,
            )
        )
    return get_request(ctl, rid)


def overdue_count(ctl: Control) -> int:
    with ctl.catalog() as s:
        return int(
            s.execute(
                select(func.count())
                .select_from(GdprRequest)
                .where(
                    GdprRequest.status.in_(OPEN),
                    func.coalesce(GdprRequest.extended_to, GdprRequest.due_at) < func.now(),
                )
            ).scalar_one()
        )
