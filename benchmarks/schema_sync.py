"""Schema sync benchmark: ``bizosctl schema sync`` side by side with the loop and the floor.

Run as ``python benchmarks/schema_sync.py [--schemas N] [--isolated M] [--scale 100,300,1000]
[--loop-sample K] [--durable] [--profile N] [--json]``.

Everything happens in a throw-away ``BIZOS_HOME`` (``/tmp/bzb-XXXXXXXX``, short so that the
Unix socket path stays under 108 bytes) with one embedded server, ``global-1``. N schema-tier
and M isolated tenants are created at revision 0004; only then is the benchmark revision
``benchmarks/migrations/b002_add_columns.py`` added to the tenant history (through
``BIZOS_TENANT_MIGRATIONS_EXTRA``), so every target has one migration to run. The targets are
those ``schema sync`` selects by default: the tenants plus the server's shared schema.

Each approach moves the same targets from 0004 to b002; between approaches bizosctl's own
``run_sync(to="0005")`` brings them back (untimed), and ``status_report`` checks (untimed) that
every target reached b002:

* (a) the loop users write today: ``python -m alembic upgrade head`` per target, one after the
  other (timed on a sample of K targets, extrapolated to all);
* (b) ``run_sync`` with ``parallel=1`` (in this process);
* (c) ``run_sync`` with its defaults, and once ``python -m bizosctl schema sync --json``;
* (d) the floor: the same offline DDL over one already-open superuser connection per database,
  one transaction per target, no lock, no catalog, no bookkeeping;
* (e) a no-op sync (everything already at b002).

``--scale`` times (c) and a no-op on the whole schema tier (``--tier schema``) at each size as
the tier grows (sizes up to N on the way to N, larger ones after the approaches). This is a
measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cleanup, conninfo, make_home

if TYPE_CHECKING:
    import psycopg

    from bizosctl.catalog.control import Control
    from bizosctl.sync.engine import SyncOptions, SyncReport
    from bizosctl.sync.targets import Selection, Target

HERE = Path(__file__).resolve().parent
EXTRA_DIR = HERE / "migrations"
EXTRA_ENV = "BIZOS_TENANT_MIGRATIONS_EXTRA"
BASE, DEST = "0005", "b002"
REGION, SERVER = "global", "global-1"
SLUG_PREFIX = {"schema": "ss", "isolated": "si"}
TARGET_SYNC_MS = 10.0  # (c): at most 10 ms per target, total wall time
TARGET_NOOP_MS = 3.0  # (e): at most 3 ms per target
REVERT_PARALLEL = 4
# create_tenant keeps one pooled connection to bizos_shared; that backend gets slower with
# every schema it creates (50 ms per tenant at first, 900 ms after 600), so the set-up drops
# it every so many tenants (untimed; see the README).
RECYCLE_EVERY = 50
REFERENCES = (
    "django-tenants' migrate_schemas: ~82 ms/schema for such a migration on 300 schemas "
    "(~41 ms with multiprocessing); 61 / 31 ms/schema when there is nothing to do",
    "raw DDL floor: ~2 ms/schema",
)
Log = Callable[[str], None]
Key = tuple[str, str, str]


# -- results ------------------------------------------------------------------------------------
@dataclass
class Approach:
    key: str
    label: str
    targets: int  # the full set the row stands for
    wall_s: float  # total for the full set (extrapolated when sampled)
    measured_targets: int = 0
    measured_s: float = 0.0
    sampled: bool = False
    verified: bool | None = None
    verify_note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_per_target(self) -> float | None:
        return 1000 * self.wall_s / self.targets if self.targets else None

    def as_dict(self, floor_ms: float | None) -> dict[str, Any]:
        ms = self.ms_per_target
        return {
            "key": self.key,
            "label": self.label,
            "targets": self.targets,
            "wall_s": self.wall_s,
            "ms_per_target": ms,
            "ratio_to_floor": ms / floor_ms if ms is not None and floor_ms else None,
            "sampled": self.sampled,
            "measured_targets": self.measured_targets,
            "measured_s": self.measured_s,
            "verified": self.verified,
            "verify_note": self.verify_note,
            **self.details,
        }


@dataclass
class ScalePoint:
    size: int
    sync_s: float
    noop_s: float
    verified: bool
    summary: dict[str, int]

    @property
    def sync_ms(self) -> float:
        return 1000 * self.sync_s / self.size

    @property
    def noop_ms(self) -> float:
        return 1000 * self.noop_s / self.size


# -- set-up -------------------------------------------------------------------------------------
@contextmanager
def base_history() -> Iterator[None]:
    """Without the benchmark revision: tenants created meanwhile are created at 0004."""
    saved = os.environ.pop(EXTRA_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[EXTRA_ENV] = saved


def slug(tier: str, i: int) -> str:
    return f"{SLUG_PREFIX[tier]}-{i:04d}"


def provision(ctl: Control, tier: str, first: int, last: int, log: Log) -> float:
    """Create tenants ``first..last`` (1-based, inclusive) of a tier, at revision 0004.

    Returns the seconds it took."""
    from bizosctl.db.engines import dispose_all
    from bizosctl.tenancy.provision import create_tenant

    if last < first:
        return 0.0
    started = time.perf_counter()
    with base_history():
        for i in range(first, last + 1):
            name = slug(tier, i)
            create_tenant(ctl, slug=name, name=f"Benchmark {name}", tier=tier, region=REGION)
            done = i - first + 1
            if done % RECYCLE_EVERY == 0:
                dispose_all()  # a fresh backend for the next tenants (see RECYCLE_EVERY)
            if done % 50 == 0 or i == last:
                elapsed = time.perf_counter() - started
                log(
                    f"  {tier}: {i}/{last} ({done / elapsed:.1f} tenants/s, "
                    f"{elapsed:.0f} s for {done})"
                )
    return time.perf_counter() - started


def quote_ident(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def server_facts(ctl: Control) -> dict[str, str]:
    """Version and durability settings, as the server reports them."""
    import psycopg

    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes")
    with psycopg.connect(**conninfo(ctl.server(SERVER).admin_url("postgres"))) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(names)]
        ).fetchall()
    return {str(name): str(setting) for name, setting in rows}


# -- checks and resets (never timed) ------------------------------------------------------------
def revisions(ctl: Control, selection: Selection) -> dict[Key, str | None]:
    from bizosctl.sync.targets import status_report

    doc = status_report(ctl, selection)
    return {(t["server"], t["database"], t["schema"]): t["revision"] for t in doc["targets"]}


def check_at(
    ctl: Control, selection: Selection, revision: str, keys: set[Key] | None = None
) -> tuple[bool, str]:
    """Whether every selected target (or those of ``keys``) is at ``revision``, and a note."""
    found = revisions(ctl, selection)
    wanted = set(found) if keys is None else keys
    wrong = sorted(k for k in wanted if found.get(k) != revision)
    if not wrong:
        return True, f"all {len(wanted)} targets at {revision}"
    shown = ", ".join(f"{k[1]}/{k[2]} ({found.get(k)})" for k in wrong[:8])
    more = f" and {len(wrong) - 8} more" if len(wrong) > 8 else ""
    return False, f"{len(wrong)} of {len(wanted)} targets NOT at {revision}: {shown}{more}"


def verify(
    ctl: Control, selection: Selection, approach: Approach, log: Log, keys: set[Key] | None = None
) -> None:
    ok, note = check_at(ctl, selection, DEST, keys)
    approach.verified, approach.verify_note = ok, note
    log(f"verify ({approach.key}): {'ok' if ok else 'FAILED'}: {note}")


def reset(ctl: Control, selection: Selection, log: Log) -> None:
    """Bring the selected targets back to 0004 with bizosctl itself, and check it (untimed)."""
    from bizosctl.sync.engine import SyncOptions, run_sync

    started = time.perf_counter()
    opts = SyncOptions(to=BASE, yes=True, parallel=REVERT_PARALLEL, selection=selection)
    report = run_sync(ctl, opts)
    # The report says where each target ended (read back from the target when unchanged);
    # no second status_report: reading the targets costs ~1.4 s at 300 schemas and ~13 s at
    # 1,000 (a scan of pg_class per schema, for the sizes).
    wrong = [r for r in report.results if r.status not in ("migrated", "unchanged")]
    wrong += [
        r for r in report.results if r.status in ("migrated", "unchanged") and r.after != BASE
    ]
    if wrong:
        errors = "; ".join(f"{r.target.label}: {r.status} {r.error or r.after}" for r in wrong)
        raise RuntimeError(f"could not bring the targets back to {BASE}: {errors[:500]}")
    log(
        f"  reset to {BASE}: all {len(report.results)} targets at {BASE} "
        f"({report.summary()}, {time.perf_counter() - started:.1f} s, untimed)"
    )


def timed_sync(ctl: Control, opts: SyncOptions) -> tuple[float, SyncReport]:
    from bizosctl.sync.engine import run_sync

    t0 = time.perf_counter()
    report = run_sync(ctl, opts)
    return time.perf_counter() - t0, report


def sync_details(report: SyncReport) -> dict[str, Any]:
    """Summary, and the mean time spent inside ``migrate_target`` per migrated target."""
    inside = [r.duration_ms for r in report.results if r.status == "migrated"]
    return {
        "summary": report.summary(),
        "ok": report.ok,
        "mean_in_target_ms": sum(inside) / len(inside) if inside else None,
    }


# -- (a) the alembic command line, once per target ----------------------------------------------
def write_alembic_ini(home: Path) -> Path:
    """An ini for the plain alembic CLI whose history includes the benchmark revision."""
    from bizosctl.db.migrate import script_location

    location = script_location("tenant")
    ini = home / "alembic-bench.ini"
    ini.write_text(
        "[alembic]\n"
        f"script_location = {location}\n"
        f"version_locations = {location / 'versions'} {EXTRA_DIR}\n"
        "path_separator = space\n"
    )
    return ini


def sample(targets: list[Target], k: int) -> list[Target]:
    """``k`` targets spread evenly over the list (so the tiers keep their proportions)."""
    if k >= len(targets):
        return list(targets)
    return [targets[(i * len(targets)) // k] for i in range(k)]


def alembic_loop(
    ctl: Control, ini: Path, chosen: list[Target], log: Log
) -> tuple[float, list[str]]:
    """``python -m alembic -c INI -x url=... -x schema=... upgrade head`` per target."""
    cmds = []
    for t in chosen:
        url = ctl.server(t.server).admin_url(t.database).render_as_string(hide_password=False)
        xargs = ["-x", f"url={url}", "-x", f"schema={t.schema}"]
        cmds.append([sys.executable, "-m", "alembic", "-c", str(ini), *xargs, "upgrade", "head"])
    errors: list[str] = []
    t0 = time.perf_counter()
    for t, cmd in zip(chosen, cmds, strict=True):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors.append(f"{t.label}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    wall = time.perf_counter() - t0
    for error in errors[:5]:
        log(f"  (a) failed: {error}")
    return wall, errors


# -- (d) the floor --------------------------------------------------------------------------------
class Floor:
    """The same DDL with nothing around it: psycopg, superuser, no lock, no catalog."""

    def __init__(self, ctl: Control, targets: list[Target]) -> None:
        import psycopg

        from bizosctl.db.migrate import offline_sql
        from tenant_schema.ddl import OWNER_ROLE

        owner = quote_ident(OWNER_ROLE)
        self.targets = targets
        self.scripts: dict[Key, bytes] = {}
        for t in targets:
            sql = offline_sql("tenant", schema=t.schema, start=BASE, dest=DEST)
            if "%%" in sql:
                raise RuntimeError(f"offline_sql doubled a '%' for {t.schema}")
            self.scripts[t.key] = (
                f"SET LOCAL search_path TO {quote_ident(t.schema)}, public;\n"
                f"SET LOCAL ROLE {owner};\n{sql}"
            ).encode()
        self.statements = next(iter(self.scripts.values())).count(b";\n\n") if targets else 0
        self.conns: dict[tuple[str, str], psycopg.Connection[Any]] = {}
        for t in targets:
            if (t.server, t.database) not in self.conns:
                url = ctl.server(t.server).admin_url(t.database)
                conn = psycopg.connect(**conninfo(url), autocommit=True)
                self.conns[(t.server, t.database)] = conn

    def run(self) -> float:
        t0 = time.perf_counter()
        for t in self.targets:
            conn = self.conns[(t.server, t.database)]
            with conn.transaction():
                conn.execute(self.scripts[t.key])  # no parameters: one simple-query round trip
        return time.perf_counter() - t0

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def percent_check() -> str:
    """offline_sql must keep PL/pgSQL's single '%' (0001 has RAISE ... '%'), not double it."""
    from bizosctl.db.migrate import offline_sql

    try:
        sql = offline_sql("tenant", schema="t_percent_check", start=None, dest=BASE)
    except Exception as exc:  # a report line, not a failure of the benchmark
        return f"offline_sql of 0001 could not be rendered ({type(exc).__name__}: {exc})"
    if "%%" in sql:
        return "offline_sql of 0001 has '%%' (doubled): the floor would not be the same DDL"
    return (
        f"offline_sql keeps single '%' ({sql.count('%')} in 0001's SQL, no '%%'); "
        "b002's SQL has no '%' at all"
    )


