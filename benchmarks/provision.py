"""Provisioning benchmark: ``create_tenant`` side by side with the bare DDL floor.

Run as ``python benchmarks/provision.py [--schema N] [--isolated M] [--fast] [--json]
[--profile]``.

Everything happens in a throw-away ``BIZOS_HOME`` (``/tmp/bzb-XXXXXXXX``, short so that the
Unix socket path stays under 108 bytes) with one embedded server, ``global-1``:

* **bizosctl**: ``bizosctl.tenancy.provision.create_tenant`` for N schema-tier and M
  isolated tenants, in-process (catalog rows, checkpointed operation, migration, state rows).
* **floor**: the same tenant DDL, as Alembic emits it offline (``--sql``), sent directly with
  psycopg: no catalog, no operation bookkeeping. A schema-tier target is one transaction on
  one already-open superuser connection to ``bizos_shared``; an isolated target is
  ``CREATE DATABASE`` on an already-open connection to ``postgres``, then a new connection to
  that database and one transaction with the extension, the schema and the DDL.

The two paths are interleaved tenant by tenant (bizosctl, then floor), so that the growth of
the system catalogs and the WAL weighs on both alike. One untimed warm-up tenant per tier and
path comes first, so one-time costs (imports, loading the Alembic scripts, the keyring) do not
count. CLI start-up is the median of several ``python -m bizosctl --help`` runs against
``python -c pass``. This is a measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cleanup, conninfo, make_home

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import URL

    from bizosctl.catalog.control import Control

TARGET_RATIO = 1.5  # provisioning within 1.5x the floor per tenant
TARGET_CLI_OVERHEAD_S = 0.3  # `bizosctl --help` under 0.3 s more than bare Python
CLI_RUNS = 7
REGION = "global"
SERVER = "global-1"
PLACEHOLDER = "__SCHEMA__"
TIERS = ("schema", "isolated")
Log = Callable[[str], None]
SLUG_PREFIX = {"schema": "bs", "isolated": "bi"}
FLOOR_PREFIX = {"schema": "t_floor_", "isolated": "t_floorx_"}


# -- results ------------------------------------------------------------------------------------
@dataclass
class TierResult:
    tier: str
    bizosctl_s: list[float] = field(default_factory=list)
    floor_s: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.bizosctl_s)

    @property
    def bizosctl_total(self) -> float:
        return sum(self.bizosctl_s)

    @property
    def floor_total(self) -> float:
        return sum(self.floor_s)

    @property
    def ratio(self) -> float | None:
        return self.bizosctl_total / self.floor_total if self.floor_total > 0 else None

    @property
    def met(self) -> bool | None:
        return None if self.ratio is None else self.ratio <= TARGET_RATIO

    def as_dict(self) -> dict[str, Any]:
        def per_tenant_ms(samples: list[float]) -> float | None:
            return 1000 * sum(samples) / len(samples) if samples else None

        def median_ms(samples: list[float]) -> float | None:
            return 1000 * statistics.median(samples) if samples else None

        return {
            "count": self.count,
            "bizosctl_total_s": self.bizosctl_total,
            "bizosctl_per_tenant_ms": per_tenant_ms(self.bizosctl_s),
            "bizosctl_median_ms": median_ms(self.bizosctl_s),
            "floor_total_s": self.floor_total,
            "floor_per_tenant_ms": per_tenant_ms(self.floor_s),
            "floor_median_ms": median_ms(self.floor_s),
            "ratio": self.ratio,
            "target_met": self.met,
        }


@dataclass
class CliResult:
    runs: int
    bizosctl_s: float
    python_s: float

    @property
    def overhead_s(self) -> float:
        return self.bizosctl_s - self.python_s

    @property
    def met(self) -> bool:
        return self.overhead_s < TARGET_CLI_OVERHEAD_S

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "command": "python -m bizosctl --help",
            "bizosctl_median_s": self.bizosctl_s,
            "python_median_s": self.python_s,
            "overhead_s": self.overhead_s,
            "target_overhead_s": TARGET_CLI_OVERHEAD_S,
            "target_met": self.met,
        }


# -- set-up -------------------------------------------------------------------------------------
def quote_ident(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def tenant_ddl_template() -> str:
    """The tenant history up to head as offline SQL (``alembic upgrade head --sql``).

    ``migrations/tenant/env.py`` only runs online, so the environment is driven here directly,
    the way ``bizosctl.db.migrate.upgrade`` does in-process but with ``as_sql=True``, for the
    placeholder schema ``__SCHEMA__`` that the caller replaces with each target's schema.
    Revision 0001 (as committed) asks the connection for ``current_schema()``, which offline
    has no connection to answer: while rendering, ``op.get_bind()`` answers that one query
    with the placeholder, and any other query through it fails loudly. A revision that reads
    the schema from the context (``version_table_schema``) gets the placeholder from there.
    """
    from unittest import mock

    from alembic.config import Config
    from alembic.operations import Operations
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    from bizosctl.db.migrate import script_location

    class _Result:
        def scalar_one(self) -> str:
            return PLACEHOLDER

    class _OfflineBind:
        def execute(self, statement: object, *args: object, **kwargs: object) -> _Result:
            if " ".join(str(statement).split()).lower() != "select current_schema()":
                raise RuntimeError(f"offline rendering cannot run {statement!s}")
            return _Result()

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location("tenant")))
    script = ScriptDirectory.from_config(cfg)
    buf = io.StringIO()

    def upgrade_revs(rev: Any, context: Any) -> Any:
        return script._upgrade_revs("head", rev)

    with (
        mock.patch.object(Operations, "get_bind", lambda self: _OfflineBind()),
        EnvironmentContext(
            cfg,
            script,
            fn=upgrade_revs,
            as_sql=True,
            destination_rev="head",
            output_buffer=buf,
        ) as env,
    ):
        env.configure(
            url="postgresql+psycopg://",
            dialect_name="postgresql",
            # As Alembic's own offline template: a pyformat driver would double every '%'.
            dialect_opts={"paramstyle": "named"},
            as_sql=True,
            version_table_schema=PLACEHOLDER,
            output_buffer=buf,
            literal_binds=True,
            transactional_ddl=True,
        )
        # No env.begin_transaction(): the script carries no BEGIN/COMMIT of its own, the floor
        # wraps it in its transaction together with the schema set-up.
        env.run_migrations()
    sql = buf.getvalue()
    if PLACEHOLDER not in sql:
        raise RuntimeError("the offline tenant DDL does not mention the target schema")
    return sql


# -- the floor ----------------------------------------------------------------------------------
class Floor:
    """The same DDL with nothing around it: psycopg, superuser, no catalog, no operations."""

    def __init__(self, ctl: Control, ddl_template: str) -> None:
        import psycopg

        from bizosctl.tenancy.names import SHARED_DB
        from tenant_schema.ddl import OWNER_ROLE

        self._owner = quote_ident(OWNER_ROLE)
        self._handle = ctl.server(SERVER)
        self._template = ddl_template
        self._shared = psycopg.connect(**conninfo(self._handle.admin_url(SHARED_DB)))
        self._shared.autocommit = True
        self._admin = psycopg.connect(**conninfo(self._handle.admin_url("postgres")))
        self._admin.autocommit = True

    def close(self) -> None:
        self._shared.close()
        self._admin.close()

    def _script(self, schema: str) -> bytes:
        s = quote_ident(schema)
        return (
            f"CREATE SCHEMA {s} AUTHORIZATION {self._owner};\n"
            f"SET LOCAL search_path TO {s}, public;\n"
            f"SET LOCAL ROLE {self._owner};\n" + self._template.replace(quote_ident(PLACEHOLDER), s)
        ).encode()

    def _migrate(self, conn: psycopg.Connection[Any], schema: str, *, extension: bool) -> None:
        script = self._script(schema)
        if extension:
            script = b"CREATE EXTENSION IF NOT EXISTS vector;\n" + script
        with conn.transaction():
            conn.execute(script)  # no parameters: one simple-protocol round trip

    def schema_target(self, name: str) -> None:
        self._migrate(self._shared, name, extension=False)

    def isolated_target(self, name: str) -> None:
        import psycopg

        self._admin.execute(f"CREATE DATABASE {quote_ident(name)}".encode())
        with psycopg.connect(**conninfo(self._handle.admin_url(name)), autocommit=True) as conn:
            self._migrate(conn, name, extension=True)

    def create(self, tier: str, name: str) -> None:
        if tier == "schema":
            self.schema_target(name)
        else:
            self.isolated_target(name)


# -- the runs -----------------------------------------------------------------------------------
def bizosctl_create(ctl: Control, tier: str, slug: str) -> None:
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(ctl, slug=slug, name=f"Benchmark {slug}", tier=tier, region=REGION)


def run_tier(ctl: Control, floor: Floor, tier: str, count: int, log: Log) -> TierResult:
    result = TierResult(tier)
    if count == 0:
        return result
    bizosctl_create(ctl, tier, f"{SLUG_PREFIX[tier]}-warm")
    floor.create(tier, f"{FLOOR_PREFIX[tier]}warm")
    width = max(4, len(str(count)))
    for i in range(1, count + 1):
        t0 = time.perf_counter()
        bizosctl_create(ctl, tier, f"{SLUG_PREFIX[tier]}-{i:0{width}d}")
        t1 = time.perf_counter()
        floor.create(tier, f"{FLOOR_PREFIX[tier]}{i:0{width}d}")
        t2 = time.perf_counter()
        result.bizosctl_s.append(t1 - t0)
        result.floor_s.append(t2 - t1)
        if i % 10 == 0 or i == count:
            log(f"  {tier}: {i}/{count}")
    return result


def profile_create(ctl: Control, tier: str, top: int = 30) -> str:
    """cProfile of one more ``create_tenant``, the top entries by cumulative time."""
    profiler = cProfile.Profile()
    profiler.runcall(bizosctl_create, ctl, tier, f"{SLUG_PREFIX[tier]}-profile")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def median_run_s(cmd: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def cli_startup(runs: int = CLI_RUNS) -> CliResult:
    """``sys.executable -m bizosctl``, not the ``bizosctl`` shim (pyenv adds its own start-up)."""
    return CliResult(
        runs=runs,
        bizosctl_s=median_run_s([sys.executable, "-m", "bizosctl", "--help"], runs),
        python_s=median_run_s([sys.executable, "-c", "pass"], runs),
    )


FINGERPRINT_SQL = """
SELECT format('schema %%s %%s', pg_get_userbyid(nspowner), nspacl)
FROM pg_namespace WHERE oid = %(s)s::text::regnamespace
UNION ALL
SELECT format('rel %%s %%s %%s %%s rls=%%s/%%s', relname, relkind, pg_get_userbyid(relowner),
              relacl, relrowsecurity, relforcerowsecurity)
