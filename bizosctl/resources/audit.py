"""The tenant's audit trail, as the database trigger wrote it (read-only to the application).

Values of ciphertext, blind-index and hash columns (``*_enc``, ``*_bidx``, ``*_hash``) are
never in it: the trigger records ``<redacted>`` or ``<changed>`` instead (tenant_schema.ddl).
The actor is what the API set for the transaction: ``member:<id>`` or ``api_key:<prefix>``
(operators' commands set their own).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from bizosctl.errors import InvalidInput
from bizosctl.resources.pages import Page, keyset
from tenant_schema import TABLE_NAMES
from tenant_schema.models import AuditLog


class AuditLogPublic(BaseModel):
    id: uuid.UUID
    at: dt.datetime
    actor: str | None
    action: str
    table: str
    row_key: dict[str, Any] | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    txid: int


def list_audit_logs(
    s: Session,
    *,
    actor: str | None = None,
    table: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[AuditLogPublic]:
    """Newest first; ``since`` inclusive, ``until`` exclusive; ``next_cursor`` goes on."""
    if table is not None and table not in TABLE_NAMES:
        raise InvalidInput(f"table: no tenant table {table!r}: one of {', '.join(TABLE_NAMES)}")
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{name}: give a time zone (e.g. 2026-12-01T00:00:00Z)")
    if since is not None and until is not None and since >= until:
        raise InvalidInput("since: must be before until")
    stmt = select(AuditLog)
    if actor:
        stmt = stmt.where(AuditLog.actor == actor)
    if table:
        stmt = stmt.where(AuditLog.table_name == table)
    if since:
        stmt = stmt.where(AuditLog.at >= since)
    if until:
        stmt = stmt.where(AuditLog.at < until)
    rows, nxt = keyset(s, stmt, at=AuditLog.at, row_id=AuditLog.id, limit=limit, cursor=cursor)
    return Page(
        items=[
            AuditLogPublic(
                id=r.id,
                at=r.at,
                actor=r.actor,
                action=r.action,
                table=r.table_name,
                row_key=r.row_key,
                old=r.old,
                new=r.new,
                txid=r.txid,
            )
            for r in rows
        ],
        next_cursor=nxt,
    )
