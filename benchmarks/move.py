"""Move benchmark: ``tenant move`` (shared tier to an isolated database) against a bare COPY floor.

Run as ``python benchmarks/move.py [--rows 1000000] [--rate 100] [--json] [--fast]
[--second-freeze-ms 1000] [--long-every 5] [--gentle-rate 8MB]``.

``--long-every N`` makes every Nth writer update a long statement (it finds its row by title,
with no index, after a ``pg_sleep`` of 50-300 ms in a subquery): it passes the write guard
before a freeze and changes its row after it began, the race that used to lose writes.
``--gentle-rate R`` adds a third tenant, ``mover-c``, moved with ``--max-rate R``; the
writer's rate during its copy against its rate alone is the gentle mode's figure (target 90 %).

Everything happens in a throw-away ``BIZOS_HOME`` (``/tmp/bzb-XXXXXXXX``, short so that the
Unix socket path stays under 108 bytes) with one embedded server, ``global-1``:

* **set-up** (untimed): two shared-tier tenants, ``mover`` and ``neighbour``; about ``--rows``
  rows for the mover in invoices, invoice_items, tasks and audit_logs (15/35/25/25 %), plus a
  few members, projects and customers for the foreign keys, and a tenth of that for the
  neighbour. Loaded as the superuser with ``INSERT ... SELECT ... FROM generate_series`` and
  ``session_replication_role = replica`` (no triggers), then ``VACUUM (ANALYZE)``.
* **floor**: the mover's rows of every tenant table piped with binary ``COPY`` from
  ``shared.<table>`` into an empty isolated tenant database (``floortgt``, made with
  ``create_tenant``), replica role on the target, no capture, no verification; 4 tables at a
  time (threads, one pair of connections each, largest first, as the move) and sequentially.
* **move**: ``move_tenant(ctl, MoveRequest("mover", to_tier="isolated"))`` while a writer thread
  makes ``--rate`` application transactions a second through ``tenant_session`` (an insert of a
  task with a unique title, every other one an update of an earlier task), retrying on
  ``TenantNotWritable``. Afterwards every acknowledged write is looked up in the target.

Then, unless ``--second-freeze-ms 0``, the same for a second tenant ``mover-b`` (loaded alike
after the first move) with that ``max_freeze_ms``. Each phase of a move is timed by wrapping
the engine's step methods (the benchmark patches them at run time; the core is unchanged).
This is a measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cleanup, connect, make_home, quiesce

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.moves.tables import TableInfo

TARGET_RATIO = 1.7  # total move time at most 1.7x the (parallel) floor
TARGET_FREEZE_MS = 1000.0  # freeze under 1 s
TARGET_GENTLE = 0.9  # with --max-rate: the writer keeps 90 % of its rate alone during the copy
MOVER_C = "mover-c"
REGION = "global"
SERVER = "global-1"
SHARED_DB = "bizos_shared"
SHARED_SCHEMA = "shared"
MOVER = "mover"
MOVER_B = "mover-b"
NEIGHBOUR = "neighbour"
FLOOR_SLUG = "floortgt"
WARMUP_S = 2.0  # the writer runs alone this long before the move starts
PARALLEL = 4  # the move's default (MoveRequest.parallel)
WRITER_PREFIX = "bench-w-"
#: Share of --rows per big table; the small tables get fixed counts.
SHARES = {"invoices": 0.15, "invoice_items": 0.35, "tasks": 0.25, "audit_logs": 0.25}
SMALL = {"members": 40, "projects": 20, "customers": 200}
Log = Callable[[str], None]


# -- set-up -------------------------------------------------------------------------------------
def q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def counts_for(rows: int) -> dict[str, int]:
    out = {t: max(1, round(rows * share)) for t, share in SHARES.items()}
    out.update(SMALL)
    return out


def load_sql(table: str, tid: uuid.UUID, n: dict[str, int]) -> str:
    """One ``INSERT ... SELECT`` for the tenant's rows of ``table`` (deterministic ids)."""
    t = str(tid)  # a UUID: safe to inline

    def ref(kind: str, expr: str) -> str:
        return f"md5('{t}:{kind}:' || ({expr}))::uuid"

    ncus, ninv, nprj, nmem = n["customers"], n["invoices"], n["projects"], n["members"]
    head = f"INSERT INTO {SHARED_SCHEMA}.{table} "
    series = f"FROM generate_series(0, {n[table] - 1}) AS g"
    if table == "members":
        return (
            head
            + "(tenant_id, id, email_enc, email_bidx, name_enc, phone_enc, status, created_at) "
            f"SELECT '{t}', {ref('mem', 'g')}, 'v1.' || md5('e' || g) || md5('f' || g), "
            f"'bidx-' || md5('{t}' || g), 'v1.' || md5('n' || g), "
            "CASE WHEN g % 2 = 0 THEN 'v1.' || md5('p' || g) END, 'active', "
            f"now() - g * interval '1 day' {series}"
        )
    if table == "projects":
        return (
            head + "(tenant_id, id, name, description, status, created_at) "
            f"SELECT '{t}', {ref('prj', 'g')}, 'Project ' || g, 'Everything about project ' || g, "
            f"'active', now() - g * interval '1 day' {series}"
        )
    if table == "customers":
        return (
            head + "(tenant_id, id, name, email_enc, email_bidx, country, created_at) "
            f"SELECT '{t}', {ref('cus', 'g')}, 'Customer ' || g || ' Ltd', 'v1.' || md5('c' || g), "
            f"'bidx-c-' || g, (ARRAY['ID', 'SG', 'DE', 'US'])[1 + g % 4], "
            f"now() - g * interval '1 hour' {series}"
        )
    if table == "invoices":
        return (
            head + "(tenant_id, id, customer_id, number, status, currency, subtotal, discount, "
            "tax, total, issued_on, due_on, paid_at, created_at) "
            f"SELECT '{t}', {ref('inv', 'g')}, {ref('cus', f'g % {ncus}')}, "
            "'INV-' || lpad(g::text, 9, '0'), "
            "(ARRAY['draft', 'sent', 'paid', 'overdue'])[1 + g % 4], "
            "'IDR', x.s, 0, round(x.s * 0.11, 2), round(x.s * 1.11, 2), x.d, x.d + 30, "
            "CASE WHEN g % 4 = 2 THEN now() - g * interval '1 minute' END, "
            f"now() - g * interval '1 minute' {series}, "
            "LATERAL (SELECT (100000 + g % 900000)::numeric(14, 2) AS s, "
            "date '2025-01-01' + g % 700 AS d) AS x"
        )
    if table == "invoice_items":
        return (
            head + "(tenant_id, id, invoice_id, description, quantity, unit_price, amount) "
            f"SELECT '{t}', {ref('itm', 'g')}, {ref('inv', f'g % {ninv}')}, "
            "'Consulting services, line ' || g, 1 + g % 5, 150000 + g % 1000, "
            f"(1 + g % 5) * (150000 + g % 1000) {series}"
        )
    if table == "tasks":
        return (
            head + "(tenant_id, id, project_id, title, description, status, position, "
            "assignee_id, due_on, created_at, updated_at) "
            f"SELECT '{t}', {ref('tsk', 'g')}, {ref('prj', f'g % {nprj}')}, "
            "'Task ' || g || ': ' || (ARRAY['review the contract', 'prepare the quarterly report', "
            "'call the customer back', 'fix the invoice template'])[1 + g % 4], "
            "CASE WHEN g % 3 <> 0 THEN repeat(md5(g::text), 2) END, "
            "(ARRAY['todo', 'doing', 'review', 'done'])[1 + g % 4], g % 1000, "
            f"{ref('mem', f'g % {nmem}')}, date '2026-01-01' + g % 365, "
            f"now() - g * interval '1 minute', now() {series}"
        )
    if table == "audit_logs":
        return (
            head + "(tenant_id, id, actor, action, table_name, row_key, old, new, txid, at) "
            f"SELECT '{t}', {ref('aud', 'g')}, 'member:' || g % 40, "
            "(ARRAY['insert', 'update', 'delete'])[1 + g % 3], 'tasks', "
            f"jsonb_build_object('id', {ref('tsk', 'g')}), "
            "CASE WHEN g % 3 <> 0 THEN jsonb_build_object('status', 'todo', "
            "'position', g % 1000, 'title', 'Task ' || g) END, "
            "CASE WHEN g % 3 <> 2 THEN jsonb_build_object('status', 'doing', "
            "'position', g % 1000 + 1, 'title', 'Task ' || g) END, "
            f"1000 + g, now() - g * interval '1 second' {series}"
        )
    raise ValueError(f"no loader for {table}")


