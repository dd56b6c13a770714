"""API benchmarks: the full request path against a bare endpoint, and logins under load.

Run as ``python benchmarks/api.py [--seconds 10] [--rounds 3] [--connections 16] [--workers 1 2]
[--json]``.

A throw-away home (fsync off) with one schema-tier tenant, 200 invoices and an API key.

1. **GET /api/v1/invoices?limit=20**, served by ``bizosctl serve --workers N`` (API-key
   authentication against the catalog, the tenant's route, the rate limit (memory, set high
   enough never to refuse), the scope check, the caller's ``tenant_session`` with RLS, the
   middleware) against a bare FastAPI app on uvicorn with the same number of workers that
   runs the same core query and serialisation for a fixed tenant (``_bare_api.py``). The load
   comes from another process: ``--connections`` keep-alive httpx connections for
   ``--seconds``, after a warm-up; both servers run throughout and take ``--rounds`` turns
   under load in alternating order (the machine's other load hits both alike); requests per
   second and p99 of the median turn, side by side, for each ``--workers`` value, and the
   median of the per-round ratios (target >= 0.8).
2. **Logins** (bcrypt, 12 rounds) from 4 connections while 8 others read invoices: logins
   per second, and the p99 of ``GET /invoices`` with and without the logins running (bcrypt
   runs in the server's threads, so reads must not stall behind it).

A measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cleanup, make_home

HERE = Path(__file__).resolve().parent

LOAD = r"""
import asyncio, json, sys, time
import httpx
url, seconds, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
headers, body = json.loads(sys.argv[4]), sys.argv[5]
lat, codes = [], {}
async def one(client, stop):
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        if body:
            h = {**headers, "content-type": "application/json"}
            r = await client.post(url, content=body, headers=h)
        else:
            r = await client.get(url, headers=headers)
        lat.append(time.perf_counter() - t0)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
async def main():
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        warm = time.monotonic() + min(2.0, seconds / 4)
        await asyncio.gather(*(one(client, warm) for _ in range(conns)))
        lat.clear(); codes.clear()
        t0 = time.monotonic()
        await asyncio.gather(*(one(client, t0 + seconds) for _ in range(conns)))
        elapsed = time.monotonic() - t0
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else None
    doc = {"rps": len(lat) / elapsed, "p50_ms": p(0.5), "p99_ms": p(0.99), "codes": codes}
    print(json.dumps(doc))
