"""GDPR benchmark: ``find``, ``export`` and ``delete`` of one person as the fleet grows, against
the naive approach (connect to every tenant and look), and the export's memory.

Run as ``python benchmarks/gdpr.py [--fleets 100,1000,3000] [--rows 1000,100000] [--runs 3]
[--json]``.

Set-up, in a throw-away ``BIZOS_HOME`` with two embedded regions (``global``, ``id``):

* **the person's tenants**: 5 real shared-tier tenants (``create_tenant``: catalog, route,
  migrated ``tenant_state``), 3 in ``global`` and 2 in ``id``; in each the person is a member
  (``add_member``, so the routing key is written by the product's own write path) among 20
  others, with notifications.
* **the rest of the fleet**, made cheaply: shared-tier tenants as catalog rows (``tenants`` and
  a ``routes`` row pointing at the region's shared database, like a real shared tenant's),
  alternating regions, each with 3 members in the shared database (random blind indexes,
  placeholder ciphertexts; COPY-free bulk INSERT as the superuser with triggers off) and 3
  routing keys in ``gdpr_subjects``. Provisioning 3,000 tenants fully would take hours here and
  adds nothing a lookup reads: ``find`` reads the routing keys, then only the person's tenants.

Timed, per fleet size (median of ``--runs``):

* **find**: ``find_person`` (routing keys, then the 5 tenants by blind index).
* **naive**: for every live tenant in the catalog, ``tenant_session(read_only=True)`` and the
  same blind-index query on ``members`` and ``customers``: what a tool without routing keys does.
* **export**: ``export_person`` to a new zip (deleted after).
* **delete**: ``erase_person`` with its verification pass; the person is added back to the 5
  tenants (untimed) before each run.

Memory: a person with ``--rows`` notifications in one tenant (1,000 vs 100,000), exported; the
peak of Python allocations during ``export_person`` (``tracemalloc``) and the ratio.

Targets: find/export/delete at 3,000 tenants within 1.5x of 100; export peak at 100,000 rows
within 1.5x of 1,000. This is a measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cleanup, make_home

PERSON = "siti.rahma@example.org"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(fn: Callable[[], Any], runs: int, before: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleets", default="100,1000,3000")
    ap.add_argument("--rows", default="1000,100000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    fleets = [int(x) for x in args.fleets.split(",")]
    home = make_home(fast=True)
    from bizosctl.catalog.control import get_control

    ctl = get_control()
    try:
        report = run(ctl, fleets, [int(x) for x in args.rows.split(",")], args.runs)
    finally:
        cleanup(ctl, home, log)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'tenants':>8} {'find s':>9} {'naive s':>9} {'export s':>9} {'delete s':>9}")
    for row in report["fleets"]:
        print(
            f"{row['tenants']:>8} {row['find']:>9.4f} {row['naive']:>9.4f} "
            f"{row['export']:>9.4f} {row['delete']:>9.4f}"
        )
    for k, v in report["ratios"].items():
        print(f"ratio {k}: {v:.2f}")
    for m in report["memory"]:
        print(f"export of {m['rows']} rows: {m['seconds']:.2f} s, peak {m['peak_kib']} KiB")
    print(f"export peak ratio: {report['memory_ratio']:.2f}")


def run(ctl: Any, fleets: list[int], rows: list[int], runs: int) -> dict[str, Any]:
    from sqlalchemy import text

    from bizosctl.db.engines import get_engine
    from bizosctl.privacy.erase import erase_person
    from bizosctl.privacy.export import export_person
    from bizosctl.privacy.find import find_person
    from bizosctl.security.fields import blind_indexes
    from bizosctl.tenancy.members import add_member, find_by_email
    from bizosctl.tenancy.provision import create_tenant
    from bizosctl.tenancy.regions import ensure_region, init_home
    from bizosctl.tenancy.router import tenant_session

    init_home(ctl)
    ensure_region(ctl, "id")
    log("set-up: the person's 5 tenants")
    mine = []
    for i, region in enumerate(["global", "global", "global", "id", "id"]):
        slug = f"person-{i}"
        create_tenant(ctl, slug=slug, name=slug, tier="shared", region=region)
        mine.append(slug)
        route = ctl.route(slug)
        with tenant_session(ctl, slug, actor="bench") as s:
            for n in range(20):
                add_member(
                    ctl, s, tenant_id=route.tenant_id, email=f"m{n}@{slug}.example", name=f"M {n}"
                )
            if i == 0:
                add_member(
                    ctl,
                    s,
                    tenant_id=route.tenant_id,
                    email="owner@x.example",
                    name="O",
                    role="Admin",
                )

    def add_person() -> None:
        for slug in mine:
            route = ctl.route(slug)
            with tenant_session(ctl, slug, actor="bench") as s:
                if find_by_email(ctl, s, PERSON) is not None:
                    continue
                mid = add_member(ctl, s, tenant_id=route.tenant_id, email=PERSON, name="Siti Rahma")
                s.execute(
                    text(
                        "INSERT INTO notifications (tenant_id, member_id, kind, title, body) "
                        "SELECT :t, :m, 'info', 'n ' || g, 'hello' FROM generate_series(1, 20) g"
                    ),
                    {"t": route.tenant_id, "m": mid},
                )

    add_person()
    routes = {}
    with ctl.catalog_engine.connect() as conn:
        for region in ("global", "id"):
            slug = "person-0" if region == "global" else "person-3"
            routes[region] = conn.execute(
                text("SELECT server, database, schema, role FROM routes r JOIN tenants t "
                     "ON t.id = r.tenant_id WHERE t.slug = :s"),
                {"s": slug},
            ).one()  # fmt: skip
    made = len(mine)
    out: dict[str, Any] = {"fleets": []}
    for size in fleets:
        log(f"fleet of {size}: adding {size - made} catalog-only shared tenants")
        batch = []
        for i in range(made, size):
            region = "global" if i % 2 else "id"
            batch.append((uuid.uuid4(), f"fill-{i}", region))
        for region in ("global", "id"):
            these = [b for b in batch if b[2] == region]
            if not these:
                continue
            server, database, schema, role = routes[region]
            with ctl.catalog_engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO tenants (id, slug, name, tier, region, status) "
                         "VALUES (:id, :slug, :slug, 'shared', :region, 'active')"),
                    [{"id": t, "slug": s, "region": r} for t, s, r in these],
                )  # fmt: skip
                conn.execute(
                    text("INSERT INTO routes (tenant_id, server, database, schema, role) "
                         "VALUES (:id, :server, :db, :schema, :role)"),
                    [{"id": t, "server": server, "db": database, "schema": schema, "role": role}
                     for t, _, _ in these],
                )  # fmt: skip
                conn.execute(
                    text("INSERT INTO gdpr_subjects (subject_ref, tenant_id) VALUES (:r, :t)"),
                    [{"r": f"g1:{uuid.uuid4().hex}", "t": t}
                     for t, _, _ in these for _ in range(3)],
                )  # fmt: skip
            handle = ctl.server(server)
            with get_engine(handle.admin_url(database)).begin() as conn:
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(
                    text(f'INSERT INTO "{schema}".tenant_state (tenant_id, slug) VALUES (:t, :s)'),
                    [{"t": t, "s": s} for t, s, _ in these],
                )
                conn.execute(
                    text(f'INSERT INTO "{schema}".members (tenant_id, email_enc, email_bidx, '
                         "name_enc) VALUES (:t, 'bz1.1.x', :b, 'bz1.1.x')"),
                    [{"t": t, "b": f"1:{uuid.uuid4().hex}"} for t, _, _ in these for _ in range(3)],
                )  # fmt: skip
        made = size
        with ctl.catalog_engine.connect() as conn:
            conn.execute(text("ANALYZE"))
        bidx = blind_indexes(ctl.keyring, PERSON)

        def naive(bidx: list[str] = bidx) -> int:
            hits = 0
            with ctl.catalog_engine.connect() as conn:
                slugs = conn.execute(
                    text("SELECT slug FROM tenants WHERE status = 'active'")
                ).scalars().all()  # fmt: skip
            for slug in slugs:
                with tenant_session(ctl, slug, actor="naive", read_only=True) as s:
                    hits += s.execute(
                        text("SELECT (SELECT count(*) FROM members WHERE email_bidx = ANY(:b)) "
                             "+ (SELECT count(*) FROM customers WHERE email_bidx = ANY(:b))"),
                        {"b": bidx},
                    ).scalar_one()  # fmt: skip
            return hits

        def export() -> None:
            with tempfile.TemporaryDirectory() as d:
                export_person(ctl, PERSON, out=Path(d) / "x.zip", actor="bench")

        def delete() -> None:
            erase_person(ctl, PERSON, actor="bench", transfer_to=None)

        found = find_person(ctl, PERSON, actor="bench")
        assert len(found.tenants) == 5, found
        row = {
            "tenants": size,
            "find": median(lambda: find_person(ctl, PERSON, actor="bench"), runs),
            "naive": median(naive, 1),
            "export": median(export, runs),
        }
        row["delete"] = median(delete, runs, before=add_person) if runs else 0.0
        add_person()
        log(f"  {row}")
        out["fleets"].append(row)
    first, last = out["fleets"][0], out["fleets"][-1]
    out["ratios"] = {
        f"{k} {last['tenants']} vs {first['tenants']}": last[k] / first[k]
        for k in ("find", "export", "delete", "naive")
    }
    out["ratios"][f"naive vs find at {last['tenants']}"] = last["naive"] / last["find"]
    out["memory"] = []
    slug = mine[1]
    route = ctl.route(slug)
    for n in rows:
        log(f"memory: the person with {n} notifications")
        with tenant_session(ctl, slug, actor="bench") as s:
            mid = s.execute(
                text("SELECT id FROM members WHERE email_bidx = ANY(:b)"), {"b": bidx}
            ).scalar_one()
            s.execute(text("DELETE FROM notifications WHERE member_id = :m"), {"m": mid})
            s.execute(
                text(
                    "INSERT INTO notifications (tenant_id, member_id, kind, title, body) "
                    "SELECT :t, :m, 'info', 'notification ' || g, repeat('x', 200) "
                    "FROM generate_series(1, :n) g"
                ),
                {"t": route.tenant_id, "m": mid, "n": n},
            )
        with tempfile.TemporaryDirectory() as d:
            if n == rows[0]:  # imports and caches: once
                export_person(ctl, PERSON, out=Path(d) / "warm.zip", tenant=slug, actor="bench")
            tracemalloc.start()
            t = time.perf_counter()
            export_person(ctl, PERSON, out=Path(d) / "x.zip", tenant=slug, actor="bench")
            seconds = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        out["memory"].append({"rows": n, "seconds": seconds, "peak_kib": peak // 1024})
    out["memory_ratio"] = out["memory"][-1]["peak_kib"] / max(1, out["memory"][0]["peak_kib"])
    return out


if __name__ == "__main__":
    main()
