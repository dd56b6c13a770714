"""Per-table facts a move needs: columns and key columns, read from the source target."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.tenancy.names import q
from tenant_schema import TENANT_TABLES


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # primary key columns other than tenant_id
    key_types: tuple[str, ...]
    types: tuple[str, ...] = ()

    def column_list(self) -> str:
        return ", ".join(q(c) for c in self.columns)

    def row_expr(self, alias: str) -> str:
        """ROW(...) of every column; types without a hash function (vector) as text."""
        parts = [
            f"{alias}.{q(c)}::text" if t.startswith("vector") else f"{alias}.{q(c)}"
            for c, t in zip(self.columns, self.types or ("",) * len(self.columns), strict=True)
        ]
        return f"ROW({', '.join(parts)})"


def table_infos(conn: Connection, schema: str) -> list[TableInfo]:
    """Columns (in table order) and primary keys of every tenant table in ``schema``."""
    rows = conn.execute(
        text(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
            "a.attnum = ANY(i.indkey) AS in_pk "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary "
            "WHERE n.nspname = :s AND c.relkind = 'r' AND c.relname = ANY(:tables) "
            "ORDER BY c.relname, a.attnum"
        ),
        {"s": schema, "tables": list(TENANT_TABLES)},
    ).all()
    cols: dict[str, list[str]] = {}
    types: dict[str, list[str]] = {}
    keys: dict[str, list[tuple[str, str]]] = {}
    for table, col, typ, in_pk in rows:
        cols.setdefault(table, []).append(col)
        types.setdefault(table, []).append(typ)
        if in_pk and col != "tenant_id":
            keys.setdefault(table, []).append((col, typ))
    out = []
    for table in TENANT_TABLES:
        if table not in cols:
            continue
        key = keys.get(table, [])
        out.append(
            TableInfo(
                table,
                tuple(cols[table]),
                tuple(k for k, _ in key),
                tuple(t for _, t in key),
                tuple(types[table]),
            )
        )
    return out
