"""Digest benchmark: ``digest run --all`` over 1,000 tenants, offline and against a slow model.

Run as ``python benchmarks/digest.py [--tenants 1000] [--small 100] [--latency 0.3]
[--parallel 32] [--json]``.

A throw-away home with one embedded server. The tenants are **shared-tier** tenants (cheap:
one catalog row, a route and a state row each, all in the region's shared database; every
query still goes through RLS with the tenant set per transaction, as in production). Each
tenant gets a little data, written in bulk by the superuser: 2 customers, 6 invoices (one
overdue), 8 payments over the last 8 days, 4 tasks (one overdue).

Phases (each prints its figures; nothing here asserts on timings):

1. **aggregates**: the database time of :func:`bizosctl.digest.figures.collect` (the one
   statement), per tenant, with ``--small`` tenants in the shared tables, then with
   ``--tenants``: p50 and mean, and the ratio (flat = the per-tenant cost does not grow with
   the neighbours' rows; total time grows linearly with the number of tenants).
2. **offline**: every tenant's digest with the offline provider (no model): total and per
   tenant.
3. **model**: a Gemini-like server in another process that answers every request after
   ``--latency`` seconds with a valid three-insight answer. ``serial`` = tenants × one digest's
   time (measured one at a time on 10 tenants); ``bound`` = ceil(tenants / parallel) × the
   slowest of those; target: total within 2 × bound.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MODEL_SERVER, cleanup, connect, make_home

ANSWER = json.dumps(
    {
        "insights": [
            {
                "figure": "revenue",
                "title": "Revenue",
                "detail": "Up on the week.",
                "action": "Keep on.",
            },
            {"figure": "overdue_invoices", "title": "Overdue", "detail": "One.", "action": "Call."},
            {
                "figure": "tasks_overdue",
                "title": "Tasks",
                "detail": "One late.",
                "action": "Re-plan.",
            },
        ]
    }
)

SEED = """
WITH t AS (SELECT tenant_id AS id FROM shared.tenant_state WHERE tenant_id = ANY(%(ids)s)),
c AS (INSERT INTO shared.customers (tenant_id, id, name)
      SELECT t.id, gen_random_uuid(), 'Customer ' || n FROM t, generate_series(1, 2) AS n
      RETURNING tenant_id, id),
i AS (INSERT INTO shared.invoices (tenant_id, id, customer_id, number, status, total,
                                   issued_on, due_on)
      SELECT c.tenant_id, gen_random_uuid(), c.id, 'INV-' || c.id || '-' || n,
             CASE WHEN n = 1 THEN 'sent' ELSE 'paid' END, 1000000 * n,
             %(day)s::date - n * 10,
             %(day)s::date - n * 10 + 30 - CASE WHEN n = 1 THEN 40 ELSE 0 END
      FROM c, generate_series(1, 3) AS n RETURNING tenant_id, id, status)
INSERT INTO shared.transactions (tenant_id, invoice_id, kind, amount, occurred_at)
SELECT i.tenant_id, i.id, 'payment', 250000 * d, %(noon)s::timestamptz - d * interval '1 day'
FROM i, generate_series(0, 1) AS d WHERE i.status = 'paid'
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    par = str(a.parallel)
    home = make_home(
        fast=True,
        env={
            "BIZOS_DIGEST_PARALLEL": par,
            "BIZOS_DIGEST_PER_REGION": par,
            "BIZOS_DIGEST_PER_PROVIDER": par,
        },
    )
    ctl = None
    out: dict[str, Any] = {"tenants": a.tenants, "tier": "shared", "parallel": a.parallel}
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        init_home(ctl)
        day = dt.date(2026, 11, 20)
        make(ctl, 0, a.small, day)
        out["aggregates_small"] = aggregates(ctl, day, a.small)
        make(ctl, a.small, a.tenants, day)
        out["aggregates_large"] = aggregates(ctl, day, a.tenants)
        out["aggregates_growth"] = round(
            out["aggregates_large"]["p50_ms"] / out["aggregates_small"]["p50_ms"], 2
        )
        out["offline"] = offline(ctl, day)
        out["model"] = model(ctl, day + dt.timedelta(days=1), a)
    finally:
        cleanup(ctl, home, log)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    s, l_ = out["aggregates_small"], out["aggregates_large"]
    print(
        f"aggregates (one statement, DB time per tenant): {a.small} tenants p50 "
        f"{s['p50_ms']:.2f} ms mean {s['mean_ms']:.2f} ms; {a.tenants} tenants p50 "
        f"{l_['p50_ms']:.2f} ms mean {l_['mean_ms']:.2f} ms (x{out['aggregates_growth']})"
    )
    o = out["offline"]
    print(
        f"offline: {o['digests']} digests in {o['total_s']:.1f} s ({o['per_tenant_ms']:.1f} ms "
        "a tenant)"
    )
    m = out["model"]
    print(
        f"model ({a.latency * 1000:.0f} ms): total {m['total_s']:.1f} s, serial {m['serial_s']:.1f}"
        f" s, bound {m['bound_s']:.1f} s ({m['batches']} batches x slowest {m['slowest_s']:.3f}"
        f" s): total/bound {m['total_over_bound']:.2f} (target <= 2), serial/total "
        f"{m['speedup']:.1f}x; degraded {m['degraded']}, failed {m['failed']}"
    )