asyncio.run(main())
"""


def log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def start(kind: str, workers: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "bizosctl":
        cmd = [
            sys.executable,
            "-m",
            "bizosctl",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        probe = f"http://127.0.0.1:{port}/healthz"
    else:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "_bare_api:create",
            "--app-dir",
            str(HERE),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        probe = f"http://127.0.0.1:{port}/docs"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_up(probe, proc)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def load(
    url: str, seconds: float, conns: int, headers: dict[str, str] | None = None, body: str = ""
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            LOAD,
            url,
            str(seconds),
            str(conns),
            json.dumps(headers or {}),
            body,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests per second."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    doc: dict[str, Any] = json.loads(out)
    return doc


def seed(ctl: Any, slug: str) -> tuple[str, str, str]:
    """A tenant with 200 invoices, an API key and a member with a password."""
    from bizosctl.resources.invoices import (
        CustomerCreate,
        InvoiceCreate,
        ItemCreate,
        create_customer,
        create_invoice,
    )
    from bizosctl.security.apikeys import create_api_key
    from bizosctl.tenancy.members import add_member
    from bizosctl.tenancy.provision import create_tenant
    from bizosctl.tenancy.router import tenant_session

    create_tenant(ctl, slug=slug, name="Bench", tier="schema", region="global")
    tid = ctl.route(slug).tenant_id
    with tenant_session(ctl, slug, actor="bench") as s:
        cust = create_customer(s, tenant_id=tid, data=CustomerCreate(name="PT Bench"))
        for i in range(200):
            item = ItemCreate(description="day", quantity=1, unit_price=1000)
            create_invoice(
                s,
                tenant_id=tid,
                data=InvoiceCreate(customer_id=cust.id, number=f"B-{i:04d}", items=[item]),
            )
        email = f"bench@{slug}.example"
        add_member(
            ctl,
            s,
            tenant_id=tid,
            email=email,
            name="Bench",
            role="Staff",
            password="bench password 1",
        )
    _, key = create_api_key(ctl, tenant=slug, name="bench", scopes=["*"], expires_ms=None)
    return key, email, "bench password 1"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="turns of each server under load")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    home = make_home(
        fast=True,
        env={
            "BIZOS_RATE_LIMIT": "1000000/second",
            "BIZOS_RATE_LIMITS": '{"auth": "1000000/second"}',
        },
    )
    ctl = None
    results: list[dict[str, Any]] = []
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        log(f"home {home}: initialising")
        init_home(ctl)
        slug = "bench-co"
        key, email, password = seed(ctl, slug)
        env = {**os.environ, "BENCH_TENANT": slug}
        auth = {"Authorization": f"Bearer {key}"}
        for workers in args.workers:
            row: dict[str, Any] = {"name": f"GET /invoices, {workers} worker(s)"}
            # Both servers run for the whole measurement and take turns under load, in
            # alternating order: a change in the machine's other load hits both alike.
            servers = {kind: start(kind, workers, env) for kind in ("bare", "bizosctl")}
            paths = {"bizosctl": "/api/v1/invoices?limit=20", "bare": "/invoices?limit=20"}
            runs: dict[str, list[dict[str, Any]]] = {"bare": [], "bizosctl": []}
            ratios: list[float] = []
            try:
                for turn in range(args.rounds):
                    order = ("bare", "bizosctl") if turn % 2 == 0 else ("bizosctl", "bare")
                    for kind in order:
                        url = servers[kind][1]
                        log(f"{kind}, {workers} worker(s), round {turn + 1}: {args.seconds} s")
                        runs[kind].append(
                            result(load(url + paths[kind], args.seconds, args.connections, auth))
                        )
                    ratios.append(runs["bizosctl"][-1]["rps"] / runs["bare"][-1]["rps"])
            finally:
                for proc, _ in servers.values():
                    stop(proc)
            for kind in ("bare", "bizosctl"):
                row[kind] = median_run(runs[kind])
            row["ratios"] = [round(r, 3) for r in ratios]
            row["ratio"] = round(statistics.median(ratios), 3)
            row["target"] = ">= 0.8"
            results.append(row)
        proc, url = start("bizosctl", 1, env)
        try:
            log("logins: GET /invoices alone, then with 4 connections logging in")
            alone = result(load(url + "/api/v1/invoices?limit=20", args.seconds, 8, auth))
            body = json.dumps({"tenant": slug, "email": email, "password": password})
            logins = load(url + "/api/v1/auth/login", args.seconds + 2, 4, body=body)
            time.sleep(1)
            during = result(load(url + "/api/v1/invoices?limit=20", args.seconds, 8, auth))
            login_stats = result(logins)
        finally:
            stop(proc)
        results.append(
            {
                "name": "logins while reading",
                "logins_per_s": round(login_stats["rps"], 1),
                "login_p50_ms": login_stats["p50_ms"],
                "read_p99_ms_alone": alone["p99_ms"],
                "read_p99_ms_during_logins": during["p99_ms"],
                "read_rps_alone": round(alone["rps"], 1),
                "read_rps_during_logins": round(during["rps"], 1),
                "codes": {"logins": login_stats["codes"], "reads": during["codes"]},
            }
        )
    finally:
        cleanup(ctl, home, log)
    if args.json:
        print(json.dumps({"benchmarks": results}, indent=2))
        return 0
    for r in results:
        if "ratio" in r:
            b, o = r["bare"], r["bizosctl"]
            print(
                f"{r['name']}: bizosctl {o['rps']:.0f} req/s (p99 {o['p99_ms']:.1f} ms) vs "
                f"bare {b['rps']:.0f} req/s (p99 {b['p99_ms']:.1f} ms): ratio {r['ratio']} "
                f"(median of {r['ratios']}; target {r['target']}); codes {o['codes']}"
            )
        else:
            print(
                f"{r['name']}: {r['logins_per_s']} logins/s (p50 {r['login_p50_ms']:.0f} ms); "
                f"GET /invoices p99 {r['read_p99_ms_alone']:.1f} ms alone, "
                f"{r['read_p99_ms_during_logins']:.1f} ms during logins "
                f"({r['read_rps_alone']} vs {r['read_rps_during_logins']} req/s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