# -- the CLI, end to end --------------------------------------------------------------------------
def cli_sync(log: Log) -> tuple[float, dict[str, Any]]:
    cmd = [sys.executable, "-m", "bizosctl", "schema", "sync", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    try:
        doc: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        log(f"  CLI exit {proc.returncode}, no JSON: {proc.stderr.strip()[-500:]}")
        doc = {}
    return wall, {
        "exit_code": proc.returncode,
        "summary": doc.get("summary"),
        "ok": doc.get("ok"),
        "cli_elapsed_s": doc.get("elapsed_s"),
    }


# -- the runs -------------------------------------------------------------------------------------
def run_approaches(
    ctl: Control, home: Path, targets: list[Target], loop_sample: int, log: Log
) -> list[Approach]:
    from bizosctl.sync.engine import SyncOptions
    from bizosctl.sync.targets import Selection

    every = Selection()
    n = len(targets)
    out: list[Approach] = []

    # (d) first: the floor, whose set-up (offline SQL per target, connections) is untimed.
    log(f"(d) floor: rendering the offline SQL of {n} targets, opening connections (untimed)")
    floor = Floor(ctl, targets)
    try:
        log("(d) floor: timing")
        wall = floor.run()
    finally:
        floor.close()
    d = Approach("d", "floor: offline DDL, one open connection per database", n, wall)
    d.measured_targets, d.measured_s = n, wall
    d.details["statements_per_target"] = floor.statements
    verify(ctl, every, d, log)
    out.append(d)
    reset(ctl, every, log)

    # (a) the loop: K targets timed, extrapolated to all.
    ini = write_alembic_ini(home)
    chosen = sample(targets, loop_sample)
    log(f"(a) alembic CLI loop: {len(chosen)} of {n} targets, one subprocess each")
    wall, errors = alembic_loop(ctl, ini, chosen, log)
    per_target = wall / len(chosen) if chosen else 0.0
    a = Approach(
        "a",
        "loop: python -m alembic upgrade head per target",
        n,
        per_target * n,
        measured_targets=len(chosen),
        measured_s=wall,
        sampled=len(chosen) < n,
        details={"failures": errors},
    )
    verify(ctl, every, a, log, keys={t.key for t in chosen})
    out.append(a)
    reset(ctl, every, log)

    # (b) and (c): bizosctl in this process.
    for key, label, opts in (
        ("b", "bizosctl run_sync, parallel=1", SyncOptions(parallel=1)),
        ("c", "bizosctl run_sync, defaults", SyncOptions()),
    ):
        log(f"({key}) {label}")
        wall, report = timed_sync(ctl, opts)
        row = Approach(key, label, n, wall, measured_targets=n, measured_s=wall)
        row.details = sync_details(report) | {"parallel": opts.parallel}
        verify(ctl, every, row, log)
        out.append(row)
        reset(ctl, every, log)

    # (c) once more through the command line, end to end (interpreter start-up included).
    log("(c-cli) python -m bizosctl schema sync --json")
    wall, details = cli_sync(log)
    row = Approach(
        "c-cli", "bizosctl CLI: schema sync --json (subprocess)", n, wall, n, wall, details=details
    )
    verify(ctl, every, row, log)
    out.append(row)

    # (e) nothing to do.
    log("(e) no-op sync")
    wall, report = timed_sync(ctl, SyncOptions())
    e = Approach("e", "no-op: run_sync, defaults, all at b002", n, wall, n, wall)
    e.details = sync_details(report)
    verify(ctl, every, e, log)
    out.append(e)
    return out


def scale_point(ctl: Control, size: int, log: Log) -> ScalePoint:
    """(c) and then the no-op on every schema-tier tenant (``--tier schema``), ``size`` of them.

    The selection is the tier, not a list of tenants: that is what an operator types, and
    ``--tenant`` lists that long do not work (see the README).
    """
    from bizosctl.sync.engine import SyncOptions
    from bizosctl.sync.targets import Selection, list_targets

    selection = Selection(tier="schema")
    found = len(list_targets(ctl, selection))
    if found != size:
        raise RuntimeError(f"scale {size}: {found} schema-tier targets, not {size}")
    reset(ctl, selection, log)
    log(f"scale {size}: (c) run_sync, defaults, --tier schema")
    sync_s, report = timed_sync(ctl, SyncOptions(selection=selection))
    ok, note = check_at(ctl, selection, DEST)
    log(f"verify (scale {size}): {'ok' if ok else 'FAILED'}: {note}")
    noop_s, _ = timed_sync(ctl, SyncOptions(selection=selection))
    return ScalePoint(size, sync_s, noop_s, ok, report.summary())


def profile_sync(ctl: Control, count: int, fleet: int, log: Log, top: int = 35) -> str:
    """cProfile of (c) with parallel=1 (so everything runs in this process) on ``count``
    schema-tier targets of a ``fleet``, the top entries by cumulative and by own time."""
    from bizosctl.sync.engine import SyncOptions, run_sync
    from bizosctl.sync.targets import Selection

    selection = Selection(tenants=[slug("schema", i) for i in range(1, count + 1)])
    reset(ctl, selection, log)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    report = profiler.runcall(run_sync, ctl, SyncOptions(parallel=1, selection=selection))
    wall = time.perf_counter() - t0
    out = io.StringIO()
    out.write(
        f"cProfile of run_sync(parallel=1) on {count} schema-tier targets (--tenant ...) of a "
        f"fleet of {fleet}: {wall:.3f} s "
        f"under the profiler ({report.summary()})\n"
    )
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()


# -- output ---------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def build_doc(
    meta: dict[str, Any], rows: list[Approach], points: list[ScalePoint]
) -> dict[str, Any]:
    by_key = {r.key: r for r in rows}
    floor_ms = by_key["d"].ms_per_target if "d" in by_key else None
    c_ms = by_key["c"].ms_per_target if "c" in by_key else None
    e_ms = by_key["e"].ms_per_target if "e" in by_key else None
    base_ms = points[0].sync_ms if points else None
    return {
        **meta,
        "approaches": [r.as_dict(floor_ms) for r in rows],
        "targets": {
            "sync_ms_per_target": {
                "limit": TARGET_SYNC_MS,
                "measured": c_ms,
                "met": None if c_ms is None else c_ms <= TARGET_SYNC_MS,
            },
            "noop_ms_per_target": {
                "limit": TARGET_NOOP_MS,
                "measured": e_ms,
                "met": None if e_ms is None else e_ms <= TARGET_NOOP_MS,
            },
        },
        "references_not_measured": list(REFERENCES),
        "scale": [
            {
                "schemas": p.size,
                "sync_s": p.sync_s,
                "sync_ms_per_target": p.sync_ms,
                "sync_per_target_vs_first": p.sync_ms / base_ms if base_ms else None,
                "noop_s": p.noop_s,
                "noop_ms_per_target": p.noop_ms,
                "verified": p.verified,
                "summary": p.summary,
            }
            for p in points
        ],
    }