def make(ctl: Any, start: int, end: int, day: dt.date) -> None:
    from bizosctl.tenancy.provision import create_tenant

    t0 = time.perf_counter()
    ids = []
    for n in range(start, end):
        ids.append(
            create_tenant(ctl, slug=f"b{n:05d}", name=f"Bench {n}", tier="shared", region="global")
        )
        if (n + 1) % 100 == 0:
            log(f"  {n + 1} tenants ({time.perf_counter() - t0:.0f} s)")
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    with connect(ctl, "bizos_shared") as conn:
        conn.execute("SET session_replication_role = replica")  # no audit rows for the seed
        conn.execute(SEED, {"ids": ids, "day": day, "noon": noon})
        conn.execute(
            "INSERT INTO shared.projects (tenant_id, name) SELECT tenant_id, 'Work' "
            "FROM shared.tenant_state WHERE tenant_id = ANY(%(ids)s)",
            {"ids": ids},
        )
        conn.execute(
            "INSERT INTO shared.tasks (tenant_id, project_id, title, status, due_on) "
            "SELECT p.tenant_id, p.id, 'Task ' || n, CASE WHEN n = 4 THEN 'done' ELSE 'todo' "
            "END, %(day)s::date + 3 - n * 2 FROM shared.projects AS p, generate_series(1, 4) "
            "AS n WHERE p.tenant_id = ANY(%(ids)s)",
            {"day": day, "ids": ids},
        )
        conn.commit()
        conn.execute("ANALYZE")
    log(f"made tenants {start}..{end - 1} in {time.perf_counter() - t0:.0f} s")


def aggregates(ctl: Any, day: dt.date, n: int) -> dict[str, float]:
    from zoneinfo import ZoneInfo

    from bizosctl.digest.figures import collect
    from bizosctl.tenancy.router import tenant_session

    zone = ZoneInfo("UTC")
    times = []
    for i in range(n):
        with tenant_session(ctl, f"b{i:05d}", actor="bench", read_only=True) as s:
            t0 = time.perf_counter()
            collect(s, day=day, zone=zone)
            times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(statistics.median(times), 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "n": n,
    }


def offline(ctl: Any, day: dt.date) -> dict[str, Any]:
    from bizosctl.ai.gate import Gate
    from bizosctl.digest.run import run_digests, tenant_refs

    refs = tenant_refs(ctl, None)
    gate = Gate(ctl, provider=None)
    t0 = time.perf_counter()
    r = run_digests(ctl, refs, day=day, deliver="card", gate=gate)
    total = time.perf_counter() - t0
    return {
        "digests": len(r.digests),
        "failed": len(r.failed),
        "total_s": round(total, 2),
        "per_tenant_ms": round(total / max(1, len(refs)) * 1000, 2),
    }


def model(ctl: Any, day: dt.date, a: Any) -> dict[str, Any]:
    from bizosctl.ai.gate import Gate
    from bizosctl.config import Settings
    from bizosctl.digest.run import make_digest, run_digests, tenant_refs

    proc = subprocess.Popen(
        [sys.executable, "-c", MODEL_SERVER, ANSWER, str(a.latency), "600", "120"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        settings = Settings(
            ai_provider="gemini",
            gemini_api_key="k",
            gemini_base_url=f"http://127.0.0.1:{port}",
            ai_timeout=10,
            ai_deadline=30,
            ai_breaker_failures=1000,
        )
        gate = Gate(ctl, settings=settings)
        refs = tenant_refs(ctl, None)
        # One untimed call first: the client's connection and the gate's caches.
        make_digest(ctl, refs[-1], day=day - dt.timedelta(days=11), deliver="card", gate=gate)
        one = []
        for ref in refs[:10]:
            t0 = time.perf_counter()
            make_digest(ctl, ref, day=day - dt.timedelta(days=10), deliver="card", gate=gate)
            one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = run_digests(ctl, refs, day=day, deliver="card", gate=gate)
        total = time.perf_counter() - t0
        gate.close()
    finally:
        proc.terminate()
        proc.wait(10)
    n = len(refs)
    batches = math.ceil(n / a.parallel)
    slowest = max(one)
    return {
        "total_s": round(total, 2),
        "serial_s": round(n * statistics.median(one), 2),
        "one_call_s": round(statistics.median(one), 3),
        "slowest_s": round(slowest, 3),
        "batches": batches,
        "bound_s": round(batches * slowest, 2),
        "total_over_bound": round(total / (batches * slowest), 2),
        "speedup": round(n * statistics.median(one) / total, 1),
        "degraded": sum(d.degraded for d in r.digests),
        "failed": len(r.failed),
    }


if __name__ == "__main__":
    main()
