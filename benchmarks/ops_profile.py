"""Catalog round trips of one no-op operation (``ops.ping``), statement by statement.

Run as ``python benchmarks/ops_profile.py [--ops 20] [--show 1]``.

A throw-away home (fsync off); ``--ops`` pings are recorded ``queued`` (as ``--background``
records them) and resumed in-process with ``runners.resume``, as a worker's job does. Every
catalog connection the process opens is traced by libpq itself (``PQtrace``), so the count
is what went over the wire, pings at checkout, COMMIT and ROLLBACK included: a round trip is
one frontend ``Query`` (simple protocol) or ``Sync`` (the end of an extended-protocol
exchange). It prints the round trips per operation (the mean over ``--ops``, after one
untimed warm-up) and lists the statements of the first ``--show`` operations. A measurement,
not a test; ``benchmarks/jobs.py`` measures the rate through a worker.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cleanup, make_home

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control


def log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Recorder:
    """Every message psycopg sends that waits for an answer, in order, from every connection
    of this process: a statement (simple or extended protocol, prepared or not), a
    ``PREPARE`` of one, and the ``BEGIN``/``COMMIT``/``ROLLBACK`` psycopg sends by itself.
    SQLAlchemy's ping at checkout is a statement too. psycopg's own functions are wrapped
    (this script only): what is counted is what went to the server. What is sent in one
    psycopg pipeline waits for the server once: it is one entry, ``PIPELINE: a | b``."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.on = False
        self.group: list[str] | None = None  # the statements of the open pipeline

    def install(self) -> None:
        from psycopg import _connection_base, _cursor_base

        conn_cls = _connection_base.BaseConnection
        cur_cls = _cursor_base.BaseCursor
        recorder = self

        def wrap(cls: Any, name: str, label: Any) -> None:
            original = getattr(cls, name)

            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                if recorder.on:
                    into = recorder.sent if recorder.group is None else recorder.group
                    into.append(label(args))
                return original(self, *args, **kwargs)

            setattr(cls, name, wrapper)

        import psycopg

        pipeline = psycopg.Connection.pipeline

        @contextlib.contextmanager
        def grouped(self: Any) -> Iterator[Any]:
            if not recorder.on or recorder.group is not None:
                with pipeline(self) as p:
                    yield p
                return
            recorder.group = []
            try:
                with pipeline(self) as p:
                    yield p
            finally:
                group, recorder.group = recorder.group, None
                recorder.sent.append("PIPELINE: " + " | ".join(group))

        psycopg.Connection.pipeline = grouped  # type: ignore[method-assign,assignment]

        def sql(q: Any) -> str:
            q = getattr(q, "query", q)
            if isinstance(q, bytes):
                q = q.decode(errors="replace")
            return " ".join(str(q).split())

        wrap(conn_cls, "_exec_command", lambda a: sql(a[0]))
        wrap(cur_cls, "_execute_send", lambda a: sql(a[0]))
        wrap(cur_cls, "_send_prepare", lambda a: "PREPARE " + sql(a[1]))
        wrap(cur_cls, "_send_query_prepared", lambda a: "EXECUTE " + sql(a[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=50)
    ap.add_argument("--show", type=int, default=1)
    args = ap.parse_args()
    home = make_home(fast=True)
    ctl: Control | None = None
    recorder = Recorder()
    recorder.install()
    per_op: list[list[str]] = []
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.catalog.operations import OperationStatus
        from bizosctl.runners import resume, start_ping
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        log(f"home {home}: initialising")
        init_home(ctl)
        with ctl.catalog() as s:
            ids = [start_ping(s, status=OperationStatus.QUEUED) for _ in range(args.ops + 1)]
        resume(ctl, ids[0])  # warm-up: imports, the first connections
        for op_id in ids[1:]:
            recorder.sent = []
            recorder.on = True
            t0 = time.perf_counter()
            resume(ctl, op_id)
            recorder.on = False
            per_op.append(recorder.sent)
            per_op[-1].append(f"-- {1000 * (time.perf_counter() - t0):.2f} ms")
    finally:
        recorder.on = False
        cleanup(ctl, home, log)
    for n, op in enumerate(per_op[: args.show]):
        print(f"operation {n + 1}: {len(op) - 1} round trips ({op[-1][3:]})")
        for st in op[:-1]:
            print(f"  {st[:160]}")
    counts = [len(op) - 1 for op in per_op]
    ms = sorted(float(op[-1].split()[1]) for op in per_op)
    print(
        f"round trips per ops.ping, mean of {len(counts)}: {sum(counts) / len(counts):.1f} "
        f"(min {min(counts)}, max {max(counts)}); median {ms[len(ms) // 2]:.2f} ms each"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
