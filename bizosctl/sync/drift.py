"""``schema drift``: compare each target with what its migrations say it should be.

The expected shape of a revision is built for real: a scratch schema on the home server is
migrated to that revision inside a transaction, introspected, and rolled back. Each target is
introspected the same way, with its own schema name replaced by a placeholder, so the two
compare line by line: tables, columns, indexes, constraints, RLS flags, policies, triggers and
the trigger functions.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.catalog.control import Control
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.db.migrate import migrate
from bizosctl.errors import BizosError
from bizosctl.sync.targets import Selection, Target, list_targets, read_revisions
from bizosctl.tenancy.names import SHARED_DB
from bizosctl.tenancy.servers import prepare_schema
from tenant_schema.ddl import OWNER_ROLE

PLACEHOLDER = "<schema>"

_QUERIES: dict[str, str] = {
    "column": """
        SELECT c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || COALESCE(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = :ns AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped""",
    "table": """
        SELECT relname, 'rls ' || CASE WHEN relrowsecurity THEN 'on' ELSE 'off' END
               || ', forced ' || CASE WHEN relforcerowsecurity THEN 'yes' ELSE 'no' END
               || ', owner ' || pg_get_userbyid(relowner)
        FROM pg_class WHERE relnamespace = :ns AND relkind = 'r'""",
    "index": """
        SELECT i.relname, pg_get_indexdef(i.oid)
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE i.relnamespace = :ns""",
    "constraint": """
        SELECT t.relname || '.' || c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid WHERE t.relnamespace = :ns""",
    "policy": """
        SELECT tablename || '.' || policyname,
               cmd || ' to ' || array_to_string(roles, ',') || ' using ' || COALESCE(qual, '-')
               || ' check ' || COALESCE(with_check, '-')
        FROM pg_policies WHERE schemaname = :schema""",
    "trigger": """
        SELECT c.relname || '.' || t.tgname,
               pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = :ns AND NOT t.tgisinternal""",
    "function": """
        SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.pronamespace = :ns""",
}


def introspect(conn: Connection, schema: str) -> dict[str, str]:
    """``{"index ix_x": "CREATE INDEX ...", ...}`` with the schema name as a placeholder."""
    # Definitions print names relative to the search_path: pin it so every object is qualified.
    conn.execute(text("SELECT set_config('search_path', 'pg_catalog', true)"))
    ns = conn.execute(
        text("SELECT oid FROM pg_namespace WHERE nspname = :s"), {"s": schema}
    ).scalar()
    if ns is None:
        return {}
    shape: dict[str, str] = {}
    quoted = '"' + schema + '"'
    for kind, sql in _QUERIES.items():
        for name, definition in conn.execute(text(sql), {"ns": ns, "schema": schema}):
            d = (
                (definition or "")
                .replace(quoted, PLACEHOLDER)
                .replace(schema + ".", PLACEHOLDER + ".")
            )
            d = d.replace(f"'{schema}'", f"'{PLACEHOLDER}'")
            shape[f"{kind} {name}"] = " ".join(d.split())
    return shape


def expected_shape(ctl: Control, revision: str) -> dict[str, str]:
    """The shape a target at ``revision`` must have, built in a rolled-back transaction."""
    home = ctl.server(_home_server(ctl))
    scratch = f"bizos_ref_{uuid.uuid4().hex[:8]}"
    with (
        translate_errors("drift reference"),
        get_engine(home.admin_url(SHARED_DB), pooled=False).connect() as conn,
    ):
        trans = conn.begin()
        try:
            prepare_schema(conn, scratch)
            migrate(conn, "tenant", schema=scratch, owner_role=OWNER_ROLE, revision=revision)
            conn.execute(text("RESET ROLE"))
            return introspect(conn, scratch)
        finally:
            trans.rollback()


def _home_server(ctl: Control) -> str:
    from bizosctl.tenancy.regions import default_server

    return default_server(ctl, ctl.settings.home_region)


def diff(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    out = []
    for key in sorted(set(expected) | set(actual)):
        want, have = expected.get(key), actual.get(key)
        if want == have:
            continue
        if want is None:
            out.append(f"unexpected {key}: {have}")
        elif have is None:
            out.append(f"missing {key}")
        else:
            out.append(f"changed {key}: {have} (expected {want})")
    return out


def find_drift(ctl: Control, selection: Selection) -> dict[str, Any]:
    targets = list_targets(ctl, selection)
    read_revisions(ctl, targets)
    references: dict[str, dict[str, str]] = {}
    results: list[dict[str, Any]] = []
    by_db: dict[tuple[str, str], list[Target]] = defaultdict(list)
    for t in targets:
        by_db[(t.server, t.database)].append(t)
    for (server, database), group in by_db.items():
        try:
            with (
                translate_errors(f"server {server}"),
                get_engine(ctl.server(server).admin_url(database), pooled=False).connect() as conn,
            ):
                for t in group:
                    entry = t.public() | {"differences": []}
                    if t.revision is None:
                        entry["differences"] = ["not migrated: no alembic_version"]
                    else:
                        if t.revision not in references:
                            references[t.revision] = expected_shape(ctl, t.revision)
                        entry["differences"] = diff(
                            references[t.revision], introspect(conn, t.schema)
                        )
                    results.append(entry)
        except BizosError as exc:
            results += [
                t.public() | {"differences": [f"unreachable: {exc.message}"]} for t in group
            ]
    drifted = [r for r in results if r["differences"]]
    return {"ok": not drifted, "checked": len(results), "drifted": drifted}
