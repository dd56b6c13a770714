"""Rotating the PII key online: a new primary, every encrypted value re-encrypted, the old
version retired once nothing uses it.

The application keeps reading and writing throughout: values under the old version still
decrypt (the old key stays live), new writes take the new primary as soon as a process
re-reads its keyring (``BIZOS_KEYRING_RELOAD_SECONDS``). The new key is first added as a
read-only version and becomes primary only one reload period later, so no process ever meets a
value under a version it does not know. Re-encryption walks every target in
primary-key order, in batches, each batch one short transaction whose UPDATE only replaces a
value that is still the one it read (optimistic), so a concurrent application write is never
overwritten. After the reload period a final sweep re-encrypts what stale writers wrote under
the old key, and only when a sweep finds nothing left is the old version retired.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection, Engine

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry, Operation
from bizosctl.catalog.operations import OperationRun, create_operation, is_alive
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.errors import OperationFailed
from bizosctl.faults import crash_point
from bizosctl.security.fields import Recrypter, normalize_email
from bizosctl.security.keyring import Keyring, add_version, set_primary
from bizosctl.sync.targets import Target, list_targets
from tenant_schema.models import ENCRYPTED_COLUMNS

Progress = Callable[[str, int], None]
SWEEPS = 5


def q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _reencrypt_rows(
    rc: Recrypter, table: str, cols: dict[str, str | None], rows: list[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Rows are (tenant_id text, id text, *cols, *blind index cols)."""
    names = list(cols)
    bidx_names = [b for b in cols.values() if b]
    out = []
    for row in rows:
        tid = row[0]
        values = dict(zip(names, row[2 : 2 + len(names)], strict=True))
        changed: dict[str, Any] = {"tenant_id": tid, "id": row[1]}
        changed.update(zip(bidx_names, row[2 + len(names) :], strict=True))
        dirty = False
        for col, bidx in cols.items():
            old = values[col]
            changed[f"old_{col}"] = old
            changed[col] = old
            if old is None or old.startswith(rc.prefix):
                continue
            column = col.removesuffix("_enc")
            plain = rc.plain(old, tenant_id=tid, table=table, column=column)
            changed[col] = rc.seal(plain, tenant_id=tid, table=table, column=column)
            if bidx:
                changed[bidx] = rc.index(normalize_email(plain.decode()))
            dirty = True
        if dirty:
            out.append(changed)
    return out


