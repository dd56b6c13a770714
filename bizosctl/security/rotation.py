"""Rotating the PII key online: a new primary, every encrypted value re-encrypted, the old
version retired once nothing uses it.

The application keeps reading and writing throughout: values under the old version still
decrypt (the old key stays live), new writes take the new primary as soon as a process
re-reads its keyring (``BIZOS_KEYRING_RELOAD_SECONDS``). The new key is readable by every
process before it becomes primary, so no process ever meets a value under a version it does
not know: it is the version staged by the previous rotation (or by ``init``), which every
process loaded long ago; without one (or with ``fresh_key``) a new read-only version is added
and becomes primary one reload period later. A completed rotation stages the next one.
Re-encryption walks every table of every target in physical order, in batches, each batch
one short transaction whose UPDATE only replaces the exact row version it read (ctid and
xmin: optimistic), so a concurrent application write is never overwritten. After the reload
period a count finds what stale writers wrote under the old key (and the rows skipped), a
final sweep re-encrypts it, and only when a count finds nothing left is the old version
retired. Large tables are re-encrypted by worker processes (see :class:`Crypto`). A value
that no key decrypts (the application role can write anything) is quarantined, not fatal:
see :mod:`bizosctl.security.quarantine`. The retired version's material is destroyed once
``BIZOS_KEY_DESTROY_AFTER`` has passed (by a later rotation or ``secrets retire-due``).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control
from bizosctl.catalog.operations import (
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
    get_operation,
    patch_params,
)
from bizosctl.db.engines import psycopg_conninfo, translate_errors
from bizosctl.errors import DecryptionFailed, InvalidInput, NotFound
from bizosctl.fanout import Outcome, for_each
from bizosctl.faults import crash_point
from bizosctl.security.keyring import (
    Keyring,
    destroy_due,
    next_version,
    retire,
    set_primary,
    stage_next,
)
from bizosctl.security.recrypt import Job, Keys, close_connections, rotate_pages
from bizosctl.security.rotation_ops import start_rotation, step_session
from bizosctl.security.usage import _engine, _targets, pii_usage
from bizosctl.security.usage import count_by_version as count_by_version  # re-exported
from bizosctl.sync.targets import Target

if TYPE_CHECKING:
    from bizosctl.jobs.background import Submitted
from bizosctl.tenancy.names import q
from tenant_schema.models import ENCRYPTED_COLUMNS

Progress = Callable[[str, int], None]
SWEEPS = 5


#: A table this large (in pages, ~50 members each) is re-encrypted by worker processes.
PROCESS_PAGES = 400
CHUNKS_PER_WORKER = 4
NICE = 10  # the crypto workers' niceness


class Crypto:
    """Where tables are re-encrypted: a thread for small tables, a pool of worker processes
    (started on first need, ``workers`` of them; 0 = never) for large ones. Either way each
    worker has its own database connection (closed with this object)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._thread: ThreadPoolExecutor | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # targets re-encrypted in parallel share this object

    def executor(self, pages: int) -> tuple[Executor, int]:
        """The executor for a table of ``pages`` pages and how many workers it has."""
        with self._lock:
            return self._executor(pages)

    def _executor(self, pages: int) -> tuple[Executor, int]:
        if self.workers > 0 and pages >= PROCESS_PAGES:
            if self._pool is None:
                ctx = multiprocessing.get_context("forkserver")
                # psycopg too: each worker would otherwise import it on its first chunk (~0.15 s)
                ctx.set_forkserver_preload(["bizosctl.security.recrypt", "psycopg"])
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=ctx,
                    initializer=_background,
                    initargs=(os.getpid(),),
                )
            return self._pool, self.workers
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="bz-recrypt")
        return self._thread, 1

    def close(self) -> None:
        for ex in (self._thread, self._pool):
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)
        close_connections()  # the thread's (a worker process's close when it exits)

    def __enter__(self) -> Crypto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _background(owner: int) -> None:
    """Worker processes yield the CPU to the application's processes on the same machine
    (measured on 2 cores: the reader's p99 during a rotation 16-29 ms instead of 26-33 ms, the
    rotation's throughput within the noise), ignore Ctrl-C and die with the command."""
    from bizosctl.signals import tie_to_owner

    tie_to_owner(owner)
    os.nice(NICE)