def load_tenants(ctl: Control, tenants: list[tuple[uuid.UUID, int]], log: Log) -> float:
    """Load the rows of each (tenant id, rows); two tables at a time. Returns seconds."""
    jobs = [
        (tid, table, counts_for(rows))
        for tid, rows in tenants
        for table in (*SMALL, *sorted(SHARES, key=lambda x: -SHARES[x]))
    ]
    started = time.perf_counter()

    def one(job: tuple[uuid.UUID, str, dict[str, int]]) -> None:
        tid, table, n = job
        t0 = time.perf_counter()
        with connect(ctl, SHARED_DB) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute(load_sql(table, tid, n).encode())
            conn.commit()
        if n[table] >= 1000:
            log(f"  loaded {n[table]:>9,} {table} in {time.perf_counter() - t0:.1f}s")

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one, jobs))
    with connect(ctl, SHARED_DB, autocommit=True) as conn:
        tables = ", ".join(f"{SHARED_SCHEMA}.{t}" for t in (*SMALL, *SHARES))
        conn.execute(f"VACUUM (ANALYZE) {tables}".encode())
    return time.perf_counter() - started


# -- the floor ----------------------------------------------------------------------------------
@dataclass
class FloorRun:
    parallel: int
    seconds: float
    bytes: int
    rows: int
    tables: dict[str, float] = field(default_factory=dict)


