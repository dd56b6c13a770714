"""Webhook benchmarks: delivery throughput, and event latency with many idle targets.

Run as ``python benchmarks/webhooks.py [--events 2000] [--idle 1000] [--idle-tier isolated]
[--busy-seconds 20] [--rate 20] [--json]``.

A throw-away home with one embedded server; the receiver is a separate process (an HTTP/1.1
``ThreadingHTTPServer`` on 127.0.0.1 answering 200) that logs the arrival time of every
``webhook-id``.

1. **Throughput.** ``--events`` events of one tenant are emitted and relayed (untimed); then
   ``deliver_due`` sends them all (claim under a lease, sign with the endpoint's secret, POST to
   the pinned address, record each attempt): deliveries per second. Against it, a bare loop
   that signs the same payloads (Standard Webhooks HMAC) and POSTs them with one keep-alive
   ``httpx.Client``, recording nothing. Ratio = bizosctl / bare (target >= 0.5); also with
   ``concurrency=1`` (one request at a time, like the bare loop).
2. **Latency.** ``--idle`` tenants (``--idle-tier``) that emit nothing plus one busy tenant
   that emits ``--rate`` events per second for ``--busy-seconds``; the relay loop runs with the
   default settings (NOTIFY, adaptive polling, bounded connections) and hands each new delivery
   to a pool of 8 threads calling ``attempt`` (what a worker's ``deliver`` job does). After every
   target was polled once and 3 s of warm-up events (the busy tenant has had events lately, so
   it has a listener), latency = arrival at the receiver - the emitting transaction's commit;
   p50 and p99 (target p99 < 1 s).

A measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cleanup, make_home

RECEIVER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
log = open(sys.argv[1], "a", buffering=1)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive: no 40 ms delayed-ACK stall per response
    wbufsize = -1  # the status line, headers and body leave in one write
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        log.write(f"{self.headers['webhook-id']} {time.time()}\n")
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
s.daemon_threads = True
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def start_receiver(logfile: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(logfile)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/hooks"


def arrivals(logfile: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in logfile.read_text().splitlines():
        msg_id, at = line.split()
        out.setdefault(msg_id, float(at))
    return out


def wait_for(condition: Any, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s")
        time.sleep(0.1)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--idle-tier", default="isolated", choices=["shared", "schema", "isolated"])
    ap.add_argument("--busy-seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    home = make_home(fast=True)
    import httpx

    from bizosctl.catalog.control import get_control
    from bizosctl.db.engines import dispose_all
    from bizosctl.notify.delivery import attempt, deliver_due
    from bizosctl.notify.outbox import emit_event
    from bizosctl.notify.relay import Relay
    from bizosctl.notify.webhooks import add_endpoint, signed_headers
    from bizosctl.tenancy.provision import create_tenant
    from bizosctl.tenancy.regions import init_home
    from bizosctl.tenancy.router import tenant_session

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ctl = get_control()
    tmp = Path(tempfile.mkdtemp(prefix="bzw-"))
    receiver = None
    report: dict[str, Any] = {}
    try:
        init_home(ctl)
        receiver, url = start_receiver(tmp / "arrivals.log")

        # -- 1. throughput ---------------------------------------------------------------------
        create_tenant(ctl, slug="wh-tput", name="tput", tier="shared", region="global")
        _ep, secret = add_endpoint(ctl, tenant="wh-tput", url=url, events=["invoice.paid"])
        for start in range(0, args.events, 500):
            with tenant_session(ctl, "wh-tput", actor="bench") as s:
                for i in range(start, min(start + 500, args.events)):
                    emit_event(s, "invoice.paid", {"invoice": f"inv_{i}", "total": "110.00"})
        relay = Relay(ctl)
        relay.sweep()
        relay.close()
        from sqlalchemy import text

        with ctl.catalog() as s:
            rows = s.execute(text("SELECT event_id, payload FROM webhook_deliveries")).all()
        log(f"throughput: {len(rows)} deliveries")
        t0 = time.perf_counter()
        sent = 0
        while n := deliver_due(ctl, limit=200):
            sent += n
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with httpx.Client(timeout=15.0, follow_redirects=False) as client:
            for msg_id, payload in rows:
                body = payload.encode()
                headers = signed_headers(
                    [secret], msg_id="b" + msg_id, timestamp=int(time.time()), payload=body
                )
                client.post(
                    url, content=body, headers={**headers, "content-type": "application/json"}
                )
        bare_s = time.perf_counter() - t0
        # The same deliveries once more, one request at a time (as the bare loop sends).
        with ctl.catalog() as s:
            s.execute(
                text("UPDATE webhook_deliveries SET status = 'pending', attempts = 0, "
                     "next_attempt_at = now()")
            )  # fmt: skip
        t0 = time.perf_counter()
        while deliver_due(ctl, limit=200, concurrency=1):
            pass
        serial_s = time.perf_counter() - t0
        ours_rate, bare_rate = sent / ours_s, len(rows) / bare_s
        report["throughput"] = {
            "deliveries": sent,
            "bizosctl_per_s": round(ours_rate, 1),
            "bizosctl_serial_per_s": round(sent / serial_s, 1),
            "bare_httpx_per_s": round(bare_rate, 1),
            "ratio": round(ours_rate / bare_rate, 3),
            "ratio_serial": round(sent / serial_s / bare_rate, 3),
        }
        log(f"  {report['throughput']}")

        # -- 2. latency with idle targets --------------------------------------------------------
        t0 = time.perf_counter()
        for i in range(args.idle):
            create_tenant(
                ctl, slug=f"idle{i:05d}", name="idle", tier=args.idle_tier, region="global"
            )
            if i % 25 == 24:
                # Each isolated tenant's pooled engine keeps connections open: one process
                # making hundreds of them would run the server out of connection slots.
                dispose_all()
            if i % 100 == 99:
                log(f"  {i + 1} idle tenants ({time.perf_counter() - t0:.0f} s)")
        create_tenant(ctl, slug="wh-busy", name="busy", tier="isolated", region="global")
        add_endpoint(ctl, tenant="wh-busy", url=url, events=["invoice.paid"])
        pool = ThreadPoolExecutor(max_workers=8)
        relay = Relay(ctl, on_deliveries=lambda ids: [pool.submit(attempt, ctl, i) for i in ids])
        stop = threading.Event()
        thread = threading.Thread(target=relay.run, kwargs={"stop": stop}, daemon=True)
        thread.start()
        wait_for(lambda: relay.stats.polls >= args.idle + 2, timeout=600)  # every target once

        def emit_for(seconds: float) -> dict[str, float]:
            """Events of the busy tenant at ``--rate``: id -> commit time."""
            out: dict[str, float] = {}
            end = time.monotonic() + seconds
            next_at = time.monotonic()
            while time.monotonic() < end:
                with tenant_session(ctl, "wh-busy", actor="bench") as s:
                    event = emit_event(s, "invoice.paid", {"invoice": "busy"})
                out[event] = time.time()
                next_at += 1.0 / args.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            return out

        # Warm-up (not measured): "busy" means it has had events lately, so it has a listener.
        warm = emit_for(3.0)
        wait_for(lambda: set(warm) <= set(arrivals(tmp / "arrivals.log")), timeout=60)
        committed = emit_for(args.busy_seconds)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = arrivals(tmp / "arrivals.log")
            if all(e in got for e in committed):
                break
            time.sleep(0.2)
        stop.set()
        thread.join(10)
        pool.shutdown(wait=True)
        got = arrivals(tmp / "arrivals.log")
        lat = [got[e] - at for e, at in committed.items() if e in got]
        report["latency"] = {
            "idle_targets": args.idle,
            "idle_tier": args.idle_tier,
            "events": len(committed),
            "delivered": len(lat),
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1),
            "relay_polls": relay.stats.polls,
            "relay_errors": relay.stats.errors,
        }
        log(f"  {report['latency']}")
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        cleanup(ctl, home, log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        t, lt = report["throughput"], report["latency"]
        print(
            f"throughput: bizosctl {t['bizosctl_per_s']}/s vs bare httpx {t['bare_httpx_per_s']}/s "
            f"-> ratio {t['ratio']} (target >= 0.5); one request at a time "
            f"{t['bizosctl_serial_per_s']}/s -> {t['ratio_serial']}"
        )
        print(
            f"latency with {lt['idle_targets']} idle {lt['idle_tier']} targets: "
            f"p50 {lt['p50_ms']} ms, p99 {lt['p99_ms']} ms (target p99 < 1000 ms)"
        )


if __name__ == "__main__":
    main()
