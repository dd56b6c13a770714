"""Trigger-based change capture of one tenant's rows in the source target.

Why triggers and not logical replication: a row-filtered publication needs a replication slot
per move, a subscription between the two servers (embedded clusters listen on a socket only),
and ``create_slot`` hangs when both ends share a cluster. Capture by trigger works between any
two PostgreSQL servers, costs one small insert per changed row of the moving tenant only (the
trigger's WHEN clause filters other tenants of a shared table), and dies with the source.

What is captured is the *key* of each changed row, not its values: the catch-up copies the
current source row of every dirty key (or deletes it from the target when it is gone). That is
idempotent and independent of commit order, so a resumed catch-up simply runs again.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.moves.tables import TableInfo
from bizosctl.tenancy.names import q
from tenant_schema.ddl import READ_ONLY_TABLES

SCHEMA = "bizos_move"


def names(op_id: uuid.UUID) -> tuple[str, str, str]:
    short = op_id.hex[:12]
    return f"log_{short}", f"capture_{short}", f"bizos_move_{short}"


def install_log(conn: Connection, *, op_id: uuid.UUID, schema: str, tenant_id: uuid.UUID) -> None:
    """The change log and the trigger function of one move (idempotent; as the superuser).

    The trigger also closes the freeze to statements that passed the statement-level write
    guard before it began: a statement can pass the guard, then wait (a slow scan, a
    subquery, a lock) and change its row after the freeze, when its transaction had no xid
    yet for the freeze to wait on. Every changed row of the moving tenant therefore reads
    ``tenant_state`` again and is refused with BZ503 once it says ``moving``. In READ
    COMMITTED that read takes a fresh snapshot (a volatile function's statements do); under
    a transaction snapshot it locks the row ``FOR SHARE`` instead, which conflicts with the
    freeze's UPDATE: a writer that locked first makes the freeze wait for its commit (and
    so for ``wait_for_writers``'s snapshot), one that comes after fails to serialise.
    """
    log, fn, _ = names(op_id)
    state = f"{q(schema)}.tenant_state"
    tid = str(uuid.UUID(str(tenant_id)))
    guarded_out = ", ".join(f"'{t}'" for t in READ_ONLY_TABLES)
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    conn.execute(text(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC"))
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{log} (seq bigserial PRIMARY KEY, "
            "tbl text NOT NULL, pk jsonb NOT NULL)"
        )
    )
    conn.execute(
        text(
            f"CREATE OR REPLACE FUNCTION {SCHEMA}.{fn}() RETURNS trigger LANGUAGE plpgsql "
            f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$\n"
            "DECLARE n jsonb; o jsonb; k jsonb := '{}'::jsonb; ko jsonb := '{}'::jsonb;"
            " col text; st text;\n"
            "BEGIN\n"
            # The control plane's own writes (the freeze itself, and the audit rows it makes)
            # go to the tables the application may only read.
            f"  IF TG_TABLE_NAME IN ({guarded_out}) THEN NULL;\n"
            "  ELSIF current_setting('transaction_isolation') = 'read committed' THEN\n"
            f"    SELECT status INTO st FROM {state} WHERE tenant_id = '{tid}';\n"
            "  ELSE\n"
            f"    SELECT status INTO st FROM {state} WHERE tenant_id = '{tid}' FOR SHARE;\n"
            "  END IF;\n"
            "  IF st = 'moving' THEN\n"
            "    RAISE EXCEPTION 'tenant is moving: writes pause briefly, retry'\n"
            "      USING ERRCODE = 'BZ503', HINT = 'retry in a moment';\n"
            "  END IF;\n"
            "  IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;\n"
            "  IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;\n"
            "  IF TG_NARGS > 0 THEN FOREACH col IN ARRAY TG_ARGV LOOP\n"
            "    k := k || jsonb_build_object(col, COALESCE(n, o) -> col);\n"
            "    ko := ko || jsonb_build_object(col, COALESCE(o, n) -> col); END LOOP; END IF;\n"
            f"  INSERT INTO {SCHEMA}.{log} (tbl, pk) VALUES (TG_TABLE_NAME, k);\n"
            "  -- an UPDATE that changed the key dirties the old key too\n"
            f"  IF ko <> k THEN INSERT INTO {SCHEMA}.{log} (tbl, pk) VALUES (TG_TABLE_NAME, ko);"
            " END IF;\n"
            "  RETURN NULL;\n"
            "END $$"
        )
    )


def install_triggers(conn: Connection, *, op_id: uuid.UUID, schema: str, tenant_id: uuid.UUID,
                     table: TableInfo) -> None:  # fmt: skip
    """Capture the tenant's changes to one table (idempotent)."""
    _, fn, trig = names(op_id)
    tid = str(uuid.UUID(str(tenant_id)))  # a literal in the trigger's WHEN clause
    args = ", ".join(f"'{c}'" for c in table.key)
    target = f"{q(schema)}.{q(table.name)}"
    for suffix, events, row in (("w", "INSERT OR UPDATE", "NEW"), ("d", "DELETE", "OLD")):
        name = f"{trig}_{suffix}"
        conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {target}"))
        conn.execute(
            text(
                f"CREATE TRIGGER {name} AFTER {events} ON {target} FOR EACH ROW "
                f"WHEN ({row}.tenant_id = '{tid}') EXECUTE FUNCTION {SCHEMA}.{fn}({args})"
            )
        )


def remove_triggers(conn: Connection, *, op_id: uuid.UUID, schema: str, table: str) -> None:
    _, _, trig = names(op_id)
    for suffix in ("w", "d"):
        conn.execute(text(f"DROP TRIGGER IF EXISTS {trig}_{suffix} ON {q(schema)}.{q(table)}"))


def remove_log(conn: Connection, *, op_id: uuid.UUID) -> None:
    log, fn, _ = names(op_id)
    conn.execute(text(f"DROP FUNCTION IF EXISTS {SCHEMA}.{fn}()"))
    conn.execute(text(f"DROP TABLE IF EXISTS {SCHEMA}.{log}"))


def pending(conn: Connection, *, op_id: uuid.UUID) -> int:
    log, _, _ = names(op_id)
    return int(conn.execute(text(f"SELECT count(*) FROM {SCHEMA}.{log}")).scalar_one())


def read_dirty(
    conn: Connection, *, op_id: uuid.UUID, limit: int = 20_000
) -> tuple[list[int], dict[str, list[dict[str, Any]]]]:
    """Distinct dirty keys per table, oldest first; returns (their log seqs, keys).

    The log is a queue: entries are deleted once applied (``ack``), never skipped by position,
    because sequence numbers are taken at insert time, not at commit time: an entry with a
    lower number can become visible after one with a higher number was read.
    """
    log, _, _ = names(op_id)
    rows = conn.execute(
        text(f"SELECT seq, tbl, pk FROM {SCHEMA}.{log} ORDER BY seq LIMIT :n"), {"n": limit}
    ).all()
    keys: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for _seq, tbl, pk in rows:
        keys[tbl][json.dumps(pk, sort_keys=True)] = pk
    return [r[0] for r in rows], {t: list(v.values()) for t, v in keys.items()}


def ack(conn: Connection, *, op_id: uuid.UUID, seqs: list[int]) -> None:
    log, _, _ = names(op_id)
    conn.execute(text(f"DELETE FROM {SCHEMA}.{log} WHERE seq = ANY(:s)"), {"s": seqs})