def copy_order(ctl: Control, infos: list[TableInfo]) -> list[TableInfo]:
    """Largest first, as the move orders its copy."""
    from bizosctl.db.engines import get_engine
    from bizosctl.moves.copy import table_bytes

    with get_engine(ctl.server(SERVER).admin_url(SHARED_DB), pooled=False).connect() as conn:
        sizes = table_bytes(conn, schema=SHARED_SCHEMA, tables=[t.name for t in infos])
    return sorted(infos, key=lambda t: -sizes.get(t.name, 0))


def floor_copy(
    ctl: Control, infos: list[TableInfo], tid: uuid.UUID, dst_db: str, *, parallel: int
) -> FloorRun:
    """Bare binary COPY pipes, one pair of connections per table; no capture, no checks."""
    dst_schema = dst_db  # an isolated tenant's schema has its database's name

    def one(t: TableInfo) -> tuple[str, int, int, float]:
        t0 = time.perf_counter()
        cols = t.column_list()
        out_sql = (
            f"COPY (SELECT {cols} FROM {SHARED_SCHEMA}.{q(t.name)} "
            f"WHERE tenant_id = '{tid}') TO STDOUT (FORMAT binary)"
        )
        in_sql = f"COPY {q(dst_schema)}.{q(t.name)} ({cols}) FROM STDIN (FORMAT binary)"
        moved = 0
        with connect(ctl, SHARED_DB) as src, connect(ctl, dst_db) as dst:
            dst.execute("SET session_replication_role = replica")
            with src.cursor() as rc, dst.cursor() as wc:
                with rc.copy(out_sql.encode()) as out, wc.copy(in_sql.encode()) as inp:
                    for chunk in out:
                        moved += len(chunk)
                        inp.write(chunk)
                rows = wc.rowcount
            dst.commit()
            src.rollback()
        return t.name, moved, rows, time.perf_counter() - t0

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(one, infos))
    seconds = time.perf_counter() - started
    return FloorRun(
        parallel=parallel,
        seconds=seconds,
        bytes=sum(r[1] for r in results),
        rows=sum(r[2] for r in results),
        tables={r[0]: r[3] for r in results},
    )


def run_floor(ctl: Control, tid: uuid.UUID, log: Log) -> dict[str, Any]:
    """Parallel and sequential floor into a throw-away isolated tenant, then drop it."""
    from bizosctl.db.engines import get_engine
    from bizosctl.moves.tables import table_infos
    from bizosctl.tenancy.names import tenant_ident
    from bizosctl.tenancy.provision import create_tenant, delete_tenant

    with get_engine(ctl.server(SERVER).admin_url(SHARED_DB), pooled=False).connect() as conn:
        infos = copy_order(ctl, table_infos(conn, SHARED_SCHEMA))
    t0 = time.perf_counter()
    create_tenant(ctl, slug=FLOOR_SLUG, name="floor target", tier="isolated", region=REGION)
    provision_s = time.perf_counter() - t0
    db = tenant_ident(FLOOR_SLUG)
    truncate = "TRUNCATE " + ", ".join(f"{q(db)}.{q(t.name)}" for t in infos)
    runs = []
    for parallel in (PARALLEL, 1):
        with connect(ctl, db) as conn:  # empty tables (floortgt's own two rows go too)
            conn.execute(truncate.encode())
            conn.commit()
        quiesce(ctl, log)
        log(f"floor: {parallel} table(s) at a time")
        run = floor_copy(ctl, infos, tid, db, parallel=parallel)
        log(f"  {run.rows:,} rows, {run.bytes / 2**20:.1f} MiB in {run.seconds:.2f}s")
        runs.append(run)
    delete_tenant(ctl, FLOOR_SLUG)
    par, seq = runs
    return {
        "parallel_s": par.seconds,
        "sequential_s": seq.seconds,
        "parallel": par.parallel,
        "rows": par.rows,
        "bytes": par.bytes,
        "target_provision_s": provision_s,
        "tables_parallel_s": par.tables,
        "tables_sequential_s": seq.tables,
    }


