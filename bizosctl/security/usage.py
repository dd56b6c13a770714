"""How many stored PII values each key version holds: what ``secrets list`` shows and what a
rotation counts before it retires the old version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.catalog.control import Control
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.sync.targets import Target, list_targets
from bizosctl.tenancy.names import q
from tenant_schema.models import ENCRYPTED_COLUMNS


def count_by_version(
    conn: Connection, *, schema: str, other_than: int | None = None
) -> dict[int, int]:
    """How many encrypted values each ``pii`` version holds in one target; with
    ``other_than``, only the values under other versions (cheaper when they are few).

    One scan per table, its encrypted columns unpivoted row by row."""
    skip = "" if other_than is None else f" AND x.c NOT LIKE 'bz1.{int(other_than)}.%'"
    parts = [
        f"SELECT split_part(x.c, '.', 2) AS v FROM {q(schema)}.{q(t)} AS t "
        f"CROSS JOIN LATERAL (VALUES {', '.join(f'(t.{q(c)})' for c in cols)}) AS x(c) "
        f"WHERE x.c IS NOT NULL{skip}"
        for t, cols in ENCRYPTED_COLUMNS.items()
    ]
    rows = conn.execute(
        text(f"SELECT v, count(*) FROM ({' UNION ALL '.join(parts)}) AS x GROUP BY v")
    ).all()
    return {claimed: int(n) for v, n in rows if (claimed := _claimed(str(v))) is not None}


def _claimed(part: str) -> int | None:
    """The version a value's second dot-separated part names (ASCII digits only: anything
    can be stored in a column, and ``int`` of 5,000 digits raises)."""
    if part.isascii() and part.isdigit() and len(part) <= 9:
        return int(part)
    return None


def claimed_version(token: str) -> int | None:
    """The key version a stored value claims to be under, read as :func:`count_by_version`
    reads it (``split_part(value, '.', 2)``)."""
    parts = token.split(".", 2)
    return _claimed(parts[1]) if len(parts) > 1 else None


def _targets(ctl: Control) -> list[Target]:
    return list_targets(ctl)


def _engine(ctl: Control, t: Target) -> Any:
    handle = ctl.server(t.server)
    handle.ensure_ready()
    return get_engine(handle.admin_url(t.database), pooled=False)


def pii_usage(
    ctl: Control, targets: list[Target] | None = None, *, other_than: int | None = None
) -> dict[int, int]:
    """How many encrypted values each ``pii`` version holds, over ``targets`` (default all);
    with ``other_than``, only the versions other than that one."""
    total: dict[int, int] = {}
    for t in _targets(ctl) if targets is None else targets:
        with translate_errors(f"server {t.server}"), _engine(ctl, t).connect() as conn:
            for v, n in count_by_version(conn, schema=t.schema, other_than=other_than).items():
                total[v] = total.get(v, 0) + n
    return total
