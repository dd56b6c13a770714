"""RLS read benchmark: the policy of 0002, ``tenant_id = (SELECT bizos_tenant())`` (NULL for a
suspended tenant), against the policy of 0001, ``tenant_id = NULLIF(current_setting(...))``.

Run as ``python benchmarks/rls_read.py [--rows 100000] [--rounds 15] [--json]``.

A throw-away home with one embedded server; two shared-tier tenants with ``--rows`` tasks each
(loaded as the superuser, triggers off, then ``VACUUM (ANALYZE)``). As the application login
role in tenant A's context, each round reads all of A's tasks twice: ``SELECT * FROM tasks``
fetched to the client (wall time) and ``SELECT count(*) FROM tasks`` (server time from
``EXPLAIN (ANALYZE, TIMING OFF)``). Rounds alternate the two policies on ``shared.tasks``
(swapped by the superuser between rounds); the medians are reported. A measurement, not a
test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cleanup, connect, conninfo, make_home

OLD = "NULLIF(current_setting('bizos.tenant_id', true), '')::uuid"
NEW = "(SELECT shared.bizos_tenant())"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    home = make_home(fast=True)
    import psycopg

    from bizosctl.catalog.control import get_control
    from bizosctl.tenancy.provision import create_tenant
    from bizosctl.tenancy.regions import init_home

    ctl = get_control()
    try:
        init_home(ctl)
        for slug in ("rls-a", "rls-b"):
            create_tenant(ctl, slug=slug, name=slug, tier="shared", region="global")
        a = ctl.route("rls-a")
        with connect(ctl, a.database) as conn:
            conn.execute("SET session_replication_role = replica")
            for slug in ("rls-a", "rls-b"):
                tid = ctl.route(slug).tenant_id
                conn.execute(
                    "INSERT INTO shared.projects (tenant_id, id, name) VALUES (%s, %s, 'p')",
                    (tid, tid),
                )
                conn.execute(
                    "INSERT INTO shared.tasks (tenant_id, project_id, title, position) "
                    "SELECT %s, %s, 'task ' || g, g FROM generate_series(1, %s) g",
                    (tid, tid, args.rows),
                )
            conn.commit()
        with connect(ctl, a.database, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) shared.tasks")
        url = ctl.server(a.server).login_url(a.database, a.role, a.password)
        app = psycopg.connect(**conninfo(url))
        admin = connect(ctl, a.database, autocommit=True)
        times: dict[str, dict[str, list[float]]] = {
            k: {"fetch_ms": [], "count_ms": []} for k in ("0001", "0002")
        }
        for i in range(args.rounds * 2):
            which = "0001" if i % 2 == 0 else "0002"
            expr = OLD if which == "0001" else NEW
            admin.execute(
                "BEGIN; DROP POLICY tenant_isolation ON shared.tasks; "
                f"CREATE POLICY tenant_isolation ON shared.tasks USING (tenant_id = {expr}) "
                f"WITH CHECK (tenant_id = {expr}); COMMIT"
            )
            with app.transaction():
                app.execute("SELECT set_config('bizos.tenant_id', %s, true)", (str(a.tenant_id),))
                t0 = time.perf_counter()
                rows = app.execute("SELECT * FROM shared.tasks").fetchall()
                fetch = (time.perf_counter() - t0) * 1000
                assert len(rows) == args.rows
                plan = app.execute(
                    "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT count(*) FROM shared.tasks"
                ).fetchone()
                assert plan is not None
            if i >= 2:  # the first round of each is a warm-up
                times[which]["fetch_ms"].append(fetch)
                times[which]["count_ms"].append(plan[0][0]["Execution Time"])
        report = {
            k: {m: round(statistics.median(v), 2) for m, v in d.items()} for k, d in times.items()
        }
        report["ratio_0002_to_0001"] = {
            m: round(report["0002"][m] / report["0001"][m], 3) for m in ("fetch_ms", "count_ms")
        }
        app.close()
        admin.close()
        if args.json:
            print(json.dumps(report))
        else:
            for k, v in report.items():
                print(k, v)
    finally:
        cleanup(ctl, home, lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
    main()