# -- the writer ---------------------------------------------------------------------------------
class Writer(threading.Thread):
    """``rate`` application transactions a second through ``tenant_session``.

    Odd operations insert a task with a unique title; even ones add 1 to the position of an
    earlier acknowledged task. ``TenantNotWritable`` is retried after 10 ms; the time from an
    operation's first attempt to its acknowledgement is what the application waited.
    """

    def __init__(
        self,
        ctl: Control,
        slug: str,
        rate: float,
        project_id: uuid.UUID,
        *,
        long_every: int = 0,
    ) -> None:
        super().__init__(name=f"writer-{slug}", daemon=True)
        self.ctl, self.slug, self.rate, self.project_id = ctl, slug, rate, project_id
        #: every Nth update finds its row by title (no index: a scan of the tenant's tasks)
        #: and waits 50-300 ms in a subquery before it changes it (0: none)
        self.long_every = long_every
        self.long_updates = 0
        self.stop_event = threading.Event()
        self.acked: dict[str, int] = {}  # title -> position after its last acknowledged update
        self.ids: list[tuple[str, uuid.UUID]] = []
        self.inserts = 0
        self.updates = 0
        self.retries = 0
        self.pauses: list[tuple[float, float]] = []  # (start, seconds) of ops that were retried
        self.latencies: list[float] = []
        self.acks: list[float] = []  # when each acknowledged operation returned
        self.errors: list[str] = []
        self.abandoned = 0
        self.started_at = 0.0
        self.stopped_at = 0.0

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # keep the benchmark going; report it
            self.errors.append(f"writer died: {type(exc).__name__}: {exc}")
        finally:
            self.stopped_at = time.monotonic()

    def _loop(self) -> None:
        from bizosctl.errors import BizosError, TenantNotWritable

        rng = random.Random(20261102)
        interval = 1.0 / self.rate
        self.started_at = next_at = time.monotonic()
        n = 0
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now < next_at:
                self.stop_event.wait(next_at - now)
                continue
            next_at = max(next_at + interval, now - 1.0)  # after a pause, catch up for 1 s
            n += 1
            insert = n % 2 == 1 or not self.ids
            title, row_id = "", uuid.UUID(int=0)
            if insert:
                title = f"{WRITER_PREFIX}{n}"
            else:
                title, row_id = self.ids[rng.randrange(len(self.ids))]
            started = time.monotonic()
            tries, ok = 0, False
            slow = (
                rng.uniform(0.05, 0.3)
                if not insert and self.long_every and n % self.long_every == 0
                else 0.0
            )
            while True:
                try:
                    row_id = self._write(insert, title, row_id, slow=slow)
                    ok = True
                    break
                except TenantNotWritable:
                    tries += 1
                    self.retries += 1
                    if self.stop_event.is_set() and time.monotonic() - started > 30:
                        self.abandoned += 1
                        break
                    time.sleep(0.01)
                except (BizosError, RuntimeError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    break
            if not ok:
                continue
            done = time.monotonic()
            self.latencies.append(done - started)
            self.acks.append(done)
            if tries:
                self.pauses.append((started, done - started))
            if insert:
                self.inserts += 1
                self.acked[title] = 0
                self.ids.append((title, row_id))
            else:
                self.updates += 1
                self.long_updates += 1 if slow else 0
                self.acked[title] += 1

    def _write(
        self, insert: bool, title: str, row_id: uuid.UUID, *, slow: float = 0.0
    ) -> uuid.UUID:
        """One application transaction; returns the task's id. ``slow``: a long statement
        (found by title, no index, after ``pg_sleep(slow)``): it passes the write guard
        at once and changes its row only later, possibly after a freeze began."""
        from sqlalchemy import text

        from bizosctl.tenancy.router import tenant_session

        with tenant_session(self.ctl, self.slug, actor="bench-writer") as s:
            if insert:
                new_id: uuid.UUID = s.execute(
                    text(
                        "INSERT INTO tasks (tenant_id, project_id, title, position) "
                        "SELECT tenant_id, :p, :k, 0 FROM tenant_state RETURNING id"
                    ),
                    {"p": self.project_id, "k": title},
                ).scalar_one()
                return new_id
            if slow:
                changed = s.execute(
                    text(
                        "UPDATE tasks SET position = position + 1, updated_at = now() "
                        "WHERE title = (SELECT :k FROM (SELECT pg_sleep(:w)) AS z) RETURNING id"
                    ),
                    {"k": title, "w": slow},
                ).all()
            else:
                changed = s.execute(
                    text(
                        "UPDATE tasks SET position = position + 1, updated_at = now() "
                        "WHERE id = :id RETURNING id"
                    ),
                    {"id": row_id},
                ).all()
            if len(changed) != 1:
                raise RuntimeError(f"the update of {title} changed {len(changed)} rows")
            return row_id


def check_writes(ctl: Control, slug: str, writer: Writer) -> dict[str, Any]:
    """Every acknowledged insert and update at the tenant's (new) place, once, and no more."""
    from sqlalchemy import text

    from bizosctl.tenancy.router import tenant_session

    with tenant_session(ctl, slug, actor="bench-check", read_only=True) as s:
        rows = s.execute(
            text("SELECT title, position FROM tasks WHERE title LIKE :p"),
            {"p": WRITER_PREFIX + "%"},
        ).all()
    found: dict[str, int] = {}
    duplicated = 0
    for title, position in rows:
        if title in found:
            duplicated += 1
        found[title] = int(position)
    lost_inserts = sorted(t for t in writer.acked if t not in found)
    lost_updates = sum(max(0, want - found[t]) for t, want in writer.acked.items() if t in found)
    extra_updates = sum(max(0, found[t] - want) for t, want in writer.acked.items() if t in found)
    unacked_rows = sorted(t for t in found if t not in writer.acked)
    acked_ops = writer.inserts + writer.updates
    lost_ops = len(lost_inserts) + lost_updates + sum(writer.acked[t] for t in lost_inserts)
    return {
        "acknowledged": acked_ops,
        "acknowledged_inserts": writer.inserts,
        "acknowledged_updates": writer.updates,
        "found": acked_ops - lost_ops,
        "lost": lost_ops,
        "lost_inserts": len(lost_inserts),
        "lost_updates": lost_updates,
        "duplicated": duplicated,
        "unacknowledged_present": len(unacked_rows) + extra_updates,
        "examples_lost": lost_inserts[:5],
    }


# -- timing the move's phases -------------------------------------------------------------------
STEP_METHODS = (
    "provision",
    "start_capture",
    "copy",
    "catch_up",
    "set_source_status",
    "wait_for_writers",
    "verify",
    "switch",
    "_unfreeze",
    "cleanup",
)
MODULE_FUNCTIONS = ("make_plan", "_register", "checksum")
ATTEMPT_STEPS = ("wait_for_writers", "catch_up", "verify", "switch", "_unfreeze")
ATTEMPT_KEYS = {"catch_up": "catch_up_s", "wait_for_writers": "wait_s", "_unfreeze": "unfreeze_s"}


@dataclass
class Span:
    name: str
    start: float
    end: float
    detail: str = ""

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Timeline:
    origin: float = field(default_factory=time.monotonic)
    spans: list[Span] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.notes.append((time.monotonic(), message))


@contextlib.contextmanager
def instrumented(timeline: Timeline) -> Iterator[None]:
    """Wrap the engine's steps with timestamps (restored on exit; the core is untouched)."""
    from bizosctl.moves import engine, steps

    saved: list[tuple[Any, str, Any]] = []

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            detail = ""
            if name == "catch_up":
                detail = "until_empty" if kwargs.get("until_empty") else "before freeze"
            elif name == "set_source_status":
                detail = str(args[1] if len(args) > 1 else kwargs.get("status"))
            elif name == "_unfreeze":
                detail = str(args[1] if len(args) > 1 else kwargs.get("why"))
            elif name == "checksum":
                detail = f"{kwargs.get('schema')}.{args[1].name}"
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                timeline.spans.append(Span(name, start, time.monotonic(), detail))

        return wrapper

    targets: list[tuple[Any, str]] = [(engine._Move, name) for name in STEP_METHODS]
    # make_plan and _register are called from engine, checksum from steps (_Move._compare)
    targets += [(mod, name) for mod in (engine, steps) for name in MODULE_FUNCTIONS]
    for owner, name in targets:
        fn = getattr(owner, name, None)
        if fn is None:  # renamed in the engine: that phase is simply not timed
            continue
        saved.append((owner, name, fn))
        setattr(owner, name, timed(name, fn))
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def phases(timeline: Timeline, total_s: float) -> dict[str, Any]:
    """Seconds per phase, and the freeze attempts as the application saw them."""
    sums: dict[str, float] = {}
    label = {
        "make_plan": "plan",
        "_register": "register",
        "provision": "provision",
        "start_capture": "capture",
        "copy": "copy",
        "cleanup": "cleanup",
    }
    for sp in timeline.spans:
        if sp.name in label:
            key = label[sp.name]
        elif sp.name == "catch_up" and sp.detail == "before freeze":
            key = "catch-up"
        else:
            continue
        sums[key] = sums.get(key, 0.0) + sp.seconds
    attempts: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    spans = sorted(timeline.spans, key=lambda s: s.start)
    for sp in spans:
        if sp.name == "set_source_status" and sp.detail == "moving":
            current = {"frozen_at": sp.end, "freeze_commit_s": sp.seconds}
            attempts.append(current)
        elif current is not None and sp.name in ATTEMPT_STEPS:
            current[ATTEMPT_KEYS.get(sp.name, f"{sp.name}_s")] = sp.seconds
            if sp.name in ("switch", "_unfreeze"):
                current["frozen_s"] = sp.end - current["frozen_at"]
                current["outcome"] = "switched" if sp.name == "switch" else f"unfrozen: {sp.detail}"
                slowest = sorted(
                    (
                        c
                        for c in spans
                        if c.name == "checksum" and current["frozen_at"] <= c.start < sp.end
                    ),
                    key=lambda c: -c.seconds,
                )
                current["slowest_checksums"] = {c.detail: round(c.seconds, 3) for c in slowest[:4]}
                current["thawed_at"] = sp.end
                current = None
    sums["freeze (all attempts)"] = sum(a.get("frozen_s", 0.0) for a in attempts)
    sums["other"] = total_s - sum(sums.values())
    copies = [m for _, m in timeline.notes if m.startswith("copied ")]
    return {"seconds": sums, "freeze_attempts": attempts, "copy_progress": copies}


def relative(attempts: list[dict[str, Any]], origin: float) -> None:
    """Attempt times in seconds from the start of the move."""
    for a in attempts:
        for key in ("frozen_at", "thawed_at"):
            if key in a:
                a[key] = a[key] - origin


def ops_rate(
    acks: list[float], start: float, end: float, *, exclude: list[tuple[float, float]]
) -> float:
    """Acknowledged operations a second in [start, end), not counting excluded windows."""
    span = end - start - sum(max(0.0, min(b, end) - max(a, start)) for a, b in exclude)
    inside = [t for t in acks if start <= t < end and not any(a <= t < b for a, b in exclude)]
    return len(inside) / span if span > 0 else 0.0


# -- the move -----------------------------------------------------------------------------------
def run_move(
    ctl: Control,
    slug: str,
    *,
    rate: float,
    max_freeze_ms: int,
    log: Log,
    long_every: int = 0,
    max_rate_bytes: int | None = None,
) -> dict[str, Any]:
    from sqlalchemy import text

    from bizosctl.errors import BizosError
    from bizosctl.moves.engine import move_tenant
    from bizosctl.moves.plan import MoveRequest
    from bizosctl.tenancy.router import tenant_session

    with tenant_session(ctl, slug, actor="bench-setup", read_only=True) as s:
        project = s.execute(text("SELECT id FROM projects ORDER BY id LIMIT 1")).scalar_one()
    writer = Writer(ctl, slug, rate, project, long_every=long_every)
    writer.start()
    time.sleep(WARMUP_S)  # the writer's rate alone, with its engine and route warm
    timeline = Timeline()

    def progress(message: str) -> None:
        timeline.note(message)
        log(f"  [{time.monotonic() - timeline.origin:6.2f}s] {message}")

    error = None
    report = None
    gentle = f", max_rate {max_rate_bytes / 2**20:g} MiB/s" if max_rate_bytes else ""
    log(
        f"move {slug}: shared -> isolated, max_freeze_ms={max_freeze_ms}{gentle}, "
        f"writer {rate:g} ops/s"
    )
    with instrumented(timeline):
        timeline.origin = time.monotonic()
        try:
            report = move_tenant(
                ctl,
                MoveRequest(
                    slug=slug,
                    to_tier="isolated",
                    max_freeze_ms=max_freeze_ms,
                    max_rate_bytes=max_rate_bytes,
                ),
                progress=progress,
            )
        except BizosError as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"  move failed: {error}")
        seconds = time.monotonic() - timeline.origin
    log(f"  move returned after {seconds:.2f}s")
    time.sleep(0.5)
    writer.stop()
    if writer.is_alive():
        writer.errors.append("writer did not stop within 60 s")
    checks = check_writes(ctl, slug, writer)
    tier_after = ctl.route(slug).tier
    ph = phases(timeline, seconds)
    origin, end = timeline.origin, timeline.origin + seconds
    frozen = [(a["frozen_at"], a.get("thawed_at", end)) for a in ph["freeze_attempts"]]
    copying = [(sp.start, sp.end) for sp in timeline.spans if sp.name == "copy"]
    relative(ph["freeze_attempts"], origin)
    pauses = sorted((p for _, p in writer.pauses), reverse=True)
    lat = sorted(writer.latencies)
    out: dict[str, Any] = {
        "slug": slug,
        "max_freeze_ms": max_freeze_ms,
        "max_rate_bytes": max_rate_bytes,
        "seconds": seconds,
        "error": error,
        "status": report.status if report else "failed",
        "tier_after": tier_after,
        "freeze_ms": report.freeze_ms if report else None,
        "copied_bytes": report.copied_bytes if report else 0,
        "rows": sum(int(t.get("rows", 0)) for t in report.tables.values()) if report else 0,
        "tables_verified": len(report.tables) if report else 0,
        "tables_matched": sum(1 for t in report.tables.values() if t.get("match")) if report else 0,
        "writer": {
            "rate_target": rate,
            "rate_alone": ops_rate(writer.acks, origin - WARMUP_S, origin, exclude=[]),
            "rate_during_move": ops_rate(writer.acks, origin, end, exclude=[]),
            "rate_during_move_unfrozen": ops_rate(writer.acks, origin, end, exclude=frozen),
            "rate_during_copy": ops_rate(writer.acks, *copying[0], exclude=[]) if copying else None,
            "total_pause_s": sum(pauses),
            "retries": writer.retries,
            "long_updates": writer.long_updates,
            "paused_ops": len(pauses),
            "longest_pause_s": pauses[0] if pauses else 0.0,
            "pauses_over_100ms_s": [round(p, 3) for p in pauses if p > 0.1][:10],
            "latency_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "latency_p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            "errors": writer.errors[:10],
            "error_count": len(writer.errors),
            "abandoned": writer.abandoned,
            **checks,
        },
        "phases": ph,
    }
    return out