def print_human(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True, width=132)
    pg = doc["postgres"]
    console.print(
        f"PostgreSQL {pg['server_version']}, "
        f"{'durable (--durable)' if doc['durable'] else 'fast (BIZOS_EMBEDDED_DURABLE=false)'}: "
        f"fsync={pg['fsync']} synchronous_commit={pg['synchronous_commit']} "
        f"full_page_writes={pg['full_page_writes']}; Python {doc['python']}, {doc['cpus']} CPUs"
    )
    before, after = doc["load_average"]["before"], doc["load_average"]["after"]
    busy = max(before[0], after[0], after[1]) > 0.5 * (doc["cpus"] or 1)
    console.print(
        f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in after)}"
        + (": other processes were busy on this machine, timings are noisy" if busy else "")
    )
    console.print(
        f"targets: {doc['schemas']} schema-tier + {doc['isolated']} isolated tenants + "
        f"{doc['shared_targets']} shared schema = {doc['target_count']}; migration {BASE} -> "
        f"{DEST} (2 ADD COLUMN with a default, 2 CREATE INDEX); provisioning took "
        f"{doc['provision_s']:.0f} s"
    )
    table = Table(title=f"schema sync {BASE} -> {DEST}: wall time for all targets")
    for header in ("approach", "targets", "total s", "ms/target", "x floor", "check"):
        table.add_column(header, justify="left" if header in ("approach", "check") else "right")
    for r in doc["approaches"]:
        total = _fmt(r["wall_s"], ".3f") + ("*" if r["sampled"] else "")
        ratio = _fmt(r["ratio_to_floor"], ".1f") + ("x" if r["ratio_to_floor"] else "")
        check = {True: "ok", False: "FAILED", None: "-"}[r["verified"]]
        table.add_row(
            f"({r['key']}) {r['label']}",
            str(r["targets"]),
            total,
            _fmt(r["ms_per_target"], ".2f"),
            ratio,
            check,
        )
    console.print(table)
    for r in doc["approaches"]:
        if r["sampled"]:
            console.print(
                f"* ({r['key']}) SAMPLED and EXTRAPOLATED: {r['measured_targets']} of "
                f"{r['targets']} targets timed ({r['measured_s']:.2f} s), per-target mean x "
                f"{r['targets']}"
            )
    for r in doc["approaches"]:
        console.print(f"verify ({r['key']}): {r['verify_note']}")
        extra = []
        if r.get("summary") is not None:
            extra.append(f"summary {r['summary']}")
        if r.get("mean_in_target_ms") is not None:
            inside = r["mean_in_target_ms"]
            extra.append(
                f"mean {inside:.2f} ms inside migrate_target per target"
                + (f" (x{r['parallel']} workers)" if r.get("parallel", 1) > 1 else "")
            )
        if r.get("cli_elapsed_s") is not None:
            extra.append(f"the CLI's own elapsed_s {r['cli_elapsed_s']:.3f}")
        if r.get("failures"):
            extra.append(f"{len(r['failures'])} failure(s)")
        if extra:
            console.print(f"  ({r['key']}) " + "; ".join(extra))
    console.print(doc["percent_check"])
    targets = doc["targets"]
    sync_t, noop_t = targets["sync_ms_per_target"], targets["noop_ms_per_target"]
    console.print(
        f"target: (c) at most {sync_t['limit']:.0f} ms per target in total wall time: "
        f"{_verdict(sync_t['met'])} ({_fmt(sync_t['measured'], '.2f')} ms)"
    )
    console.print(
        f"target: no-op sync at most {noop_t['limit']:.0f} ms per target: "
        f"{_verdict(noop_t['met'])} ({_fmt(noop_t['measured'], '.2f')} ms)"
    )
    for line in doc["references_not_measured"]:
        console.print(f"reference (not measured here): {line}")
    if doc["scale"]:
        scale = Table(title="scale: (c) run_sync defaults, schema-tier tenants only")
        for header in (
            "schemas",
            "sync s",
            "ms/target",
            "vs first",
            "no-op s",
            "no-op ms/target",
            "check",
        ):
            scale.add_column(header, justify="right")
        for p in doc["scale"]:
            scale.add_row(
                str(p["schemas"]),
                f"{p['sync_s']:.3f}",
                f"{p['sync_ms_per_target']:.2f}",
                _fmt(p["sync_per_target_vs_first"], ".2f") + "x",
                f"{p['noop_s']:.3f}",
                f"{p['noop_ms_per_target']:.2f}",
                "ok" if p["verified"] else "FAILED",
            )
        console.print(scale)
        console.print(
            "linear growth keeps ms/target roughly constant ('vs first' near 1.0x); "
            "the selection is --tier schema; the tier grows incrementally (sizes up to "
            "--schemas are measured on the way to it, larger ones after the approaches)"
        )


