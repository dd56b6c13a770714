"""Re-encrypting a range of a table's pages for a PII rotation, with its own connection.

:func:`rotate_pages` runs in worker processes for large tables (each has its own connection
and works on its own pages, so one worker's cryptography overlaps another's database work on
the other core, with no data crossing between processes) or in a thread of the rotating
process for small ones. Per batch of pages: one SELECT in physical order (a ctid range: no
index is walked) of the rows with a value under another version, the cryptography, one ``COPY
... FROM STDIN`` into a temp table and one UPDATE that only touches the exact row version it
read (ctid and xmin). The COPY text carries only what this process made (new tokens, blind
indexes) and what the server said (ctid, xmin), never a stored value, so nothing in the data
can inject a row. (A plain SELECT costs the client half of what ``COPY TO`` does: psycopg reads
COPY data a row at a time in Python.)
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bizosctl.errors import DecryptionFailed, KeyringError
from bizosctl.security.fields import ROW_KEY, Recrypter, normalize_email
from bizosctl.tenancy.names import q

#: (column, whether it has a blind index column) for each encrypted column of a table
Columns = tuple[tuple[str, bool], ...]
Keys = tuple[tuple[int, bytes], ...]
NULL = "\\N"


@dataclass(frozen=True)
class Job:
    """What a worker needs to re-encrypt pages of one table (picklable)."""

    conninfo: tuple[tuple[str, str], ...]  # psycopg.connect keywords, as the superuser
    schema: str
    table: str
    cols: tuple[tuple[str, str | None], ...]  # (encrypted column, its blind index column)
    version: int
    keys: Keys
    binds: tuple[int, ...] = ()  # the versions among ``keys`` that bind values to their row

    @functools.cached_property
    def sql(self) -> tuple[str, str, str, str]:
        """(SELECT with {lo} and {hi} pages, temp table DDL, COPY into it, UPDATE from it)."""
        relation = f"{q(self.schema)}.{q(self.table)}"
        names = [c for c, _ in self.cols]
        indexes = [b for _, b in self.cols if b]
        old = " OR ".join(
            f"({c} IS NOT NULL AND {c} NOT LIKE 'bz1.{int(self.version)}.%')" for c in names
        )
        read = (
            f"SELECT ctid::text, xmin::text, tenant_id::text, {ROW_KEY}::text, {', '.join(names)} "
            f"FROM {relation} "
            "WHERE ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid "
            f"AND ({old})"
        )
        temp = f"bz_rotate_{self.table}"
        layout = ", ".join(["ct tid", "x xid", *(f"{c} text" for c in [*names, *indexes])])
        ddl = f"CREATE TEMP TABLE IF NOT EXISTS {temp} ({layout}) ON COMMIT DELETE ROWS"
        sets = ", ".join(f"{c} = coalesce(v.{c}, t.{c})" for c in [*names, *indexes])
        # (ctid, xmin) names the row version that was read: if the application changed the
        # row since, its current version has another ctid or xmin (also after EvalPlanQual),
        # and the row is left to the sweep.
        update = (
            f"UPDATE {relation} AS t SET {sets} FROM pg_temp.{temp} AS v "
            "WHERE t.ctid = v.ct AND t.xmin = v.x"
        )
        return read, ddl, f"COPY pg_temp.{temp} FROM STDIN", update


_connections: dict[tuple[tuple[str, str], ...], Any] = {}
_temp_tables: dict[int, set[str]] = {}  # id(connection) -> temp tables created on it


def _connection(job: Job) -> Any:
    """This process's connection for ``job``'s database, set up once: triggers off (a key
    change is not a change of the tenant's data to audit), the temp table created."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    conn = _connections.get(job.conninfo)
    if conn is None or conn.closed:
        conn = psycopg.connect(make_conninfo(**dict(job.conninfo)))
        conn.execute("SET session_replication_role = replica")
        conn.commit()
        _connections[job.conninfo] = conn
        _temp_tables[id(conn)] = set()
    if job.table not in _temp_tables[id(conn)]:
        conn.execute(job.sql[1])
        conn.commit()
        _temp_tables[id(conn)].add(job.table)
    return conn


def close_connections() -> None:
    while _connections:
        conn = _connections.popitem()[1]
        _temp_tables.pop(id(conn), None)
        conn.close()


def rotate_pages(job: Job, lo: int, hi: int, step: int) -> tuple[int, int, list[dict[str, str]]]:
    """Re-encrypt the rows of pages ``lo <= page < hi``, ``step`` pages a transaction.
    Returns (rows found with a value not under ``job.version``, rows rewritten, the values
    that do not decrypt: ``{tenant_id, table, key, column, reason}``, left as they are)."""
    read, _, copy_in, update = job.sql
    cols = tuple((c, b is not None) for c, b in job.cols)
    conn = _connection(job)
    found = written = 0
    bad: list[dict[str, str]] = []
    try:
        for start in range(lo, hi, step):
            with conn.cursor() as cur:
                data = cur.execute(read.format(lo=start, hi=min(start + step, hi))).fetchall()
                conn.commit()
                if not data:
                    continue
                failed: list[tuple[Sequence[str | None], int, str]] = []
                n, rows = recrypt_rows(
                    job.keys,
                    job.version,
                    job.table,
                    cols,
                    data,
                    binds=job.binds,
                    quarantine=failed,
                )
                found += n
                bad += [
                    {
                        "tenant_id": str(fields[2]),
                        "table": job.table,
                        "key": str(fields[3]),  # the row's id
                        "column": cols[j][0],
                        "reason": reason,
                    }
                    for fields, j, reason in failed
                ]
                if rows:
                    with cur.copy(copy_in) as copy:
                        copy.write(rows)
                    written += cur.execute(update).rowcount
                conn.commit()
    except BaseException:
        conn.close()  # whatever state it is in, the next call starts afresh
        raise
    return found, written, bad


@functools.lru_cache(maxsize=4)
def _recrypter(keys: Keys, version: int, binds: tuple[int, ...]) -> Recrypter:
    return Recrypter(dict(keys), version, binds)


def recrypt_rows(
    keys: Keys,
    version: int,
    table: str,
    cols: Columns,
    data: Sequence[Sequence[str | None]],
    *,
    binds: tuple[int, ...] = (),
    quarantine: list[tuple[Sequence[str | None], int, str]] | None = None,
) -> tuple[int, bytes]:
    """``data``: rows ``ctid, xmin, tenant_id, id, *cols`` (text). ``binds``: the versions
    that bind values to their row (``id``). Returns how many rows hold a
    value not under ``version``, and those rows as COPY text ``ctid, xmin, *new cols, *new
    index cols`` where ``\\N`` means "leave as it is" (a NULL value is never re-encrypted).

    A value that does not decrypt raises :class:`~bizosctl.errors.DecryptionFailed` (one under
    an unknown or retired version :class:`~bizosctl.errors.KeyringError`), unless
    ``quarantine`` is given: then each such value is left as it is and appended to it as
    ``(its row of data, column index, reason)``, and the others are re-encrypted.
    """
    # Everything allocated here is acyclic and short-lived: the cyclic GC's collections, set off
    # by the many small containers, only slow the batch down (up to twice as long, measured).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _recrypt_rows(keys, version, table, cols, data, binds, quarantine)
    finally:
        if enabled:
            gc.enable()


def _recrypt_rows(
    keys: Keys,
    version: int,
    table: str,
    cols: Columns,
    data: Sequence[Sequence[str | None]],
    binds: tuple[int, ...],
    quarantine: list[tuple[Sequence[str | None], int, str]] | None,
) -> tuple[int, bytes]:
    rc = _recrypter(keys, version, binds)
    k = len(cols)
    names = [c.removesuffix("_enc") for c, _ in cols]
    index_of = []  # for each column, the output field of its blind index, or -1
    n_index = 0
    for _, has_index in cols:
        index_of.append(k + n_index if has_index else -1)
        n_index += has_index
    prefix = rc.prefix
    aads: dict[str, list[bytes]] = {}
    rows: list[tuple[str, list[str]]] = []  # (ctid and xmin, new fields)
    todo: list[tuple[str, bytes, bytes]] = []  # values to re-encrypt, in row order
    suffix = rc.row_suffix
    where: list[tuple[list[str], int, int]] = []  # (its row's new fields, field, index field)
    origin: dict[int, Sequence[str | None]] = {}  # id(new fields) -> its row of data
    for fields in data:
        new = [NULL] * (k + n_index)
        tenant = fields[2] or ""
        row = b""
        for j in range(k):
            old = fields[4 + j]
            if old is None or old.startswith(prefix):
                continue
            aad_row = aads.get(tenant)
            if aad_row is None:
                aad_row = aads[tenant] = [rc.aad(tenant, table, n) for n in names]
            if not row:
                row = suffix(fields[3] or "")
            todo.append((old, aad_row[j], row))
            where.append((new, j, index_of[j]))
        if len(todo) and where[-1][0] is new:
            rows.append((f"{fields[0]}\t{fields[1]}\t", new))
            origin[id(new)] = fields
    if not rows:
        return 0, b""
    index = rc.index
    hit = False
    try:
        done: list[tuple[str, bytes] | None] = list(rc.recrypt(todo))
    except (DecryptionFailed, KeyringError):
        if quarantine is None:
            raise
        hit, done = True, []  # one value at a time, to find those that do not decrypt (rare)
        for item, (new, j, _) in zip(todo, where, strict=True):
            try:
                done += rc.recrypt([item])
            except (DecryptionFailed, KeyringError) as exc:
                reason = "does not decrypt" if isinstance(exc, DecryptionFailed) else exc.message
                quarantine.append((origin[id(new)], j, reason))
                done.append(None)
    for (new, j, ipos), result in zip(where, done, strict=True):
        if result is None:
            continue
        token, clear = result
        new[j] = token
        if ipos >= 0:
            new[ipos] = index(normalize_email(clear.decode()))
    found = len(rows)
    if hit:
        # a row whose only old values do not decrypt has nothing to write
        rows = [(head, new) for head, new in rows if any(v != NULL for v in new)]
    return found, "".join(head + "\t".join(new) + "\n" for head, new in rows).encode()