# -- output -------------------------------------------------------------------------------------
def server_facts(ctl: Control) -> dict[str, str]:
    names = (
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "max_wal_size",
        "wal_level",
    )
    with connect(ctl, "postgres") as conn:
        rows = conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
            [list(names)],
        ).fetchall()
    return {str(name): str(setting) for name, setting in rows}


def verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def targets(floor: dict[str, Any], move: dict[str, Any]) -> dict[str, Any]:
    ratio = move["seconds"] / floor["parallel_s"] if floor["parallel_s"] else None
    freeze = move["freeze_ms"]
    w = move["writer"]
    ok = move["status"] == "done"
    gentle = (
        w["rate_during_copy"] / w["rate_alone"]
        if w["rate_during_copy"] is not None and w["rate_alone"]
        else None
    )
    return {
        "ratio": ratio,
        "ratio_sequential": move["seconds"] / floor["sequential_s"]
        if floor["sequential_s"]
        else None,
        "total_time": {
            "target": f"total time at most {TARGET_RATIO}x the floor",
            "met": None if ratio is None or not ok else ratio <= TARGET_RATIO,
        },
        "freeze": {
            "target": f"freeze under {TARGET_FREEZE_MS / 1000:g} s",
            "met": None if freeze is None else freeze < TARGET_FREEZE_MS,
        },
        "zero_lost": {
            "target": "zero writes lost",
            "met": w["lost"] == 0 and w["duplicated"] == 0,
        },
        **(
            {
                "gentle_writer": {
                    "target": f"writer keeps at least {TARGET_GENTLE:.0%} of its rate alone "
                    "during the copy",
                    "ratio": gentle,
                    "met": None if gentle is None else gentle >= TARGET_GENTLE,
                }
            }
            if move.get("max_rate_bytes")
            else {}
        ),
        "writer_copy_ratio": gentle,
    }


