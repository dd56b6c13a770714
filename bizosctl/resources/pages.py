"""Cursor pagination: an opaque cursor naming the last row seen (its sort key and id)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from bizosctl.errors import InvalidInput

T = TypeVar("T")
R = TypeVar("R")
MAX_LIMIT = 100


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(at: dt.datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = json.loads(raw)
        return dt.datetime.fromisoformat(at), uuid.UUID(row_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor: not a cursor this API gave out") from exc


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit: between 1 and {MAX_LIMIT}")
    return limit


def keyset(
    s: Session,
    stmt: Select[R],
    *,
    at: InstrumentedAttribute[dt.datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
) -> tuple[list[R], str | None]:
    """One page of ``stmt``'s rows, newest first by (``at``, ``row_id``), after ``cursor``;
    and the cursor of the next page (None on the last)."""
    limit = check_limit(limit)
    stmt = stmt.order_by(at.desc(), row_id.desc())
    if cursor:
        c_at, c_id = decode_cursor(cursor)
        stmt = stmt.where(or_(at < c_at, and_(at == c_at, row_id < c_id)))
    rows = list(s.execute(stmt.limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    if not (more and rows):
        return rows, None
    return rows, encode_cursor(getattr(rows[-1], at.key), getattr(rows[-1], row_id.key))
