"""Values a PII rotation cannot decrypt, kept apart so that one of them does not stop it.

The application role can write anything into an ``*_enc`` column (a value under a version
that never existed, random bytes after a valid-looking ``bz1.1.`` prefix, a ciphertext copied
from another row). No key decrypts such a value, so a rotation leaves it as it is, records it
in its operation (target, tenant, table, row key, column, reason: never the value), re-encrypts
everything else and reports it. Since no live key reads a quarantined value, retiring the old
version loses nothing: the rotation retires it once only quarantined values are left under it.
``--quarantine-action`` decides their fate: ``keep`` (default: left for the operator to look
at, reported again by the next rotation) or ``null`` (the column, and its blind index, set to
NULL where the column allows it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.errors import DecryptionFailed, KeyringError
from bizosctl.security.fields import decrypt
from bizosctl.security.keyring import Keyring
from bizosctl.security.usage import claimed_version
from bizosctl.tenancy.names import q
from tenant_schema.models import ENCRYPTED_COLUMNS

ACTIONS = ("keep", "null")
Entry = dict[str, str]  # target, tenant_id, table, key, column, reason (+ action at the end)


def entry_id(e: Entry) -> tuple[str, str, str, str]:
    return (e["target"], e["table"], e["key"], e["column"])


def _checked(entries: Iterable[Entry]) -> list[Entry]:
    """Entries naming a table and column we encrypt (they come back from the catalog)."""
    return [e for e in entries if e.get("column") in ENCRYPTED_COLUMNS.get(e.get("table", ""), {})]


def recheck(
    conn: Connection, ring: Keyring, *, schema: str, entries: list[Entry]
) -> list[tuple[Entry, str]]:
    """The entries of one target whose value still does not decrypt under any live key, each
    with the value read now. (The application may have fixed or deleted the row since.)"""
    out: list[tuple[Entry, str]] = []
    by_column: dict[tuple[str, str], list[Entry]] = {}
    for e in _checked(entries):
        by_column.setdefault((e["table"], e["column"]), []).append(e)
    for (table, column), group in by_column.items():
        rows = conn.execute(
            text(
                f"SELECT tenant_id::text, id::text, {q(column)} FROM {q(schema)}.{q(table)} "
                "WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": [e["key"] for e in group]},
        ).all()
        conn.rollback()
        now = {(t, k): v for t, k, v in rows}
        for e in group:
            token = now.get((e["tenant_id"], e["key"]))
            if token is None:
                continue
            try:
                decrypt(
                    ring,
                    token,
                    tenant_id=e["tenant_id"],
                    table=table,
                    column=column.removesuffix("_enc"),
                )
            except (DecryptionFailed, KeyringError):
                out.append((e, token))
    return out


def discount(left: dict[int, int], tokens: Iterable[str], version: int) -> dict[int, int]:
    """``left`` (values under versions other than ``version``, as
    :func:`~bizosctl.security.usage.count_by_version` counts them) without the quarantined
    ``tokens``."""
    out = dict(left)
    for token in tokens:
        if token.startswith(f"bz1.{int(version)}."):
            continue  # not counted as old
        v = claimed_version(token)
        if v is not None and v in out:
            out[v] -= 1
            if out[v] <= 0:
                del out[v]
    return out


def apply_action(
    conn: Connection, *, schema: str, bad: list[tuple[Entry, str]], action: str, actor: str
) -> None:
    """Carry out ``action`` on the still-bad values of one target; sets each entry's
    ``action`` (kept, nulled, or why it was kept)."""
    if action != "null":
        for e, _token in bad:
            e["action"] = "kept"
        return
    with conn.begin():
        # the audit trail names who changed the rows
        conn.execute(text("SELECT set_config('bizos.actor', :a, true)"), {"a": actor})
        for e, token in bad:
            table, column = e["table"], e["column"]
            nullable = conn.execute(
                text(
                    "SELECT NOT attnotnull FROM pg_attribute "
                    "WHERE attrelid = CAST(:rel AS regclass) AND attname = :col"
                ),
                {"rel": f"{q(schema)}.{q(table)}", "col": column},
            ).scalar_one()
            if not nullable:
                e["action"] = "kept (column is required)"
                continue
            index = ENCRYPTED_COLUMNS[table][column]
            sets = f"{q(column)} = NULL" + (f", {q(index)} = NULL" if index else "")
            n = conn.execute(
                text(
                    f"UPDATE {q(schema)}.{q(table)} SET {sets} "
                    f"WHERE tenant_id = CAST(:t AS uuid) AND id = CAST(:k AS uuid) "
                    f"AND {q(column)} = :v"
                ),
                {"t": e["tenant_id"], "k": e["key"], "v": token},
            ).rowcount
            e["action"] = "nulled" if n else "kept (changed meanwhile)"


def public(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Entries for a report, in a stable order."""
    return sorted((dict(e) for e in entries), key=entry_id)
