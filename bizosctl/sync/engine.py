"""The schema sync engine: plan, canary, parallel fan-out, retry, record.

Each target is migrated in its own transaction on a bounded pool (overall ``parallel`` threads,
at most ``per_server`` connections per server), under the target's advisory lock and a
``lock_timeout``, so a busy tenant fails fast instead of stalling the fleet. Results are
recorded in the catalog as each target finishes; targets already at the destination are
skipped, so running the same command after a crash (even SIGKILL) finishes the rest.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import SchemaTarget
from bizosctl.catalog.operations import (
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
    start_or_resume,
)
from bizosctl.db.migrate import (
    EXTRA_ENV,
    direction,
    head,
    offline_sql,
    refuse_unknown_revisions,
    resolve,
)
from bizosctl.errors import InvalidInput
from bizosctl.fanout import Outcome, for_each
from bizosctl.faults import crash_point
from bizosctl.sync.targets import Selection, Target, list_targets, read_revisions
from bizosctl.sync.worker import dispose_engines, migrate_target, warm_up
from tenant_schema.ddl import OWNER_ROLE

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bizosctl.jobs.background import Submitted


@dataclass
class SyncOptions:
    to: str = "head"
    selection: Selection = field(default_factory=Selection)
    parallel: int = 4
    per_server: int = 4
    canary: int = 0
    fail_fast: bool = False
    lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 0
    dry_run: bool = False
    yes: bool = False
    wait: bool = True  # a target another run holds: wait for it (a deploy must not fail)
    operation: uuid.UUID | None = None  # run this recorded operation (a resume by id)

    def validate(self) -> None:
        for name, value, low in (
            ("--parallel", self.parallel, 1),
            ("--per-server", self.per_server, 1),
            ("--canary", self.canary, 0),
        ):
            if value < low:
                raise InvalidInput(f"{name} must be at least {low}, not {value}")
        if self.parallel > 256 or self.per_server > 256:
            raise InvalidInput("--parallel and --per-server are capped at 256")
        if not self.to.strip():
            raise InvalidInput("--to needs a revision id (or 'head')")
        self.selection.validate()
        resolve("tenant", self.to)  # an unknown --to is bad input, before anything starts

    def params(self) -> dict[str, Any]:
        return {"to": self.to, "selection": self.selection.describe()}


@dataclass
class TargetResult:
    target: Target
    before: str | None
    after: str | None
    status: str  # migrated | unchanged | failed | busy | skipped
    error: str | None = None
    duration_ms: float = 0.0
    attempts: int = 0
    retryable: bool = False

    def public(self) -> dict[str, Any]:
        t = self.target.public()
        t.update(
            revision=self.after if self.status in ("migrated", "unchanged") else self.before,
            status=self.status,
            error=self.error,
            before=self.before,
            duration_ms=round(self.duration_ms, 1),
            attempts=self.attempts,
        )
        return t


@dataclass
class SyncReport:
    head: str
    to: str
    dry_run: bool = False
    operation: str | None = None
    results: list[TargetResult] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return all(r.status in ("migrated", "unchanged") for r in self.results)

    def summary(self) -> dict[str, int]:
        """Targets per status; migrated, unchanged and failed always appear, even at zero."""
        counts = Counter({"migrated": 0, "unchanged": 0, "failed": 0})
        counts.update(r.status for r in self.results)
        return dict(counts)

    def public(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "operation": self.operation,
            "head": self.head,
            "to": self.to,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "summary": self.summary(),
            "elapsed_s": round(self.elapsed_s, 3),
            "targets": [r.public() for r in self.results],
            "failed": [r.public() for r in self.results if r.status in ("failed", "busy")],
        }
        if self.dry_run:
            doc["plan"] = self.plan
        if self.cancelled:
            doc["cancelled"] = True
        return doc


ResultCallback = Callable[[TargetResult, int, int], None]
RECORD_EVERY = 50  # results per catalog write


class _Runner:
    """One run's worker pool, per-server limits and bookkeeping (all in the parent process)."""

    def __init__(self, ctl: Control, opts: SyncOptions, dest: str, op_id: uuid.UUID) -> None:
        self.ctl, self.opts, self.dest, self.op_id = ctl, opts, dest, op_id
        self.stop = False
        self.stop_reason = "not run: --fail-fast"
        self.run: OperationRun | None = None
        self.cancelled = False
        self.done = 0
        self.total = 0
        self.on_result: ResultCallback | None = None
        self.shared_dbs: set[tuple[str, str]] = set()
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[TargetResult] = []
        self._flushed = time.monotonic()
        self._urls: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        dispose_engines()

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["bizosctl.sync.worker"])
            self._pool = ProcessPoolExecutor(
                max_workers=self.opts.parallel,
                mp_context=ctx,
                initializer=warm_up,
                initargs=(os.getpid(),),
            )
        return self._pool

    def spec(self, t: Target) -> dict[str, Any]:
        key = (t.server, t.database)
        url = self._urls.get(key)
        if url is None:
            admin = self.ctl.server(t.server).admin_url(t.database)
            url = self._urls[key] = admin.render_as_string(hide_password=False)
        return {
            "key": t.key,
            "url": url,
            "schema": t.schema,
            "revision": t.revision,
            "dest": self.dest,
            "pooled": key in self.shared_dbs,
            "pool_size": min(self.opts.per_server, self.opts.parallel),
            "allow_downgrade": self.opts.yes,
            "wait": self.opts.wait,
            "lock_timeout_ms": self.opts.lock_timeout_ms,
            "statement_timeout_ms": self.opts.statement_timeout_ms,
            "app": f"bizosctl:sync:{self.op_id}",
            "extra": os.environ.get(EXTRA_ENV),
        }

    def _result(self, t: Target, raw: dict[str, Any], attempt: int) -> TargetResult:
        r = TargetResult(
            t,
            raw.get("before"),
            raw.get("after"),
            raw["status"],
            raw.get("error"),
            duration_ms=raw.get("duration_ms", 0.0),
            attempts=attempt,
            retryable=bool(raw.get("retryable")),
        )
        if r.status in ("failed", "busy") and self.opts.fail_fast:
            self.stop = True
        self._pending.append(r)
        if len(self._pending) >= RECORD_EVERY or time.monotonic() - self._flushed > 0.5:
            self.flush()
        return self._finish(r)

    def flush(self) -> None:
        """Record buffered results in one catalog statement (a crash loses at most a batch of
        records; the targets themselves hold the truth, which the next run reads)."""
        if self._pending:
            self.record(self._pending)
            self._pending = []
        self._flushed = time.monotonic()
        if self.run is not None and not self.cancelled:
            self.run.set_progress(self.done, self.total)
            if self.run.cancel_requested():  # ``ops cancel``: finish what is in flight, stop
                self.cancelled = self.stop = True
                self.stop_reason = "not run: the sync was cancelled"

    def _skip(self, t: Target, why: str) -> TargetResult:
        return self._finish(TargetResult(t, t.revision, None, "skipped", why))

    def _finish(self, result: TargetResult) -> TargetResult:
        self.done += 1
        if self.on_result is not None:
            self.on_result(result, self.done, self.total)
        crash_point(f"sync.target.{self.done}")
        return result

    def record(self, results: list[TargetResult]) -> None:
        rows = []
        for r in results:
            if r.status == "skipped":
                continue
            t = r.target
            ok = r.status in ("migrated", "unchanged")
            rows.append(
                {
                    "server": t.server,
                    "database": t.database,
                    "schema": t.schema,
                    "kind": t.kind,
                    "tenant_id": None,
                    "region": t.region,
                    "revision": r.after if ok else r.before,
                    "status": "ok" if ok else "failed",
                    "error": None if ok else r.error,
                    "operation_id": self.op_id,
                    "duration_ms": int(r.duration_ms),
                }
            )
        if not rows:
            return
        stmt = pg_insert(SchemaTarget).values(rows)
        updated = ("kind", "region", "revision", "status", "error", "operation_id", "duration_ms")
        stmt = stmt.on_conflict_do_update(
            index_elements=["server", "database", "schema"],
            set_={c: stmt.excluded[c] for c in updated} | {"updated_at": text("now()")},
        )
        with self.ctl.catalog() as s:
            s.execute(stmt)

    def run_many(self, targets: list[Target], attempt: int = 1) -> list[TargetResult]:
        """Migrate ``targets``: in this process when parallel is 1, else in worker processes,
        never more than ``per_server`` at once on one server."""
        results: dict[tuple[str, str, str], TargetResult] = {}

        def done(o: Outcome[Target, dict[str, Any]]) -> None:
            t = o.item
            if o.skipped:
                results[t.key] = self._skip(t, self.stop_reason)
                return
            # an error here is the worker process itself dying (migrate_target reports failures)
            raw = o.result if o.error is None else _worker_failed(o.error)
            assert raw is not None
            results[t.key] = self._result(t, raw, attempt)

        # nothing to share out (or everything skipped): no worker processes
        serial = self.opts.parallel == 1 or len(targets) <= 1 or self.stop
        for_each(
            targets,
            migrate_target,
            prepare=self.spec,
            parallel=1 if serial else self.opts.parallel,
            per_key=self.opts.per_server,
            executor=None if serial else self.pool(),
            should_stop=lambda: self.stop,
            on_done=done,
            catch=() if serial else (Exception,),
        )
        self.flush()
        return [results[t.key] for t in targets]