# -- main -----------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if any(not 1 <= s <= 9999 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be between 1 and 9999")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--schemas", type=int, default=300, metavar="N", help="schema tenants")
    parser.add_argument("--isolated", type=int, default=30, metavar="M", help="isolated tenants")
    parser.add_argument(
        "--scale",
        type=parse_sizes,
        default=[100, 300, 1000],
        metavar="SIZES",
        help="comma-separated schema-tier fleet sizes for (c); '' disables (default 100,300,1000)",
    )
    parser.add_argument(
        "--loop-sample",
        type=int,
        default=40,
        metavar="K",
        help="time (a) on K targets and extrapolate (default 40)",
    )
    parser.add_argument(
        "--durable", action="store_true", help="fsync on (default: BIZOS_EMBEDDED_DURABLE=false)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also cProfile run_sync(parallel=1) on N schema-tier targets (stderr)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    for name in ("schemas", "isolated"):
        if not 0 <= getattr(args, name) <= 9999:
            parser.error(f"--{name} must be between 0 and 9999")
    if args.schemas + args.isolated == 0:
        parser.error("nothing to measure: --schemas and --isolated are both 0")
    if args.loop_sample < 1:
        parser.error("--loop-sample must be at least 1")
    if not 0 <= args.profile <= min(args.schemas, 250):
        parser.error("--profile N: at most --schemas and at most 250 (a --tenant selection)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = make_home(fast=not (args.durable))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    ctl: Control | None = None
    load_before = os.getloadavg()
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.db.migrate import head
        from bizosctl.sync.targets import Selection, list_targets
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        log(
            f"home {home}: initialising; "
            + ("durable (fsync on)" if args.durable else "fast: BIZOS_EMBEDDED_DURABLE=false")
        )
        init_home(ctl)
        log(f"creating {args.schemas} schema-tier and {args.isolated} isolated tenants at {BASE}")
        provision_s = provision(ctl, "isolated", 1, args.isolated, log)
        # From here on the history has b002; tenants made later are still made at 0004
        # (provision() hides the extra directory while it creates them).
        os.environ[EXTRA_ENV] = str(EXTRA_DIR)
        if head("tenant") != DEST:
            raise RuntimeError(f"the tenant head is {head('tenant')}, not {DEST}")
        # The schema tier grows to N; each --scale size up to N is measured on the way (the
        # selection is the whole tier), the larger ones after the approaches.
        made, points = 0, []
        for size in [s for s in args.scale if s <= args.schemas]:
            provision_s += provision(ctl, "schema", made + 1, size, log)
            made = size
            points.append(scale_point(ctl, size, log))
        provision_s += provision(ctl, "schema", made + 1, args.schemas, log)
        made = max(made, args.schemas)
        every = Selection()
        reset(ctl, every, log)
        targets = list_targets(ctl, every)
        meta: dict[str, Any] = {
            "durable": ctl.settings.embedded_durable,
            "postgres": server_facts(ctl),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "schemas": args.schemas,
            "isolated": args.isolated,
            "shared_targets": sum(1 for t in targets if t.kind == "shared"),
            "target_count": len(targets),
            "provision_s": provision_s,
            "loop_sample": args.loop_sample,
            "percent_check": percent_check(),
        }
        log(f"{len(targets)} targets at {BASE}; head is now {DEST}")
        rows = run_approaches(ctl, home, targets, args.loop_sample, log)
        if args.profile:
            log(profile_sync(ctl, args.profile, len(targets), log))
        for size in [s for s in args.scale if s > args.schemas]:
            log(f"scale {size}: creating schema-tier tenants {made + 1}..{size}")
            provision(ctl, "schema", made + 1, size, log)
            made = size
            points.append(scale_point(ctl, size, log))
        meta["load_average"] = {"before": load_before, "after": os.getloadavg()}
    finally:
        cleanup(ctl, home, log)
    doc = build_doc(meta, rows, points)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_human(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