FROM pg_class WHERE relnamespace = %(s)s::text::regnamespace
UNION ALL
SELECT format('col %%s.%%s %%s notnull=%%s default=%%s', c.relname, a.attname,
              format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = %(s)s::text::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT format('con %%s.%%s %%s', c.relname, k.conname, pg_get_constraintdef(k.oid))
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
WHERE c.relnamespace = %(s)s::text::regnamespace
UNION ALL
SELECT format('idx %%s', pg_get_indexdef(i.indexrelid))
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE c.relnamespace = %(s)s::text::regnamespace
UNION ALL
SELECT format('pol %%s.%%s %%s %%s %%s %%s', tablename, policyname, cmd, roles, qual, with_check)
FROM pg_policies WHERE schemaname = %(s)s::text
UNION ALL
SELECT format('trg %%s', pg_get_triggerdef(t.oid))
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = %(s)s::text::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT format('fn %%s %%s', pg_get_functiondef(oid), pg_get_userbyid(proowner))
FROM pg_proc WHERE pronamespace = %(s)s::text::regnamespace
"""


def fingerprint(url: URL, schema: str) -> set[str]:
    """Everything the tenant DDL creates in ``schema``, with the schema name made neutral."""
    import psycopg

    with psycopg.connect(**conninfo(url)) as conn:
        rows = conn.execute(FINGERPRINT_SQL, {"s": schema}).fetchall()
        version = conn.execute(f"SELECT version_num FROM {quote_ident(schema)}.alembic_version")
        rows += [(f"alembic_version {v}",) for (v,) in version.fetchall()]
    return {
        str(row[0]).replace(quote_ident(schema), PLACEHOLDER).replace(schema, PLACEHOLDER)
        for row in rows
    }


def same_ddl(ctl: Control, tier: str, log: Log) -> bool:
    """Whether the warm-up targets of both paths hold the same objects (untimed)."""
    from bizosctl.tenancy.names import SHARED_DB, tenant_ident

    handle = ctl.server(SERVER)
    ident, floor_name = tenant_ident(f"{SLUG_PREFIX[tier]}-warm"), f"{FLOOR_PREFIX[tier]}warm"
    ours = fingerprint(handle.admin_url(SHARED_DB if tier == "schema" else ident), ident)
    theirs = fingerprint(
        handle.admin_url(SHARED_DB if tier == "schema" else floor_name), floor_name
    )
    for line in sorted(ours ^ theirs)[:20]:
        log(f"  {tier} DDL differs: {'bizosctl' if line in ours else 'floor'} only: {line}")
    return ours == theirs


def server_facts(ctl: Control) -> dict[str, str]:
    """Version and durability settings, as the server reports them."""
    import psycopg

    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes")
    with psycopg.connect(**conninfo(ctl.server(SERVER).admin_url("postgres"))) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(names)]
        ).fetchall()
    return {str(name): str(setting) for name, setting in rows}


# -- output -------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def report(meta: dict[str, Any], tiers: list[TierResult], cli: CliResult) -> dict[str, Any]:
    measured = [t.met for t in tiers if t.met is not None]
    return {
        **meta,
        "tiers": {t.tier: t.as_dict() for t in tiers},
        "provisioning_target_ratio": TARGET_RATIO,
        "provisioning_target_met": all(measured) if measured else None,
        "cli_startup": cli.as_dict(),
    }


def print_human(doc: dict[str, Any], tiers: list[TierResult], cli: CliResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    pg = doc["postgres"]
    console.print(
        f"PostgreSQL {pg['server_version']}, {'durable' if doc['durable'] else 'fast (--fast)'}: "
        f"fsync={pg['fsync']} synchronous_commit={pg['synchronous_commit']} "
        f"full_page_writes={pg['full_page_writes']}; home {doc['home']}, "
        f"Python {doc['python']}, {doc['cpus']} CPUs"
    )
    table = Table(title="Provisioning: bizosctl create_tenant vs bare DDL (floor)")
    for header in (
        "tier",
        "count",
        "bizosctl total s",
        "bizosctl ms/tenant",
        "floor total s",
        "floor ms/tenant",
        "ratio",
    ):
        table.add_column(header, justify="left" if header == "tier" else "right")
    for t in tiers:
        d = t.as_dict()
        table.add_row(
            t.tier,
            str(t.count),
            _fmt(d["bizosctl_total_s"], ".3f"),
            _fmt(d["bizosctl_per_tenant_ms"], ".1f"),
            _fmt(d["floor_total_s"], ".3f"),
            _fmt(d["floor_per_tenant_ms"], ".1f"),
            _fmt(d["ratio"], ".2f") + ("x" if d["ratio"] is not None else ""),
        )
    console.print(table)
    same = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in doc["floor_same_ddl"].items())
    console.print(
        f"floor check: same tables, columns, constraints, indexes, policies, triggers, functions "
        f"and grants as bizosctl's targets ({same or 'nothing measured'}); "
        f"{doc['ddl_statements']} statements per target, sent as one batch"
    )
    per_tier = ", ".join(f"{t.tier} {_fmt(t.ratio, '.2f')}x" for t in tiers)
    console.print(
        f"target: provisioning within {TARGET_RATIO}x the floor per tenant: "
        f"{_verdict(doc['provisioning_target_met'])} ({per_tier})"
    )
    console.print(
        f"CLI start-up, median of {cli.runs}: python -m bizosctl --help {cli.bizosctl_s:.3f} s, "
        f"python -c pass {cli.python_s:.3f} s, difference {cli.overhead_s:.3f} s"
    )
    console.print(
        f"target: under {TARGET_CLI_OVERHEAD_S} s more than bare Python: {_verdict(cli.met)} "
        "(measured with sys.executable -m bizosctl; the pyenv `bizosctl` shim adds its own)"
    )


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--schema", type=int, default=50, metavar="N", help="schema-tier tenants")
    parser.add_argument("--isolated", type=int, default=10, metavar="M", help="isolated tenants")
    parser.add_argument("--fast", action="store_true", help="BIZOS_EMBEDDED_DURABLE=false")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one more schema-tier create_tenant (printed to stderr)",
    )
    args = parser.parse_args(argv)
    for name in ("schema", "isolated"):
        if not 0 <= getattr(args, name) <= 9999:
            parser.error(f"--{name} must be between 0 and 9999")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = make_home(fast=args.fast)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    ctl: Control | None = None
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        log(f"home {home}: initialising")
        init_home(ctl)
        ddl = tenant_ddl_template()
        meta: dict[str, Any] = {
            "home": str(home),
            "durable": ctl.settings.embedded_durable,
            "postgres": server_facts(ctl),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "ddl_statements": ddl.count(";\n\n"),  # Alembic ends each one with a blank line
        }
        floor = Floor(ctl, ddl)
        try:
            counts = {"schema": args.schema, "isolated": args.isolated}
            tiers = [run_tier(ctl, floor, tier, counts[tier], log) for tier in TIERS]
        finally:
            floor.close()
        meta["floor_same_ddl"] = {t.tier: same_ddl(ctl, t.tier, log) for t in tiers if t.count}
        if args.profile:
            log(profile_create(ctl, "schema"))
        log("CLI start-up")
        cli = cli_startup()
    finally:
        cleanup(ctl, home, log)
    doc = report(meta, tiers, cli)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_human(doc, tiers, cli)
    return 0


if __name__ == "__main__":
    sys.exit(main())
