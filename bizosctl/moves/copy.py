"""Moving rows: bulk COPY (binary), re-syncing dirty keys, and content checksums.

Writes into the target run with ``session_replication_role = replica``: no audit rows for
copied data (the audit log itself is copied), no write guard, no FK triggers (tables are
copied in parallel, in any order). The operator's superuser connections are used on both sides.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.faults import crash_point
from bizosctl.moves.tables import TableInfo
from bizosctl.signals import check_interrupted
from bizosctl.tenancy.names import q
from bizosctl.throttle import Throttle


def _raw(conn: Connection) -> Any:
    raw = conn.connection.driver_connection
    assert raw is not None
    return raw


def _key_filter(t: TableInfo, keys: list[dict[str, Any]], alias: str) -> str:
    """A predicate matching the given keys, with the keys inlined as one JSON literal."""
    if not t.key:
        return "true"
    literal = json.dumps(keys).replace("'", "''")
    cols = ", ".join(f"{q(c)} {typ}" for c, typ in zip(t.key, t.key_types, strict=True))
    match = " AND ".join(f"{alias}.{q(c)} = k.{q(c)}" for c in t.key)
    return (
        f"EXISTS (SELECT 1 FROM jsonb_to_recordset('{literal}'::jsonb) AS k({cols}) WHERE {match})"
    )


def copy_rows(
    src: Connection,
    dst: Connection,
    t: TableInfo,
    *,
    src_schema: str,
    dst_schema: str,
    tenant_id: uuid.UUID,
    where: str = "true",
    throttle: Throttle | None = None,
) -> int:
    """COPY the tenant's matching rows from source to target in binary. Returns bytes moved.

    ``throttle`` caps the bytes a second (shared by every table copied at once)."""
    tid = str(uuid.UUID(str(tenant_id)))
    cols = t.column_list()
    out_sql = (
        f"COPY (SELECT {cols} FROM {q(src_schema)}.{q(t.name)} AS s "
        f"WHERE s.tenant_id = '{tid}' AND {where}) TO STDOUT (FORMAT binary)"
    )
    in_sql = f"COPY {q(dst_schema)}.{q(t.name)} ({cols}) FROM STDIN (FORMAT binary)"
    moved = 0
    with _raw(src).cursor() as rc, _raw(dst).cursor() as wc:
        with rc.copy(out_sql) as out, wc.copy(in_sql) as inp:
            for chunk in out:
                # Ctrl-C: the main thread waits for this thread; stop at the next page (the
                # target's transaction rolls back, --resume copies the table again).
                check_interrupted()
                crash_point("move.copy.page")
                moved += len(chunk)
                inp.write(chunk)
                if throttle is not None:
                    throttle.take(len(chunk))
    return moved


def copy_table(
    src: Connection,
    dst: Connection,
    t: TableInfo,
    *,
    src_schema: str,
    dst_schema: str,
    tenant_id: uuid.UUID,
    throttle: Throttle | None = None,
) -> int:
    """Replace the tenant's rows of one table in the target by the source's (one transaction
    on the target side, committed by the caller)."""
    check_interrupted()
    dst.execute(text("SET LOCAL session_replication_role = replica"))
    dst.execute(
        text(f"DELETE FROM {q(dst_schema)}.{q(t.name)} WHERE tenant_id = :t"), {"t": tenant_id}
    )
    return copy_rows(
        src,
        dst,
        t,
        src_schema=src_schema,
        dst_schema=dst_schema,
        tenant_id=tenant_id,
        throttle=throttle,
    )


def sync_keys(
    src: Connection,
    dst: Connection,
    t: TableInfo,
    keys: list[dict[str, Any]],
    *,
    src_schema: str,
    dst_schema: str,
    tenant_id: uuid.UUID,
) -> None:
    """Make the target's rows for ``keys`` equal to the source's current rows (or absent)."""
    dst.execute(text("SET LOCAL session_replication_role = replica"))
    dst.execute(
        text(
            f"DELETE FROM {q(dst_schema)}.{q(t.name)} AS s WHERE s.tenant_id = :t "
            f"AND {_key_filter(t, keys, 's')}"
        ),
        {"t": tenant_id},
    )
    copy_rows(
        src,
        dst,
        t,
        src_schema=src_schema,
        dst_schema=dst_schema,
        tenant_id=tenant_id,
        where=_key_filter(t, keys, "s"),
    )


def checksum(
    conn: Connection,
    t: TableInfo,
    *,
    schema: str,
    tenant_id: uuid.UUID,
    keys: list[dict[str, Any]] | None = None,
    exclude: bool = False,
    record_hash: bool = True,
) -> tuple[int, str]:
    """(row count, order-independent content checksum) of the tenant's rows of one table.

    ``keys`` limits the rows to those keys (or, with ``exclude``, to all others). The same
    expression runs on both sides over the same column list. ``record_hash`` uses
    ``hash_record_extended`` (fast, but only comparable between equal server versions);
    otherwise the row's text form is hashed.
    """
    row = t.row_expr("s")
    expr = f"hash_record_extended({row}, 7)" if record_hash else f"hashtextextended({row}::text, 7)"
    where = "true"
    if keys is not None:
        match = _key_filter(t, keys, "s") if keys else "false"
        where = f"NOT ({match})" if exclude else match
    result = conn.execute(
        text(
            f"SELECT count(*), COALESCE(sum({expr}::numeric), 0)::text "
            f"FROM {q(schema)}.{q(t.name)} AS s WHERE s.tenant_id = :t AND {where}"
        ),
        {"t": tenant_id},
    ).one()
    return int(result[0]), str(result[1])


def table_bytes(conn: Connection, *, schema: str, tables: list[str]) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = ANY(:t) AND c.relkind = 'r'"
        ),
        {"s": schema, "t": tables},
    ).all()
    return {name: int(size) for name, size in rows}
