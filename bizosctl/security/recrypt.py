"""Re-encrypting one batch of rows for a PII rotation: COPY text in, COPY text out.

Runs in a worker process for large tables (the cryptography then overlaps the database work
on another core instead of competing with the I/O threads for the GIL) or in a thread of the
rotating process for small ones. Rows travel as the text ``COPY ... TO STDOUT`` produced and go
back as the text ``COPY ... FROM STDIN`` reads: a field is passed through untouched unless it is
re-encrypted, so any value (``\\N`` for NULL, escapes included) round-trips exactly, and the
rotating process never builds a Python object per row.
"""

from __future__ import annotations

import functools
import gc

from bizosctl.security.fields import Recrypter, normalize_email

#: (column, whether it has a blind index column) for each encrypted column of a table
Columns = tuple[tuple[str, bool], ...]
Keys = tuple[tuple[int, bytes], ...]
NULL = "\\N"


@functools.lru_cache(maxsize=4)
def _recrypter(keys: Keys, version: int) -> Recrypter:
    return Recrypter(dict(keys), version)


def recrypt_copy(
    keys: Keys, version: int, table: str, cols: Columns, data: bytes
) -> tuple[int, bytes]:
    """``data``: COPY text rows ``ctid, xmin, tenant_id, *cols``. Returns how many rows hold a
    value not under ``version``, and those rows as COPY text ``ctid, xmin, *new cols, *new
    index cols`` where ``\\N`` means "leave as it is" (a NULL value is never re-encrypted).

    Raises :class:`~bizosctl.errors.DecryptionFailed` for a value that does not decrypt and
    :class:`~bizosctl.errors.KeyringError` for one under an unknown or retired version.
    """
    # Everything allocated here is acyclic and short-lived: the cyclic GC's collections, set off
    # by the many small containers, only slow the batch down (up to twice as long, measured).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _recrypt_copy(keys, version, table, cols, data)
    finally:
        if enabled:
            gc.enable()


def _recrypt_copy(
    keys: Keys, version: int, table: str, cols: Columns, data: bytes
) -> tuple[int, bytes]:
    rc = _recrypter(keys, version)
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
    todo: list[tuple[str, bytes]] = []  # values to re-encrypt, in row order
    where: list[tuple[list[str], int, int]] = []  # (its row's new fields, field, index field)
    for line in data.decode().split("\n"):
        if not line:
            continue
        fields = line.split("\t")
        new = [NULL] * (k + n_index)
        for j in range(k):
            old = fields[3 + j]
            if old == NULL or old.startswith(prefix):
                continue
            aad_row = aads.get(fields[2])
            if aad_row is None:
                aad_row = aads[fields[2]] = [rc.aad(fields[2], table, n) for n in names]
            todo.append((old, aad_row[j]))
            where.append((new, j, index_of[j]))
        if len(todo) and where[-1][0] is new:
            rows.append((f"{fields[0]}\t{fields[1]}\t", new))
    if not rows:
        return 0, b""
    index = rc.index
    for (new, j, ipos), (token, clear) in zip(where, rc.recrypt(todo), strict=True):
        new[j] = token
        if ipos >= 0:
            new[ipos] = index(normalize_email(clear.decode()))
    return len(rows), "".join(head + "\t".join(new) + "\n" for head, new in rows).encode()