def print_human(doc: dict[str, Any]) -> None:
    pg = doc["postgres"]
    print(
        f"PostgreSQL {pg.get('server_version')}, {'durable' if doc['durable'] else 'fast'} "
        f"(fsync={pg.get('fsync')}, synchronous_commit={pg.get('synchronous_commit')}, "
        f"shared_buffers={pg.get('shared_buffers')}, max_wal_size={pg.get('max_wal_size')}); "
        f"Python {doc['python']}, {doc['cpus']} CPUs; load {doc['load_s']:.1f}s"
    )
    fl = doc["floor"]
    print(
        f"rows: mover {doc['rows_requested']:,} requested, neighbour "
        f"{doc['neighbour_rows']:,}; floor copied {fl['rows']:,} rows, "
        f"{fl['bytes'] / 2**20:.1f} MiB"
    )
    print(
        f"floor (bare binary COPY, no capture, no checks): {fl['parallel_s']:.2f}s with "
        f"{fl['parallel']} tables at a time, {fl['sequential_s']:.2f}s sequential "
        f"(+ {fl['target_provision_s']:.2f}s to create the isolated target, not counted)"
    )
    for mv in doc["moves"]:
        w, tg, ph = mv["writer"], mv["targets"], mv["phases"]
        print()
        gentle = (
            f", gentle: max_rate {mv['max_rate_bytes'] / 2**20:g} MiB/s"
            if mv.get("max_rate_bytes")
            else ""
        )
        print(
            f"move {mv['slug']} (max_freeze_ms={mv['max_freeze_ms']}{gentle}): {mv['status']} in "
            f"{mv['seconds']:.2f}s, now {mv['tier_after']}"
            + (f"; error: {mv['error']}" if mv["error"] else "")
        )
        ratio = tg["ratio"]
        print(
            f"  ratio move/floor: {ratio:.2f}x (parallel floor), "
            f"{tg['ratio_sequential']:.2f}x (sequential floor)"
            if ratio is not None
            else "  ratio: -"
        )
        print(
            f"  rows moved {mv['rows']:,}, copied {mv['copied_bytes'] / 2**20:.1f} MiB, "
            f"tables verified {mv['tables_matched']}/{mv['tables_verified']}, "
            f"freeze {mv['freeze_ms'] if mv['freeze_ms'] is not None else '-'} ms "
            f"(MoveReport.freeze_ms: the last attempt; {len(ph['freeze_attempts'])} attempt(s), "
            f"{ph['seconds'].get('freeze (all attempts)', 0.0):.2f}s frozen in all)"
        )
        secs = ", ".join(f"{k} {v:.2f}s" for k, v in ph["seconds"].items())
        print(f"  phases: {secs}")
        for i, a in enumerate(ph["freeze_attempts"], 1):
            parts = ", ".join(
                f"{k[:-2]} {v:.2f}s"
                for k, v in a.items()
                if k.endswith("_s") and k not in ("frozen_s",) and isinstance(v, float)
            )
            print(
                f"  freeze attempt {i} at {a['frozen_at']:.2f}s: frozen "
                f"{a.get('frozen_s', 0.0):.2f}s ({parts}) -> {a.get('outcome', '?')}"
            )
            slow = ", ".join(f"{k} {v:.2f}s" for k, v in a.get("slowest_checksums", {}).items())
            if slow:
                print(f"    slowest checksums: {slow}")
        print(
            f"  writer: {w['acknowledged']} ops acknowledged ({w['acknowledged_inserts']} inserts, "
            f"{w['acknowledged_updates']} updates), {w['found']} found, {w['lost']} lost, "
            f"{w['duplicated']} duplicated, {w['unacknowledged_present']} unacknowledged present"
        )
        copy_rate = w["rate_during_copy"]
        print(
            f"  writer rate (target {w['rate_target']:g}/s): alone {w['rate_alone']:.0f}/s, "
            f"during the copy {copy_rate if copy_rate is not None else 0:.0f}/s, during the move "
            f"{w['rate_during_move']:.0f}/s ({w['rate_during_move_unfrozen']:.0f}/s outside "
            f"freezes); latency p50 {w['latency_p50_ms'] or 0:.1f} ms, "
            f"p99 {w['latency_p99_ms'] or 0:.1f} ms"
        )
        ratio = tg.get("writer_copy_ratio")
        if ratio is not None:
            print(f"  writer rate ratio during the copy / alone: {ratio:.2f}")
        print(
            f"  writer: {w['long_updates']} long updates acknowledged; "
            f"{w['retries']} retries in {w['paused_ops']} paused ops, longest pause "
            f"{w['longest_pause_s']:.2f}s, all pauses {w['total_pause_s']:.2f}s, "
            f"{w['error_count']} errors" + (f" (first: {w['errors'][0]})" if w["errors"] else "")
        )
        for key in ("total_time", "freeze", "zero_lost", "gentle_writer"):
            if key not in tg:
                continue
            t = tg[key]
            print(f"  target: {t['target']}: {verdict(t['met'])}")


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the moving tenant")
    parser.add_argument("--rate", type=float, default=100.0, help="writer operations a second")
    parser.add_argument(
        "--second-freeze-ms",
        type=int,
        default=1000,
        metavar="MS",
        help="also move a second, identical tenant with this max_freeze_ms (0: skip)",
    )
    parser.add_argument(
        "--long-every",
        type=int,
        default=0,
        metavar="N",
        help="every Nth writer update is a long statement (scan by title after pg_sleep)",
    )
    parser.add_argument(
        "--gentle-rate",
        default="",
        metavar="RATE",
        help="also move a third tenant in gentle mode, --max-rate RATE (e.g. 8MB)",
    )
    parser.add_argument("--fast", action="store_true", help="BIZOS_EMBEDDED_DURABLE=false")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")
    if args.rate <= 0:
        parser.error("--rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = make_home(fast=args.fast)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    ctl: Control | None = None
    started = time.perf_counter()
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.tenancy.provision import create_tenant
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        log(f"home {home}: initialising")
        init_home(ctl)
        for slug in (MOVER, NEIGHBOUR):
            create_tenant(ctl, slug=slug, name=f"Benchmark {slug}", tier="shared", region=REGION)
        mover_id, neighbour_id = ctl.route(MOVER).tenant_id, ctl.route(NEIGHBOUR).tenant_id
        neighbour_rows = max(1000, args.rows // 10)
        log(f"loading {args.rows:,} rows for {MOVER}, {neighbour_rows:,} for {NEIGHBOUR}")
        load_s = load_tenants(ctl, [(mover_id, args.rows), (neighbour_id, neighbour_rows)], log)
        log(f"loaded in {load_s:.1f}s")
        doc: dict[str, Any] = {
            "home": str(home),
            "durable": ctl.settings.embedded_durable,
            "postgres": server_facts(ctl),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "rows_requested": args.rows,
            "neighbour_rows": neighbour_rows,
            "rate": args.rate,
            "load_s": load_s,
        }
        doc["floor"] = run_floor(ctl, mover_id, log)
        quiesce(ctl, log)
        le = args.long_every
        moves = [run_move(ctl, MOVER, rate=args.rate, max_freeze_ms=2000, log=log, long_every=le)]
        extra: list[tuple[str, int, int | None]] = []
        if args.second_freeze_ms > 0:
            extra.append((MOVER_B, args.second_freeze_ms, None))
        if args.gentle_rate:
            from bizosctl.throttle import parse_rate

            extra.append((MOVER_C, 2000, parse_rate(args.gentle_rate, what="--gentle-rate")))
        for slug, freeze_ms, max_rate in extra:
            create_tenant(ctl, slug=slug, name=f"Benchmark {slug}", tier="shared", region=REGION)
            log(f"loading {args.rows:,} rows for {slug}")
            load_tenants(ctl, [(ctl.route(slug).tenant_id, args.rows)], log)
            quiesce(ctl, log)
            moves.append(
                run_move(
                    ctl,
                    slug,
                    rate=args.rate,
                    max_freeze_ms=freeze_ms,
                    log=log,
                    long_every=le,
                    max_rate_bytes=max_rate,
                )
            )
        for mv in moves:
            mv["targets"] = targets(doc["floor"], mv)
        doc["moves"] = moves
        doc["total_runtime_s"] = time.perf_counter() - started
    finally:
        cleanup(ctl, home, log)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print_human(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