def reencrypt_table(
    engine: Engine,
    ring: Keyring,
    *,
    schema: str,
    table: str,
    version: int,
    batch: int,
    progress: Progress | None = None,
) -> int:
    """Re-encrypt every value of ``table`` not under ``version``. Returns rows rewritten.

    A three-stage pipeline: one connection reads batches in primary-key order, this thread
    decrypts and encrypts, another connection writes; the database work of one batch overlaps
    the cryptography of the next.
    """
    cols = ENCRYPTED_COLUMNS[table]
    prefix = f"bz1.{version}.%"
    old_filter = " OR ".join(f"({c} IS NOT NULL AND {c} NOT LIKE %(prefix)s)" for c in cols)
    select_cols = ", ".join([*cols, *(b for b in cols.values() if b)])
    read_sql = (
        # Qualified ORDER BY: the text casts below are output columns named like the key
        # columns, and ordering by them would sort text instead of walking the index.
        f"SELECT r.tenant_id::text, r.id::text, {select_cols} FROM {q(schema)}.{q(table)} AS r "
        f"WHERE (r.tenant_id, r.id) > (%(lt)s, %(li)s) AND ({old_filter}) "
        "ORDER BY r.tenant_id, r.id LIMIT %(n)s"
    )
    record = ", ".join(
        [
            "tenant_id uuid",
            "id uuid",
            *(f"old_{c} text" for c in cols),
            *(f"{c} text" for c in cols),
            *(f"{b} text" for b in cols.values() if b),
        ]
    )
    sets = ", ".join(
        [*(f"{c} = v.{c}" for c in cols), *(f"{b} = v.{b}" for b in cols.values() if b)]
    )
    same = " AND ".join(f"t.{c} IS NOT DISTINCT FROM v.old_{c}" for c in cols)
    write_sql = (
        f"UPDATE {q(schema)}.{q(table)} AS t SET {sets} FROM "
        f"jsonb_to_recordset(%(rows)s::jsonb) AS v({record}) "
        f"WHERE t.tenant_id = v.tenant_id AND t.id = v.id AND {same}"
    )
    rc = Recrypter(ring, version)
    reads: queue.Queue[list[tuple[Any, ...]] | BaseException | None] = queue.Queue(maxsize=2)
    writes: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=2)
    written = [0]
    failure: list[BaseException] = []

    def reader(raw: Any) -> None:
        last = (uuid.UUID(int=0), uuid.UUID(int=0))  # typed: text would defeat the index
        try:
            while True:
                # prepare=False: a generic plan for this keyset query sorts the whole table
                rows = raw.execute(
                    read_sql,
                    {"lt": last[0], "li": last[1], "prefix": prefix, "n": batch},
                    prepare=False,
                ).fetchall()
                raw.commit()
                if not rows:
                    reads.put(None)
                    return
                last = (uuid.UUID(rows[-1][0]), uuid.UUID(rows[-1][1]))
                reads.put(rows)
        except BaseException as exc:
            reads.put(exc)

    def writer(raw: Any) -> None:
        try:
            while (changed := writes.get()) is not None:
                # Skip triggers: a key change is not a change of the tenant's data to audit.
                raw.execute("SET LOCAL session_replication_role = replica")
                written[0] += raw.execute(
                    write_sql, {"rows": json.dumps(changed)}, prepare=False
                ).rowcount
                raw.commit()
        except BaseException as exc:
            failure.append(exc)
            while writes.get() is not None:  # drain so the pipeline can stop
                pass

    with engine.connect() as rconn, engine.connect() as wconn:
        threads = [
            threading.Thread(target=reader, args=(rconn.connection.driver_connection,)),
            threading.Thread(target=writer, args=(wconn.connection.driver_connection,)),
        ]
        for t in threads:
            t.start()
        try:
            while (item := reads.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                changed = _reencrypt_rows(rc, table, cols, item)
                if changed:
                    writes.put(changed)
                if progress is not None:
                    progress(table, len(changed))
        finally:
            writes.put(None)
            for t in threads:
                t.join()
    if failure:
        raise failure[0]
    return written[0]


def count_by_version(conn: Connection, *, schema: str) -> dict[int, int]:
    """How many encrypted values each ``pii`` version holds in one target."""
    parts = [
        f"SELECT split_part({c}, '.', 2) AS v FROM {q(schema)}.{q(t)} WHERE {c} IS NOT NULL"
        for t, cols in ENCRYPTED_COLUMNS.items()
        for c in cols
    ]
    rows = conn.execute(
        text(f"SELECT v, count(*) FROM ({' UNION ALL '.join(parts)}) AS x GROUP BY v")
    ).all()
    return {int(v): int(n) for v, n in rows if str(v).isdigit()}


def _targets(ctl: Control) -> list[Target]:
    return list_targets(ctl)


def _engine(ctl: Control, t: Target) -> Any:
    handle = ctl.server(t.server)
    handle.ensure_ready()
    return get_engine(handle.admin_url(t.database), pooled=False)


def pii_usage(ctl: Control) -> dict[int, int]:
    total: dict[int, int] = {}
    for t in _targets(ctl):
        with translate_errors(f"server {t.server}"), _engine(ctl, t).connect() as conn:
            for v, n in count_by_version(conn, schema=t.schema).items():
                total[v] = total.get(v, 0) + n
    return total


def _operation(ctl: Control, purpose: str) -> tuple[uuid.UUID, bool]:
    with ctl.catalog() as s:
        ops = (
            s.execute(
                select(Operation.id)
                .where(
                    Operation.kind == "secrets.rotate",
                    Operation.target == purpose,
                    Operation.status == "running",
                )
                .order_by(Operation.started_at.desc())
            )
            .scalars()
            .all()
        )
    for op_id in ops:
        if not is_alive(ctl, op_id):
            return op_id, True
        from bizosctl.errors import Busy

        raise Busy(f"a {purpose} rotation is running in another process (operation {op_id})")
    return create_operation(ctl, kind="secrets.rotate", target=purpose, params={}), False


def _sleep_until(moment: float) -> None:
    wait = moment - time.time()
    if wait > 0:
        time.sleep(wait)


def _step(run: OperationRun, name: str) -> dict[str, Any]:
    steps = run.conn.execute(
        text("SELECT steps FROM operations WHERE id = :id"), {"id": run.id}
    ).scalar_one()
    run.conn.rollback()
    found = [s for s in steps if s.get("name") == name]
    return found[-1] if found else {}


def rotate_pii(
    ctl: Control, *, batch: int = 2000, progress: Progress | None = None
) -> dict[str, Any]:
    """New primary ``pii`` key, every value re-encrypted, old versions retired. Resumable."""
    op_id, resumed = _operation(ctl, "pii")
    with OperationRun(ctl, op_id) as run:
        reload_s = ctl.settings.keyring_reload_seconds
        # Phase 1: the new key exists but only reads. Once every process has re-read its
        # keyring (one reload period), each of them can read values under it.
        if "new-key" not in run.completed:
            with ctl.catalog() as s:
                version = add_version(s, ctl.keyring.master, "pii", primary=False)
            run.step("new-key", version=version, at=time.time())
            crash_point("rotate.new-key")
        version = int(_step(run, "new-key")["version"])
        _sleep_until(float(_step(run, "new-key")["at"]) + reload_s)
        # Phase 2: it becomes primary; writes move to it within one more reload period.
        if "primary" not in run.completed:
            with ctl.catalog() as s:
                set_primary(s, "pii", version)
            run.step("primary", at=time.time())
        started = float(_step(run, "primary")["at"])
        ctl.reload_keyring()
        ring = ctl.keyring
        rewritten = 0
        targets = _targets(ctl)
        skipped = [t.label for t in targets if t.moving]
        for t in targets:
            name = f"target:{t.server}/{t.database}/{t.schema}"
            if t.moving or name in run.completed:
                continue
            n = 0
            with translate_errors(f"server {t.server}"):
                engine = _engine(ctl, t)
                for table in ENCRYPTED_COLUMNS:
                    n += reencrypt_table(
                        engine,
                        ring,
                        schema=t.schema,
                        table=table,
                        version=version,
                        batch=batch,
                        progress=progress,
                    )
            rewritten += n
            run.step(name, rewritten=n)
            crash_point(
                f"rotate.target.{len([c for c in run.completed if c.startswith('target:')])}"
            )
        for t in targets:  # fresh statistics: the sweep below should not walk the index
            if not t.moving:
                with (
                    translate_errors(f"server {t.server}"),
                    _engine(ctl, t)
                    .connect()
                    .execution_options(isolation_level="AUTOCOMMIT") as conn,
                ):
                    for table in ENCRYPTED_COLUMNS:
                        conn.execute(text(f"ANALYZE {q(t.schema)}.{q(table)}"))
        # Processes that had not re-read their keyring yet may have written under the old
        # key: wait one reload period, then sweep until nothing old is left.
        _sleep_until(started + reload_s)
        left: dict[int, int] = {}
        for _ in range(SWEEPS):
            for t in targets:
                if t.moving:
                    continue
                with translate_errors(f"server {t.server}"):
                    engine = _engine(ctl, t)
                    for table in ENCRYPTED_COLUMNS:
                        rewritten += reencrypt_table(
                            engine, ring, schema=t.schema, table=table, version=version, batch=batch
                        )
            left = {v: n for v, n in pii_usage(ctl).items() if v != version and n}
            if not left:
                break
        retired: list[int] = []
        if not left and not skipped:
            with ctl.catalog() as s:
                retired = list(
                    s.execute(
                        update(KeyringEntry)
                        .where(
                            KeyringEntry.purpose == "pii",
                            KeyringEntry.version != version,
                            KeyringEntry.retired_at.is_(None),
                        )
                        .values(retired_at=text("now()"))
                        .returning(KeyringEntry.version)
                    ).scalars()
                )
            run.step("retire", versions=retired)
        status = "done" if not left and not skipped else "failed"
        error = None
        if left:
            error = f"values still under old versions: {left}"
        elif skipped:
            error = f"tenants moving, not rotated: {', '.join(skipped)}; run the rotation again"
        run.finish(status, error)
    ctl.reload_keyring()
    report = {
        "purpose": "pii",
        "operation": str(op_id),
        "resumed": resumed,
        "version": version,
        "rows_rewritten": rewritten,
        "retired": retired,
        "left": left,
        "skipped": skipped,
    }
    if status != "done":
        raise OperationFailed(f"pii rotation incomplete: {error}")
    return report