def _page_step(raw: Any, schema: str, table: str, batch: int) -> tuple[int, int]:
    """(pages in the table now, pages per batch for about ``batch`` rows)."""
    pages, relpages, reltuples = raw.execute(
        "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, c.relpages, "
        "c.reltuples FROM pg_class c WHERE c.oid = %s::regclass",
        [f"{q(schema)}.{q(table)}"],
    ).fetchone()
    raw.commit()
    per_page = reltuples / relpages if relpages > 0 and reltuples > 0 else 50.0
    return int(pages), max(1, int(batch / per_page))


def default_workers() -> int:
    """One more than the cores, at most 4: a worker alternates between its cryptography and
    waiting for its database backend, so one extra keeps every core busy (measured on 2 cores:
    3 workers beat 2)."""
    return min(4, (os.cpu_count() or 1) + 1)


def _keys(ring: Keyring) -> Keys:
    return tuple((k.version, k.key) for k in ring.versions("pii"))


def reencrypt_table(
    engine: Engine,
    ring: Keyring,
    *,
    schema: str,
    table: str,
    version: int,
    batch: int,
    crypto: Crypto,
    progress: Progress | None = None,
    quarantine: list[dict[str, str]] | None = None,
) -> int:
    """Re-encrypt every value of ``table`` not under ``version``. Returns rows rewritten.

    A value that does not decrypt is left as it is and appended to ``quarantine`` (without
    one: :class:`~bizosctl.errors.DecryptionFailed`).

    The table's pages are cut into chunks of a few batches (about ``batch`` rows each) that
    the ``crypto`` executor's workers re-encrypt with :func:`rotate_pages`, each with its own
    connection: in physical order, one short transaction per batch, never overwriting a row
    the application changed meanwhile (see :mod:`bizosctl.security.recrypt`). Rows that move
    while this runs (a concurrent update, a page appended at the end) are left to the
    caller's sweep.
    """
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        pages, step = _page_step(raw, schema, table, batch)
    if not pages:
        return 0
    executor, parallel = crypto.executor(pages)
    job = Job(
        conninfo=tuple(sorted(psycopg_conninfo(engine.url).items())),
        schema=schema,
        table=table,
        cols=tuple(ENCRYPTED_COLUMNS[table].items()),
        version=version,
        keys=_keys(ring),
        binds=tuple(k.version for k in ring.versions("pii") if k.binds_rows),
    )
    # a few chunks per worker: all of them busy to the end, progress reported along the way
    chunk = step * max(1, -(-pages // step) // (parallel * CHUNKS_PER_WORKER))
    futures = [
        executor.submit(rotate_pages, job, lo, min(lo + chunk, pages), step)
        for lo in range(0, pages, chunk)
    ]
    written = 0
    try:
        for fut in as_completed(futures):
            found, n, bad = fut.result()
            written += n
            if bad and quarantine is None:
                raise DecryptionFailed(
                    f"{schema}.{table}: {len(bad)} value(s) do not decrypt ({bad[0]['reason']})"
                )
            if quarantine is not None:
                quarantine += bad
            if progress is not None:
                progress(table, found)
    finally:
        for fut in futures:
            fut.cancel()
    return written


class PiiRotationParams(BaseModel):
    """What a ``secrets.rotate`` operation records: everything a rerun (``ops resume ID``, a
    worker) needs. ``fresh_key`` says which key; the others only say how to run."""

    batch: int = Field(2000, ge=1, le=50_000)
    workers: int | None = Field(None, ge=0, le=32)
    fresh_key: bool = False
    quarantine_action: str = "keep"
    parallel: int = Field(1, ge=1, le=32)

    @field_validator("quarantine_action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        from bizosctl.security import quarantine as qt

        if value not in qt.ACTIONS:
            raise InvalidInput(
                f"unknown quarantine action {value!r}: choose {' or '.join(qt.ACTIONS)}"
            )
        return value


def record_pii_rotation(
    ctl: Control,
    s: Session,
    params: PiiRotationParams,
    *,
    status: OperationStatus = OperationStatus.RUNNING,
) -> tuple[uuid.UUID, bool]:
    """Resume the pii rotation a dead process left open, or record a new one (``queued`` for a
    worker), in the caller's transaction. Returns ``(operation id, resumed)``; Busy while
    another process runs one. A resumed run keeps its key (``fresh_key`` as recorded) and
    takes the new call's batch size, workers, parallel and quarantine action."""
    op_id, resumed = start_rotation(
        ctl, s, kind=OperationKind.ROTATE_PII, target="pii", params=params, status=status
    )
    if resumed:
        patch_params(
            s,
            op_id,
            **params.model_dump(
                mode="json", include={"batch", "workers", "quarantine_action", "parallel"}
            ),
        )
    return op_id, resumed


def resume_pii_rotation(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: run a queued pii rotation, or resume one whose process died."""
    return _run_pii(ctl, op.id, resumed=op.status != OperationStatus.QUEUED)


def reencrypt_target(
    ctl: Control,
    t: Target,
    ring: Keyring,
    version: int,
    batch: int,
    crypto: Crypto,
    progress: Progress | None = None,
    quarantine: list[dict[str, str]] | None = None,
) -> int:
    """Every encrypted table of one target (a schema). Returns rows rewritten; values that do
    not decrypt go to ``quarantine`` (see :func:`reencrypt_table`)."""
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
                crypto=crypto,
                progress=progress,
                quarantine=quarantine,
            )
    return n


def _sleep_until(moment: float) -> None:
    wait = moment - time.time()
    if wait > 0:
        time.sleep(wait)


def _target_name(t: Target) -> str:
    return f"{t.server}/{t.database}/{t.schema}"


def rotate_pii(
    ctl: Control,
    *,
    batch: int = 2000,
    workers: int | None = None,
    fresh_key: bool = False,
    quarantine_action: str = "keep",
    parallel: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """New primary ``pii`` key, every value re-encrypted, old versions retired. Resumable.

    ``workers``: processes that re-encrypt large tables (default: one more than the cores, at
    most 4; 0 keeps all the work in a thread of this process). ``fresh_key``: do not switch to
    the staged key (after a leak of the keyring it is as exposed as the current one) but to a
    new one, which first waits one reload period. Values that do not decrypt are quarantined
    (see :mod:`bizosctl.security.quarantine`; ``quarantine_action``: ``keep`` or ``null``)
    and listed in the report's ``quarantined``; the rotation still completes. ``parallel``:
    targets re-encrypted at once, never two on one server (default 1: one after another).

    An operation (``secrets.rotate`` on ``pii``; one step per target done): a run that died
    is resumed by running it again or by ``ops resume ID``. Returns the report; ``ok`` is
    false when something is left (``left``: values under old versions; ``skipped``: targets
    of moving tenants) or quarantined, and ``error`` says what.
    """
    params = PiiRotationParams(
        batch=batch,
        workers=workers,
        fresh_key=fresh_key,
        quarantine_action=quarantine_action,
        parallel=parallel,
    )
    with ctl.catalog() as s:
        op_id, resumed = record_pii_rotation(ctl, s, params)
    return _run_pii(ctl, op_id, resumed=resumed, progress=progress)


def submit_pii_rotation(
    ctl: Control,
    *,
    batch: int = 2000,
    workers: int | None = None,
    fresh_key: bool = False,
    quarantine_action: str = "keep",
    parallel: int = 1,
) -> Submitted:
    """``secrets rotate pii --background``: record the rotation (or the interrupted one) and
    queue its job in one transaction; a worker runs it as :func:`rotate_pii` would."""
    from bizosctl.jobs.background import submit

    params = PiiRotationParams(
        batch=batch,
        workers=workers,
        fresh_key=fresh_key,
        quarantine_action=quarantine_action,
        parallel=parallel,
    )
    return submit(ctl, lambda s: record_pii_rotation(ctl, s, params, status=OperationStatus.QUEUED))


def _run_pii(
    ctl: Control, op_id: uuid.UUID, *, resumed: bool, progress: Progress | None = None
) -> dict[str, Any]:
    from bizosctl.security import quarantine as qt

    op = get_operation(ctl, op_id)
    if op is None:
        raise NotFound(f"no operation {op_id}")
    params = PiiRotationParams.model_validate(op.params)
    batch, fresh_key, quarantine_action = params.batch, params.fresh_key, params.quarantine_action
    crypto = Crypto(default_workers() if params.workers is None else params.workers)
    quarantined: dict[tuple[str, str, str, str], qt.Entry] = {}

    def keep(entries: list[qt.Entry]) -> None:
        for e in entries:
            quarantined.setdefault(qt.entry_id(e), e)

    with crypto, OperationRun(ctl, op_id) as run:
        reload_s = ctl.settings.keyring_reload_seconds
        # Phase 1: the new key only reads until every process has re-read its keyring (one
        # reload period after it was made), so that each of them can read values under it. A
        # staged key was made long ago: no wait.
        if "new-key" not in run.completed:
            master = ctl.keyring.master
            with step_session(run) as s:  # committed with its step
                version, age = next_version(s, master, "pii", fresh=fresh_key)
            run.step("new-key", version=version, at=time.time() - age)
            crash_point("rotate.new-key")
        new_key = run.step_data("new-key")
        version = int(new_key["version"])
        waited = max(0.0, float(new_key["at"]) + reload_s - time.time())
        _sleep_until(float(new_key["at"]) + reload_s)
        # Phase 2: it becomes primary; writes move to it within one more reload period.
        if "primary" not in run.completed:
            with step_session(run) as s:
                set_primary(s, "pii", version)
            run.step("primary", at=time.time())
        started = float(run.step_data("primary")["at"])
        ctl.reload_keyring()
        ring = ctl.keyring
        rewritten = 0
        targets = _targets(ctl)
        skipped = [t.label for t in targets if t.moving]
        for done in run.steps("target:"):  # what an earlier, interrupted run quarantined
            keep(list(done.data.get("quarantined") or []))
        cancelled = False
        todo = [
            (i, t)
            for i, t in enumerate(targets)
            if not t.moving and f"target:{_target_name(t)}" not in run.completed
        ]

        def stop() -> bool:  # a safe point: every target before is done (or in flight)
            nonlocal cancelled
            cancelled = cancelled or run.cancel_requested()
            return cancelled

        def start(item: tuple[int, Target]) -> Target:
            i, t = item
            run.set_progress(i, len(targets), _target_name(t))
            return t

        def one(t: Target) -> tuple[int, list[qt.Entry]]:
            bad: list[qt.Entry] = []
            return reencrypt_target(ctl, t, ring, version, batch, crypto, progress, bad), bad

        def checkpoint(o: Outcome[tuple[int, Target], tuple[int, list[qt.Entry]]]) -> None:
            nonlocal rewritten
            if o.result is None:  # skipped: cancelled
                return
            t, (n, bad) = o.item[1], o.result
            for e in bad:
                e["target"] = _target_name(t)
            keep(bad)
            rewritten += n
            run.step(f"target:{_target_name(t)}", rewritten=n, quarantined=bad)
            crash_point(
                f"rotate.target.{len([c for c in run.completed if c.startswith('target:')])}"
            )

        # one target per server at a time; any error ends the rotation (once what is in flight
        # is checkpointed), as in the serial walk
        for_each(
            todo,
            one,
            key=lambda item: item[1].server,
            prepare=start,
            parallel=params.parallel,
            per_key=1,
            should_stop=stop,
            on_done=checkpoint,
            catch=(),
        )
        if cancelled:
            why = "cancelled by the operator; what was re-encrypted stays so"
            run.finish(OperationStatus.CANCELLED, why)
            return {
                "ok": False,
                "error": why,
                "cancelled": True,
                "purpose": "pii",
                "operation": str(op_id),
                "resumed": resumed,
                "version": version,
                "rows_rewritten": rewritten,
            }
        # Processes that had not re-read their keyring yet may have written under the old
        # key: wait one reload period, then sweep until nothing old is left.
        _sleep_until(started + reload_s)
        still = [t for t in targets if not t.moving]
        by_name = {_target_name(t): t for t in still}

        def still_bad() -> list[tuple[Target, list[tuple[qt.Entry, str]]]]:
            """Quarantined values that still do not decrypt, per target (the others, fixed
            by the application meanwhile, leave the quarantine)."""
            out = []
            groups: dict[str, list[qt.Entry]] = {}
            for e in quarantined.values():
                groups.setdefault(e["target"], []).append(e)
            for tname, entries in groups.items():
                t = by_name.get(tname)
                if t is None:
                    continue
                with translate_errors(f"server {t.server}"), _engine(ctl, t).connect() as conn:
                    found = qt.recheck(conn, ring, schema=t.schema, entries=entries)
                gone = {qt.entry_id(e) for e in entries} - {qt.entry_id(e) for e, _ in found}
                for key in gone:
                    quarantined.pop(key, None)
                out.append((t, found))
            return out

        def old_values() -> dict[int, int]:
            left = pii_usage(ctl, still, other_than=version)
            if left and quarantined:  # values no key reads do not hold the old key back
                tokens = [tok for _t, found in still_bad() for _e, tok in found]
                left = qt.discount(left, tokens, version)
            return left

        # A count is cheaper than a sweep, and usually finds nothing to sweep.
        left = old_values()
        for _ in range(SWEEPS if left else 0):
            for t in still:
                bad: list[qt.Entry] = []
                rewritten += reencrypt_target(ctl, t, ring, version, batch, crypto, None, bad)
                for e in bad:
                    e["target"] = _target_name(t)
                keep(bad)
            left = old_values()
            if not left:
                break
        retired: list[int] = []
        destroyed: list[int] = []
        staged: int | None = None
        if quarantined and not left:
            actor = f"secrets.rotate pii {op_id}"
            for t, found in still_bad():
                with translate_errors(f"server {t.server}"), _engine(ctl, t).connect() as conn:
                    qt.apply_action(
                        conn, schema=t.schema, bad=found, action=quarantine_action, actor=actor
                    )
            run.step("quarantine", action=quarantine_action, values=qt.public(quarantined.values()))
        if not left and not skipped:
            master = ctl.keyring.master
            with step_session(run) as s:
                retired = retire(s, "pii", keep=version)
                destroyed = [
                    v
                    for _p, v in destroy_due(
                        s, destroy_after_s=ctl.settings.key_destroy_after, purposes=("pii",)
                    )
                ]
                staged = stage_next(s, master, "pii")
            run.step("retire", versions=retired, destroyed=destroyed, staged=staged)
        status = "done" if not left and not skipped else "failed"
        error: str | None = None
        if left:
            error = f"values still under old versions: {left}"
        elif skipped:
            error = f"tenants moving, not rotated: {', '.join(skipped)}; run the rotation again"
        elif quarantined:
            error = f"{len(quarantined)} value(s) do not decrypt: quarantined"
        run.finish(status, error)
    ctl.reload_keyring()
    return {
        "ok": status == "done" and not quarantined,
        "error": error,
        "purpose": "pii",
        "operation": str(op_id),
        "resumed": resumed,
        "version": version,
        "rows_rewritten": rewritten,
        "retired": retired,
        "destroyed": destroyed,
        "staged": staged,
        "waited_s": round(waited, 3),
        "left": left,
        "skipped": skipped,
        "quarantined": qt.public(quarantined.values()),
        "quarantine_action": quarantine_action,
    }
