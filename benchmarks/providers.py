"""Cloud provisioning benchmark: isolated tenants on the loopback Neon fake, against the floor.

Run as ``python benchmarks/providers.py [--tenants 20] [--latency 0.2] [--ready 1.0]
[--poll 0.1] [--json]``.

A throw-away ``BIZOS_HOME`` with the home region ``global``, a TCP PostgreSQL for the fake's
projects, and a region ``jkt`` on the fake Neon (``tests/fakes/neon.py``), which answers every
call after a fixed ``--latency`` and finishes a project's operations ``--ready`` seconds after
it was created. Each tenant is ``create_tenant(..., tier="isolated", region="jkt")`` in-process,
one after the other: project, operations polled until finished, login role, database,
migration to head, state rows, the application's login checked.

**floor**: the fake's unavoidable waits per tenant: the create call's latency, the time until
its operations finish, and the latency of the one call that sees them finished, i.e.
``2 x latency + ready``. Everything else (polls that find the project still being made, the
local work on the project's database) is bizosctl's overhead. This is a measurement, not a
test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import cleanup, make_home  # noqa: E402

TARGET_RATIO = 1.3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per API call")
    ap.add_argument("--ready", type=float, default=1.0, help="seconds until a project is ready")
    ap.add_argument("--poll", type=float, default=0.1, help="BIZOS_PROVIDER_POLL_INTERVAL")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from tests.fakes.neon import FakeNeon  # before make_home: it imports no bizosctl module

    home = make_home(fast=True, env={
        "BIZOS_NEON_API_KEY": FakeNeon.token, "BIZOS_NEON_SSLMODE": "disable",
        "BIZOS_PROVIDER_POLL_INTERVAL": str(args.poll),
    })  # fmt: skip
    from bizosctl.catalog.control import get_control
    from bizosctl.db.embedded import EmbeddedCluster
    from bizosctl.db.engines import get_engine
    from bizosctl.providers.cloud import add_cloud_region
    from bizosctl.tenancy.provision import create_tenant
    from bizosctl.tenancy.regions import init_home
    from tests.fakes.base import Backing

    ctl = None
    base = Path(tempfile.mkdtemp(prefix="bzp", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backing_cluster = EmbeddedCluster(base / "byo", port=port, durable=False)
    fake = None
    try:
        backing_cluster.ensure_running()
        from sqlalchemy import text

        with get_engine(backing_cluster.url("postgres"), pooled=False).connect() as c:
            c.execute(text("create role byo_admin login superuser password 'byo-pass-123'"))
            c.commit()
        fake = FakeNeon(Backing(port), latency=args.latency, ready_polls=0, ready_after=args.ready)
        import os

        os.environ["BIZOS_NEON_API_URL"] = fake.base_url
        from bizosctl.config import reset_settings

        reset_settings()
        ctl = get_control()
        log("init...")
        init_home(ctl)
        add_cloud_region(ctl, "jkt", provider="neon", provider_region="aws-ap-southeast-1")
        log("warm-up tenant (untimed)...")
        create_tenant(ctl, slug="bpwarm", name="warm", tier="isolated", region="jkt")
        calls_before = len(fake.calls)
        times = []
        for i in range(args.tenants):
            t0 = time.perf_counter()
            create_tenant(ctl, slug=f"bp{i:03d}", name=f"t{i}", tier="isolated", region="jkt")
            times.append(time.perf_counter() - t0)
            log(f"  tenant {i + 1}/{args.tenants}: {times[-1]:.3f}s")
        calls = len(fake.calls) - calls_before
        by_kind: dict[str, int] = {}
        for method, path in fake.calls[calls_before:]:
            key = f"{method} {'/'.join(p if i < 3 else '{id}' if i == 3 else p for i, p in enumerate(path.strip('/').split('/')))}"  # noqa: E501
            by_kind[key] = by_kind.get(key, 0) + 1
        total = sum(times)
        floor = args.tenants * (2 * args.latency + args.ready)
        result = {
            "tenants": args.tenants, "latency_s": args.latency, "ready_s": args.ready,
            "poll_interval_s": args.poll, "total_s": round(total, 3),
            "floor_s": round(floor, 3), "ratio": round(total / floor, 3),
            "target_ratio": TARGET_RATIO, "calls_per_tenant": round(calls / args.tenants, 2),
            "calls_by_kind_per_tenant": {k: round(v / args.tenants, 2) for k, v in by_kind.items()},
            "per_tenant_s": {"median": round(sorted(times)[len(times) // 2], 3),
                             "max": round(max(times), 3)},
        }  # fmt: skip
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            ms = args.latency * 1000
            print(f"{args.tenants} isolated tenants on the Neon fake ({ms:.0f} ms a call, "
                  f"ready after {args.ready:g}s)")  # fmt: skip
            print(f"  bizosctl  {total:8.2f}s")
            print(f"  floor     {floor:8.2f}s  (2 x latency + ready, per tenant)")
            print(f"  ratio     {total / floor:8.2f}x  (target <= {TARGET_RATIO}x)")
            print(f"  API calls per tenant: {calls / args.tenants:.2f}")
            for k, v in sorted(by_kind.items()):
                print(f"    {v / args.tenants:5.2f}  {k}")
        return 0
    finally:
        if fake is not None:
            fake.stop()
        cleanup(ctl, home, log)
        backing_cluster.stop(mode="immediate")
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