def _worker_failed(exc: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": f"worker failed: {type(exc).__name__}"}


def _classify(
    targets: list[Target], dest: str
) -> tuple[list[Target], list[Target], list[TargetResult]]:
    """(to move, downgrades among them, results decided without touching the target)."""
    todo, downs, decided = [], [], []
    for t in targets:
        if not t.reachable:
            decided.append(TargetResult(t, None, None, "failed", t.error))
            continue
        if t.moving:
            decided.append(TargetResult(t, t.revision, None, "busy", t.moving))
            continue
        try:
            way = direction("tenant", t.revision, dest)
        except InvalidInput as exc:
            decided.append(TargetResult(t, t.revision, None, "failed", exc.message))
            continue
        if way == "none":
            decided.append(TargetResult(t, t.revision, dest, "unchanged"))
        else:
            todo.append(t)
            if way == "downgrade":
                downs.append(t)
    return todo, downs, decided


def _dry_run_plan(todo: list[Target], dest: str) -> list[dict[str, Any]]:
    groups: dict[tuple[str | None, str], list[Target]] = defaultdict(list)
    for t in todo:
        groups[(t.revision, t.kind)].append(t)
    plan = []
    for (start, kind), members in groups.items():
        example = members[0]
        sql = offline_sql("tenant", schema=example.schema, start=start, dest=dest)
        prefix = f'SET search_path TO "{example.schema}", public;\nSET ROLE {OWNER_ROLE};\n'
        plan.append(
            {
                "from": start,
                "to": dest,
                "kind": kind,
                "count": len(members),
                "targets": [t.label for t in members],
                "example": example.label,
                "sql": prefix + sql,
            }
        )
    return plan


class SyncParams(BaseModel):
    """What a sync operation records: enough to run it again from its id alone."""

    to: str = "head"
    tenants: list[str] = Field(default_factory=list)
    tier: str | None = None
    region: str | None = None
    parallel: int = 4
    per_server: int = 4
    canary: int = 0
    fail_fast: bool = False
    lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 0
    wait: bool = True

    @classmethod
    def of(cls, opts: SyncOptions) -> SyncParams:
        sel = opts.selection
        return cls(
            to=opts.to,
            tenants=sorted(sel.tenants),
            tier=sel.tier,
            region=sel.region,
            parallel=opts.parallel,
            per_server=opts.per_server,
            canary=opts.canary,
            fail_fast=opts.fail_fast,
            lock_timeout_ms=opts.lock_timeout_ms,
            statement_timeout_ms=opts.statement_timeout_ms,
            wait=opts.wait,
        )

    def options(self, operation: uuid.UUID | None = None) -> SyncOptions:
        return SyncOptions(
            to=self.to,
            selection=Selection(tenants=list(self.tenants), tier=self.tier, region=self.region),
            parallel=self.parallel,
            per_server=self.per_server,
            canary=self.canary,
            fail_fast=self.fail_fast,
            lock_timeout_ms=self.lock_timeout_ms,
            statement_timeout_ms=self.statement_timeout_ms,
            wait=self.wait,
            yes=True,  # a downgrade was confirmed when the operation was recorded
            operation=operation,
        )


def record_sync(
    ctl: Control,
    s: Session,
    opts: SyncOptions,
    *,
    status: OperationStatus = OperationStatus.RUNNING,
) -> tuple[uuid.UUID, bool]:
    """Resume the last interrupted run of the same selection and revision, or record a new one
    (``queued`` for a worker), in the caller's transaction. Several syncs may run at once:
    each target's own lock keeps them apart."""
    op_id, resumed = start_or_resume(
        ctl,
        s,
        kind=OperationKind.SCHEMA_SYNC,
        target=opts.selection.describe(),
        params=SyncParams.of(opts),
        exclusive=False,
        match=("to", "tenants", "tier", "region"),
        status=status,
    )
    return op_id, resumed


def _operation_for(ctl: Control, opts: SyncOptions) -> uuid.UUID:
    if opts.operation is not None:
        return opts.operation
    with ctl.catalog() as s:
        return record_sync(ctl, s, opts)[0]


def resume_sync(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: run a queued sync, or resume one whose process died."""
    opts = SyncParams.model_validate(op.params).options(operation=op.id)
    return run_sync(ctl, opts).public()


def _prepare(
    ctl: Control, opts: SyncOptions
) -> tuple[str, list[Target], list[Target], list[TargetResult]]:
    """Everything a sync refuses before it starts: bad options, revisions the code does not
    know, an unconfirmed downgrade. Returns the destination, the targets, those to migrate
    and the results already decided."""
    opts.validate()
    dest = resolve("tenant", opts.to)
    targets = list_targets(ctl, opts.selection)
    read_revisions(ctl, targets, sizes=opts.canary > 0)
    refuse_unknown_revisions(
        "tenant", Counter(t.revision for t in targets if t.revision), doing="sync the fleet"
    )
    todo, downs, decided = _classify(targets, dest)
    if downs and not opts.yes:
        names = ", ".join(t.label for t in downs[:5]) + (" ..." if len(downs) > 5 else "")
        raise InvalidInput(
            f"--to {opts.to} downgrades {len(downs)} target(s) ({names}): pass --yes to confirm"
        )
    return dest, targets, todo, decided


def submit_sync(ctl: Control, opts: SyncOptions) -> Submitted:
    """``schema sync --background``: refuse what a sync refuses, then queue it for a worker."""
    from bizosctl.jobs.background import submit

    _prepare(ctl, opts)
    return submit(ctl, lambda s: record_sync(ctl, s, opts, status=OperationStatus.QUEUED))


def run_sync(
    ctl: Control, opts: SyncOptions, on_result: ResultCallback | None = None
) -> SyncReport:
    """Sync the selected targets to ``opts.to``. See the module docstring."""
    started = time.perf_counter()
    dest, targets, todo, decided = _prepare(ctl, opts)
    report = SyncReport(head=head("tenant"), to=dest, dry_run=opts.dry_run)
    if opts.dry_run:
        report.results = decided + [TargetResult(t, t.revision, dest, "planned") for t in todo]
        report.plan = _dry_run_plan(todo, dest)
        report.elapsed_s = time.perf_counter() - started
        return report

    op_id = _operation_for(ctl, opts)
    report.operation = str(op_id)
    runner = _Runner(ctl, opts, dest, op_id)
    runner.on_result = on_result
    per_db = Counter((t.server, t.database) for t in todo)
    runner.shared_dbs = {k for k, n in per_db.items() if n > 1}
    runner.total = len(todo)
    results = list(decided)
    try:
        with OperationRun(ctl, op_id) as run:
            runner.run = run
            runner.record([r for r in decided if r.status == "unchanged"])
            rest = todo
            if opts.canary:
                canaries = sorted(todo, key=lambda t: (t.size_bytes, t.label))[: opts.canary]
                first = runner.run_many(canaries)
                results += first
                run.step("canary", count=len(canaries))
                rest = [t for t in todo if t not in canaries]
                if any(r.status in ("failed", "busy") for r in first):
                    results += [
                        TargetResult(t, t.revision, None, "skipped", "not run: a canary failed")
                        for t in rest
                    ]
                    rest = []
            main = runner.run_many(rest)
            results += main
            if rest:
                run.step("fleet", count=len(rest))
            retry = [r.target for r in main if r.retryable and not runner.stop]
            if retry:
                # Lock timeouts: the tenant was busy; one more try at the end of the run.
                runner.total += len(retry)
                by_key = {r.target.key: r for r in results}
                for r in runner.run_many(retry, attempt=2):
                    by_key[r.target.key] = r
                results = list(by_key.values())
                run.step("retry", count=len(retry))
            canary_failed = any(r.error == "not run: a canary failed" for r in results)
            if not runner.stop and not canary_failed:
                results += _late_targets(ctl, opts, dest, runner, {t.key for t in targets})
            report.results = results
            failed = [r for r in results if r.status in ("failed", "busy")]
            runner.flush()
            if runner.cancelled:
                left = sum(r.status == "skipped" for r in results)
                run.finish("cancelled", f"cancelled by the operator; {left} target(s) not run")
                report.cancelled = True
            else:
                run.finish(
                    "failed" if failed else "done",
                    f"{len(failed)} target(s) failed" if failed else None,
                )
    finally:
        runner.run = None  # its connection is closed: no progress to write any more
        runner.close()
    report.elapsed_s = time.perf_counter() - started
    return report


def _late_targets(
    ctl: Control, opts: SyncOptions, dest: str, runner: _Runner, seen: set[tuple[str, str, str]]
) -> list[TargetResult]:
    """Targets that appeared while the run went on (tenants created meanwhile)."""
    out: list[TargetResult] = []
    for _ in range(3):
        fresh = [t for t in list_targets(ctl, opts.selection) if t.key not in seen]
        if not fresh:
            break
        read_revisions(ctl, fresh)
        seen |= {t.key for t in fresh}
        todo, _downs, decided = _classify(fresh, dest)
        runner.total += len(todo)
        out += decided + runner.run_many(todo)
    return out
