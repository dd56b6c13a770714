"""Job benchmarks: the overhead of running operations through ``bizosctl worker``.

Run as ``python benchmarks/jobs.py [--jobs 300] [--rounds 3] [--concurrency 1] [--one-target]
[--no-vacuum] [--json]``.

A throw-away home with one embedded server (fsync off). Each round, interleaved:

* **bizosctl**: ``--jobs`` no-op operations (``ops.ping`` with ``seconds=0``), each recorded
  and queued with ``enqueue_operation`` in one catalog transaction, run by a
  ``bizosctl worker --concurrency C`` child process: one statement fetches the job and claims
  its operation (reads it, takes its advisory lock, marks it running and records its first
  step: ``jobs/fetch.py``), ``runners.resume`` runs it, and one statement writes its last
  step, closes it and finishes its job; the lock is released with the connection's next
  fetch.
* **inline** (for reading the ratio): the same pings resumed in a loop in-process, no queue:
  the operation engine's own cost, so ``queue_ratio`` (bizosctl over inline) is what the
  job machinery adds.
* **bare**: as many no-op procrastinate tasks on the same database, deferred in one batch and
  run by an in-process procrastinate worker (procrastinate's own connector) with the same
  concurrency.

One untimed warm-up of 50 jobs on each side comes first. Both are timed the same way, from
procrastinate's own events: from the first job's ``started`` to the last job's end, so
process start-up is not counted on either side. The medians of the rounds are reported with
their ratio (operations per second over bare jobs per second; the target is at least 0.8).
A measurement, not a test.

Each ping has a target of its own, as the operations of a burst have (one per tenant: an
exclusive kind never has two open operations on one target), so each job's procrastinate
lock is its own. ``--one-target`` puts every ping on ``ping``: one lock for the whole burst,
and procrastinate's fetch then checks the waiting lock-mates of the job it takes, which
grows with the burst (that is procrastinate's cost of a lock, apart from the engine's).

Every phase starts on vacuumed tables (:func:`vacuum`): rounds run seconds apart, far faster
than autovacuum wakes, and the dead row versions of the earlier rounds' jobs would slow the
later ones' fetches, so the result would depend on ``--rounds``. ``--no-vacuum`` shows it.

The webhook benchmarks (delivery throughput, event latency) are ``benchmarks/webhooks.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Log, cleanup, make_home

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control


def log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def span(ctl: Control, job_ids: list[int]) -> float:
    """Seconds from the first job's start to the last job's end (procrastinate's events)."""
    from sqlalchemy import text

    with ctl.catalog() as s:
        first, last, ended = s.execute(
            text(
                "SELECT min(at) FILTER (WHERE type = 'started'), "
                "max(at) FILTER (WHERE type IN ('succeeded', 'failed')), "
                "count(*) FILTER (WHERE type IN ('succeeded', 'failed')) "
                "FROM procrastinate_events WHERE job_id = ANY(:ids)"
            ),
            {"ids": job_ids},
        ).one()
    assert ended == len(job_ids), f"{ended} of {len(job_ids)} jobs ended"
    return float((last - first).total_seconds())


def jobs_status(ctl: Control, job_ids: list[int]) -> dict[str, int]:
    from sqlalchemy import text

    with ctl.catalog() as s:
        rows = s.execute(
            text(
                "SELECT status::text, count(*) FROM procrastinate_jobs WHERE id = ANY(:ids) "
                "GROUP BY 1"
            ),
            {"ids": job_ids},
        ).all()
    return {k: v for k, v in rows}


def vacuum(ctl: Control) -> None:
    """VACUUM and ANALYZE the tables both sides write, so that each phase starts alike.
    ``INDEX_CLEANUP ON``: a plain VACUUM skips the indexes when few heap pages have dead rows
    (under 2%, as in a table that grows round after round), leaving the dead entries a
    lock-mate probe walks."""
    from _common import connect

    with connect(ctl, "bizos_control", autocommit=True) as conn:
        conn.execute(
            "VACUUM (ANALYZE, INDEX_CLEANUP ON) procrastinate_jobs, procrastinate_events, "
            "operations, operation_steps"
        )


def run_bizosctl(
    ctl: Control, n: int, concurrency: int, queue: str, *, one_target: bool = False
) -> float:
    from bizosctl.catalog.operations import OperationStatus
    from bizosctl.jobs.queue import enqueue_operation
    from bizosctl.runners import start_ping

    with ctl.catalog() as s:
        job_ids = []
        for i in range(n):
            target = "ping" if one_target else f"{queue}-{i}"
            op_id = start_ping(s, seconds=0.0, status=OperationStatus.QUEUED, target=target)
            job_ids.append(
                enqueue_operation(s, op_id=op_id, kind="ops.ping", target=target, queue=queue)
            )
    worker = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "worker", "--queue", queue, "-c", str(concurrency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = jobs_status(ctl, job_ids)
            if done.get("succeeded", 0) + done.get("failed", 0) == n:
                break
            time.sleep(0.2)
        if done.get("failed"):
            raise SystemExit(f"{done['failed']} operation job(s) failed")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    return n / span(ctl, job_ids)


def run_bare(ctl: Control, n: int, concurrency: int, queue: str) -> float:
    import procrastinate

    from bizosctl.jobs.app import conninfo

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(kwargs=conninfo(ctl)))

    @app.task(name="bench.noop", queue=queue)
    def noop() -> None:
        return None

    with app.open():
        job_ids = noop.batch_defer(*({} for _ in range(n)))
    app.run_worker(
        queues=[queue], wait=False, concurrency=concurrency, install_signal_handlers=False
    )
    done = jobs_status(ctl, job_ids)
    assert done.get("succeeded") == n, done
    return n / span(ctl, job_ids)


def run_inline(ctl: Control, n: int) -> float:
    """The operations alone: ``runners.resume`` of ``n`` queued pings in a loop, in-process
    (no queue, no worker): what the operation engine costs by itself."""
    from bizosctl.catalog.operations import OperationStatus
    from bizosctl.runners import resume, start_ping

    with ctl.catalog() as s:
        ids = [start_ping(s, seconds=0.0, status=OperationStatus.QUEUED) for _ in range(n)]
    t0 = time.perf_counter()
    for op_id in ids:
        resume(ctl, op_id)
    return n / (time.perf_counter() - t0)


def job_overhead(ctl: Control, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    ours: list[float] = []
    bare: list[float] = []
    inline: list[float] = []

    def phase(what: str) -> None:
        if args.vacuum:
            vacuum(ctl)
        log(what)

    # not timed: the first run of each side in this process (imports, the first connections
    # and their plans) would otherwise count in round 1 only
    log("warm-up: 50 jobs of each side")
    run_bare(ctl, 50, args.concurrency, "bench-bare-warm")
    run_bizosctl(ctl, 50, args.concurrency, "bench-ops-warm")
    for i in range(args.rounds):
        phase(f"round {i + 1}/{args.rounds}: bare procrastinate, {args.jobs} no-op jobs")
        bare.append(run_bare(ctl, args.jobs, args.concurrency, f"bench-bare-{i}"))
        phase(f"round {i + 1}/{args.rounds}: bizosctl worker, {args.jobs} ops.ping operations")
        ours.append(
            run_bizosctl(
                ctl, args.jobs, args.concurrency, f"bench-ops-{i}", one_target=args.one_target
            )
        )
        phase(f"round {i + 1}/{args.rounds}: the same operations inline (runners.resume loop)")
        inline.append(run_inline(ctl, args.jobs))
    b, o, n = statistics.median(bare), statistics.median(ours), statistics.median(inline)
    return {
        "name": "job overhead",
        "unit": "jobs/s",
        "bizosctl": round(o, 1),
        "bare": round(b, 1),
        "ratio": round(o / b, 3),
        "target": ">= 0.8",
        "rounds": {
            "bizosctl": [round(x, 1) for x in ours],
            "bare": [round(x, 1) for x in bare],
        },
        "one_target": args.one_target,
        # what the queue adds to the operations themselves: worker rate over inline rate
        "inline_ops_per_s": round(n, 1),
        "queue_ratio": round(o / n, 3),
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "vacuumed": args.vacuum,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--one-target",
        action="store_true",
        help="every ping on the target 'ping' (one procrastinate lock for the whole burst)",
    )
    ap.add_argument(
        "--no-vacuum",
        dest="vacuum",
        action="store_false",
        help="do not vacuum the job and operation tables before each phase",
    )
    args = ap.parse_args()
    home = make_home(fast=True)
    ctl: Control | None = None
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        log(f"home {home}: initialising")
        init_home(ctl)
        results = [job_overhead(ctl, args, log)]
    finally:
        cleanup(ctl, home, log)
    if args.json:
        print(json.dumps({"benchmarks": results}, indent=2))
    else:
        print(f"{'benchmark':<16}{'bizosctl':>10}{'bare':>10}  unit     {'ratio':>6}  target")
        for r in results:
            print(
                f"{r['name']:<16}{r['bizosctl']:>10}{r['bare']:>10}  {r['unit']:<8} "
                f"{r['ratio']:>6}  {r['target']}"
            )
            if "inline_ops_per_s" in r:
                print(
                    f"  operations inline (no queue): {r['inline_ops_per_s']} ops/s; "
                    f"worker / inline = {r['queue_ratio']}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
