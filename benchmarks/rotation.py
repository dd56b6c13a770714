"""Rotation benchmark: ``secrets rotate pii`` (online re-encryption) against a no-op UPDATE floor.

Run as ``python benchmarks/rotation.py [--values 1000000] [--tenants 1] [--batch 2000]
[--read-rate 50] [--reader process|thread] [--reload-seconds 1] [--workers auto,0] [--fast]
[--json]``.

Everything happens in a throw-away ``BIZOS_HOME`` (``/tmp/bzb-XXXXXXXX``, short so that the
Unix socket path stays under 108 bytes) with one embedded server, ``global-1``, and
``BIZOS_KEYRING_RELOAD_SECONDS=1`` (``--reload-seconds``; the rotation waits one reload period
after creating the new key before its final sweep):

* **set-up** (untimed): shared-tier tenants ``rot-1`` ... with ``--values / 3`` members in all,
  each with ``email_enc``, ``name_enc`` and ``phone_enc`` encrypted by ``fields.encrypt`` under
  the current ``pii`` key and ``email_bidx = blind_index(email)``. Ciphertexts are made in a
  process pool and loaded with ``COPY`` as the superuser (``session_replication_role =
  replica``), then ``VACUUM (ANALYZE)``. Member ids are md5-derived, i.e. random in primary-key
  order, like the ``gen_random_uuid()`` default. Then one no-op UPDATE and a VACUUM, so that
  every timed phase starts with half the heap free.
* **floor**: ``UPDATE shared.members SET email_enc = email_enc, name_enc = name_enc, phone_enc =
  phone_enc WHERE tenant_id = ANY(...)``, one statement, replica role; then, after a VACUUM,
  the same no-op UPDATE in primary-key batches of ``--batch`` rows, one transaction each (the
  rotation's walk without its crypto). A VACUUM follows each floor.
* **rotation**: ``rotate_pii(ctl, batch=--batch, workers=W, progress=...)`` in-process, timed
  from the call to its return, once for each entry of ``--workers`` (default ``auto,0``: the
  default placement of the cryptography in worker processes, then all of it in this process;
  each rotates to a new key version after a VACUUM). A reader (by default a spawned process,
  ``--reader thread`` a thread; either way its own ``Control``, hence its own keyring, as an
  application process) makes ``--read-rate`` reads a second through ``tenant_session(...,
  read_only=True)``: the member with a random known e-mail, looked up by ``blind_indexes``
  (every live version), its e-mail decrypted and compared. It runs alone for a few seconds
  first. The pass, the reload wait and the final sweep are told apart with the progress
  callback's timestamps and a wrapper around the rotation module's ``time.sleep``. CPU seconds
  by role (this process, the crypto workers, the rotation's and the application's PostgreSQL
  backends, the reader process) are read from ``/proc`` during the rotation.
* **verify** (untimed): every value under the new version and decrypting to its original, the
  blind index recomputed, the old version retired.

This is a measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cleanup, connect, make_home, quiesce

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.security.keyring import DataKey, Keyring

TARGET_RATIO = 0.5  # rotation throughput at least 50 % of the floor's
RELOAD_SECONDS = 1  # BIZOS_KEYRING_RELOAD_SECONDS for the run
REGION = "global"
SHARED_DB = "bizos_shared"
SHARED_SCHEMA = "shared"
SLUG_PREFIX = "rot-"
BEFORE_S = 3.0  # the reader runs alone this long before the rotation
AFTER_S = 0.5  # and this long after it
GEN_CHUNK = 10_000  # members per generation task
COLUMNS = ("email", "name", "phone")
Log = Callable[[str], None]
TenantSpec = tuple[int, str, uuid.UUID, int]  # (k, slug, tenant id, members)


class StopEvent(Protocol):
    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


# -- set-up -------------------------------------------------------------------------------------


def plaintext(k: int, i: int) -> tuple[str, str, str]:
    """Member ``i`` of tenant ``k``: e-mail, name, phone."""
    return (
        f"member{i}@tenant{k}.bench.example",
        f"Member {i} of Benchmark Tenant {k}",
        f"+62 812 {i:08d}",
    )


def member_id(tid: uuid.UUID, i: int) -> uuid.UUID:
    return uuid.UUID(bytes=hashlib.md5(f"{tid}:{i}".encode()).digest())


class StaticRing:
    """Just enough of a ``Keyring`` for ``encrypt``/``decrypt``/``blind_index`` in a worker."""

    def __init__(self, keys: list[DataKey]) -> None:
        self.keys = {k.version: k for k in keys}
        self.top = max(keys, key=lambda k: k.version)

    def primary(self, purpose: str) -> DataKey:
        return self.top

    def get(self, purpose: str, version: int) -> DataKey:
        return self.keys[version]


_RING: Keyring | None = None  # set in pool workers by _init_worker


def _init_worker(keys: list[DataKey]) -> None:
    global _RING
    _RING = cast("Keyring", StaticRing(keys))


def _gen_chunk(job: tuple[int, str, int, int]) -> bytes:
    """COPY text rows for members ``start <= i < stop`` of tenant ``k``."""
    from bizosctl.security.fields import blind_index, encrypt, normalize_email

    assert _RING is not None
    k, tid, start, stop = job
    tenant = uuid.UUID(tid)
    out = []
    for i in range(start, stop):
        email, name, phone = plaintext(k, i)
        mid = member_id(tenant, i)
        enc = [
            encrypt(_RING, v, tenant_id=tenant, table="members", column=c, row=mid)
            for v, c in zip((email, name, phone), COLUMNS, strict=True)
        ]
        bidx = blind_index(_RING, normalize_email(email))
        out.append(f"{tid}\t{mid}\t{enc[0]}\t{bidx}\t{enc[1]}\t{enc[2]}\n")
    return "".join(out).encode()


def load_members(
    ctl: Control, tenants: list[tuple[int, uuid.UUID, int]], log: Log
) -> tuple[float, float]:
    """Encrypt and COPY every tenant's members; then VACUUM (ANALYZE). Returns (load, vacuum) s."""
    ring = ctl.keyring
    keys = [ring.primary("pii")]
    jobs = [
        (k, str(tid), start, min(n, start + GEN_CHUNK))
        for k, tid, n in tenants
        for start in range(0, n, GEN_CHUNK)
    ]
    total = sum(n for _, _, n in tenants)
    t0 = time.perf_counter()
    done = 0
    mp = multiprocessing.get_context("fork")
    workers = max(1, os.cpu_count() or 1)
    with (
        mp.Pool(workers, initializer=_init_worker, initargs=(keys,)) as pool,
        connect(ctl, SHARED_DB) as conn,
    ):
        conn.execute("SET session_replication_role = replica")
        with (
            conn.cursor() as cur,
            cur.copy(
                f"COPY {SHARED_SCHEMA}.members (tenant_id, id, email_enc, email_bidx, name_enc, "
                "phone_enc) FROM STDIN".encode()
            ) as copy,
        ):
            for chunk in pool.imap(_gen_chunk, jobs):
                copy.write(chunk)
                done += chunk.count(b"\n")
                if done % 100_000 < GEN_CHUNK:
                    log(f"  {done:>9,} / {total:,} members ({time.perf_counter() - t0:.1f}s)")
        conn.commit()
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with connect(ctl, SHARED_DB, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {SHARED_SCHEMA}.members".encode())
    return load_s, time.perf_counter() - t1


def vacuum(ctl: Control) -> float:
    t0 = time.perf_counter()
    with connect(ctl, SHARED_DB, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {SHARED_SCHEMA}.members".encode())
    return time.perf_counter() - t0


def wal_mark(ctl: Control) -> tuple[int, int]:
    """(WAL position in bytes, checkpoints so far): phases compare by difference."""
    with connect(ctl, "postgres") as conn:
        lsn, done = conn.execute(
            "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, num_timed + num_requested "
            "FROM pg_stat_checkpointer"
        ).fetchone()
        return int(lsn), int(done)


def since(ctl: Control, mark: tuple[int, int]) -> dict[str, float]:
    now = wal_mark(ctl)
    return {"wal_mib": (now[0] - mark[0]) / 2**20, "checkpoints": now[1] - mark[1]}


def table_size(ctl: Control) -> int:
    with connect(ctl, SHARED_DB) as conn:
        size: int = conn.execute(
            f"SELECT pg_table_size('{SHARED_SCHEMA}.members')".encode()
        ).fetchone()[0]
        return size


# -- the floor ----------------------------------------------------------------------------------
NOOP_SET = "email_enc = t.email_enc, name_enc = t.name_enc, phone_enc = t.phone_enc"


def floor_single(ctl: Control, tids: list[uuid.UUID]) -> tuple[float, int]:
    """The no-op UPDATE of every encrypted column as one statement. Returns (seconds, rows)."""
    with connect(ctl, SHARED_DB) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.commit()
        t0 = time.perf_counter()
        cur = conn.execute(
            f"UPDATE {SHARED_SCHEMA}.members AS t SET {NOOP_SET} "
            "WHERE tenant_id = ANY(%s)".encode(),
            [tids],
        )
        rows = cur.rowcount
        conn.commit()
        return time.perf_counter() - t0, rows


def floor_batched(ctl: Control, batch: int) -> tuple[float, int, int]:
    """The same no-op UPDATE in primary-key batches, one transaction each, as the rotation
    walks (keyset pagination over the whole table). Returns (seconds, rows, batches)."""
    last_t, last_id = uuid.UUID(int=0), uuid.UUID(int=0)
    rows = batches = 0
    with connect(ctl, SHARED_DB) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.commit()
        t0 = time.perf_counter()
        while True:
            got = conn.execute(
                f"WITH b AS (SELECT tenant_id, id FROM {SHARED_SCHEMA}.members "
                "WHERE (tenant_id, id) > (%s, %s) ORDER BY tenant_id, id LIMIT %s) "
                f"UPDATE {SHARED_SCHEMA}.members AS t SET {NOOP_SET} FROM b "
                "WHERE t.tenant_id = b.tenant_id AND t.id = b.id "
                "RETURNING t.tenant_id, t.id".encode(),
                [last_t, last_id, batch],
            ).fetchall()
            conn.commit()
            if not got:
                break
            last_t, last_id = max(got)
            rows += len(got)
            batches += 1
        return time.perf_counter() - t0, rows, batches


# -- the reader ---------------------------------------------------------------------------------
@dataclass
class Read:
    at: float  # monotonic start
    seconds: float
    outcome: str  # ok, miss, mismatch, or the exception's type


class Reader:
    """``rate`` application reads a second: a member by blind index, its e-mail decrypted.

    It uses its own ``Control`` (own keyring, re-read every ``BIZOS_KEYRING_RELOAD_SECONDS``),
    as a separate application process would, not the one the rotation reloads.
    """

    def __init__(self, rctl: Control, tenants: list[TenantSpec], rate: float) -> None:
        self.rctl, self.tenants, self.rate = rctl, tenants, rate
        self.reads: list[Read] = []
        self.errors: list[str] = []

    def run(self, stop: StopEvent, ready: StopEvent | None = None) -> None:
        try:
            self._loop(stop, ready)
        except BaseException as exc:  # keep the benchmark going; report it
            self.errors.append(f"reader died: {type(exc).__name__}: {exc}")
        finally:
            if ready is not None:
                ready.set()

    def _loop(self, stop: StopEvent, ready: StopEvent | None) -> None:
        rng = random.Random(20261102)
        # Warm up (imports, route, engine, keyring) before anything is timed.
        k, slug, tid, _ = self.tenants[0]
        self._read(slug, tid, plaintext(k, 0)[0])
        if ready is not None:
            ready.set()
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now < next_at:
                stop.wait(next_at - now)
                continue
            next_at = max(next_at + interval, now - 1.0)
            k, slug, tid, n = self.tenants[rng.randrange(len(self.tenants))]
            email = plaintext(k, rng.randrange(n))[0]
            started = time.monotonic()
            try:
                outcome = self._read(slug, tid, email)
            except Exception as exc:  # counted, the first few kept
                outcome = type(exc).__name__
                if len(self.errors) < 10:
                    self.errors.append(f"{outcome}: {exc}")
            self.reads.append(Read(started, time.monotonic() - started, outcome))

    def _read(self, slug: str, tid: uuid.UUID, email: str) -> str:
        from sqlalchemy import text

        from bizosctl.security.fields import blind_indexes, decrypt, normalize_email
        from bizosctl.tenancy.router import tenant_session

        with tenant_session(self.rctl, slug, actor="bench-reader", read_only=True) as s:
            ring = self.rctl.keyring
            row = s.execute(
                text("SELECT id, email_enc FROM members WHERE email_bidx = ANY(:b)"),
                {"b": blind_indexes(ring, normalize_email(email))},
            ).first()
            if row is None:
                return "miss"
            got = decrypt(
                ring, row.email_enc, tenant_id=tid, table="members", column="email", row=row.id
            )
            return "ok" if got == email else "mismatch"


def _reader_process(
    tenants: list[TenantSpec], rate: float, stop: StopEvent, ready: StopEvent, out: Any
) -> None:
    """A reader in a process of its own (spawned: a fresh interpreter, env inherited)."""
    from bizosctl.catalog.control import get_control
    from bizosctl.db.engines import dispose_all

    reader = Reader(get_control(), tenants, rate)
    reader.run(stop, ready)
    out.send(([(r.at, r.seconds, r.outcome) for r in reader.reads], reader.errors))
    out.close()
    dispose_all()


class ReaderHandle:
    """The reader as a thread of this process or as a separate process."""

    def __init__(self, mode: str, tenants: list[TenantSpec], rate: float) -> None:
        self.mode = mode
        self.reads: list[Read] = []
        self.errors: list[str] = []
        self.proc: Any = None
        self.thread: threading.Thread | None = None
        if mode == "thread":
            from bizosctl.catalog.control import Control, get_control

            self.reader = Reader(Control(get_control().settings), tenants, rate)
            self.stop_event: StopEvent = threading.Event()
            self.ready: StopEvent = threading.Event()
            self.thread = threading.Thread(
                target=self.reader.run, args=(self.stop_event, self.ready), daemon=True
            )
            self.thread.start()
        else:
            mp = multiprocessing.get_context("spawn")
            self.stop_event, self.ready = mp.Event(), mp.Event()
            self.pipe, child = mp.Pipe(duplex=False)
            self.proc = mp.Process(
                target=_reader_process,
                args=(tenants, rate, self.stop_event, self.ready, child),
                daemon=True,
            )
            self.proc.start()
            child.close()
        if not self.ready.wait(120):
            self.errors.append("reader not ready within 120 s")

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
            self.reads, self.errors = self.reader.reads, self.errors + self.reader.errors
            return
        if self.pipe.poll(60):
            reads, errors = self.pipe.recv()
            self.reads = [Read(*r) for r in reads]
            self.errors += errors
        else:
            self.errors.append("reader process sent nothing within 60 s")
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def read_stats(reads: list[Read], start: float, end: float) -> dict[str, Any]:
    window = [r for r in reads if start <= r.at < end]
    ok = [r.seconds for r in window if r.outcome == "ok"]
    outcomes: dict[str, int] = {}
    for r in window:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    p50, p99 = pct(ok, 0.5), pct(ok, 0.99)
    failed = [r.at - start for r in window if r.outcome != "ok"]
    return {
        "seconds": end - start,
        "reads": len(window),
        "rate": len(window) / (end - start) if end > start else None,
        "outcomes": outcomes,
        "p50_ms": 1000 * p50 if p50 is not None else None,
        "p99_ms": 1000 * p99 if p99 is not None else None,
        "max_ms": 1000 * max(ok) if ok else None,
        "failed_between_s": [min(failed), max(failed)] if failed else None,
    }


# -- the rotation -------------------------------------------------------------------------------
class _Clock:
    """Stands in for the rotation module's ``time``: records what ``sleep`` waited."""

    def __init__(self) -> None:
        self.sleeps: list[tuple[float, float]] = []  # (monotonic end, seconds)

    def sleep(self, seconds: float) -> None:
        t0 = time.monotonic()
        time.sleep(seconds)
        self.sleeps.append((time.monotonic(), time.monotonic() - t0))

    def slept(self, start: float, end: float) -> float:
        return sum(s for at, s in self.sleeps if start <= at <= end)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def clocked(clock: _Clock) -> Iterator[None]:
    from bizosctl.security import rotation as mod

    setattr(mod, "time", clock)  # noqa: B010
    try:
        yield
    finally:
        setattr(mod, "time", time)  # noqa: B010


def cpu_by_process() -> dict[int, tuple[float, str]]:
    """CPU seconds (user + system) and command line of every process, from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry)] = ((int(fields[11]) + int(fields[12])) / tick, cmd)
    return out


class CpuSampler:
    """CPU seconds each role used during a window: processes come and go (the crypto workers,
    PostgreSQL backends), so ``/proc`` is sampled every 0.2 s and a process's last sample
    counts."""

    def __init__(self, reader_pid: int | None) -> None:
        self.me, self.reader_pid = os.getpid(), reader_pid
        self.start = cpu_by_process()
        self.last = dict(self.start)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        # keep the first command line seen: a process on its way out may show an empty one
        for pid, (cpu, cmd) in cpu_by_process().items():
            self.last[pid] = (cpu, self.last[pid][1] if pid in self.last else cmd)

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self._sample()
        roles: dict[str, float] = {}
        for pid, (cpu, cmd) in self.last.items():
            used = cpu - self.start.get(pid, (0.0, ""))[0]
            if used <= 0:
                continue
            if pid == self.me:
                role = "rotating process (reads, writes, I/O threads)"
            elif pid == self.reader_pid:
                role = "application reader process"
            elif "forkserver" in cmd or "multiprocessing" in cmd:
                role = "crypto worker processes"
            elif cmd.startswith("postgres: postgres") and "bizos_shared" in cmd:
                role = "PostgreSQL: the rotation's backends"
            elif cmd.startswith("postgres:") and "bizos_app" in cmd:
                role = "PostgreSQL: the application's backends"
            elif cmd.startswith("postgres:"):
                role = "PostgreSQL: other (catalog, background)"
            else:
                role = "other processes"
            roles[role] = roles.get(role, 0.0) + used
        return {k: round(v, 2) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])}


def run_rotation(
    ctl: Control,
    tenants: list[TenantSpec],
    *,
    reader_mode: str,
    batch: int,
    workers: int | None,
    fresh_key: bool,
    read_rate: float,
    log: Log,
) -> dict[str, Any]:
    from bizosctl.errors import BizosError
    from bizosctl.security.rotation import default_workers, rotate_pii

    # The reader warms up (route, engine, keyring), then runs alone for a while.
    reader = ReaderHandle(reader_mode, tenants, read_rate)
    time.sleep(BEFORE_S)
    marks: list[tuple[float, str, int]] = []

    def progress(table: str, n: int) -> None:
        marks.append((time.monotonic(), table, n))
        done = sum(m[2] for m in marks)
        if len(marks) % 25 == 0:
            log(f"  [{time.monotonic() - t0:6.2f}s] {done:,} rows re-encrypted")

    clock = _Clock()
    report: dict[str, Any] | None = None
    error = None
    label = default_workers() if workers is None else workers
    log(f"rotation: rotate_pii(batch={batch}, workers={label}), reader {read_rate:g} reads/s")
    sampler = CpuSampler(reader.proc.pid if reader.proc is not None else None)
    with clocked(clock):
        t0 = time.monotonic()
        try:
            report = rotate_pii(
                ctl, batch=batch, workers=workers, fresh_key=fresh_key, progress=progress
            )
        except BizosError as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"  rotation failed: {error}")
        t1 = time.monotonic()
    cpu = sampler.finish()
    log(f"  rotation returned after {t1 - t0:.2f}s")
    time.sleep(AFTER_S)
    reader.stop()
    # before the pass: the new key readable everywhere before it becomes primary
    first = marks[0][0] if marks else t1
    key_wait = clock.slept(t0, first)
    pass_end = marks[-1][0] if marks else t0
    pass_s = pass_end - t0 - key_wait
    final_s = t1 - pass_end
    return {
        "workers": label,
        "seconds": t1 - t0,
        "error": error,
        "report": report,
        "batch": batch,
        "batches": len(marks),
        "rows_in_batches": sum(m[2] for m in marks),
        "first_batch_s": marks[0][0] - t0 if marks else None,
        "pass_s": pass_s,
        "key_wait_s": key_wait,
        "sweep_wait_s": clock.slept(pass_end, t1),
        "final_sweep_and_retire_s": final_s - clock.slept(pass_end, t1),
        "cpu_s": cpu,
        "cpu_total_s": round(sum(cpu.values()), 2),
        "reader": {
            "before": read_stats(reader.reads, t0 - BEFORE_S, t0),
            "during": read_stats(reader.reads, t0, t1),
            "during_pass": read_stats(reader.reads, t0, pass_end),
            "after": read_stats(reader.reads, t1, t1 + AFTER_S),
            "errors": reader.errors,
            "rate_target": read_rate,
            "mode": reader_mode,
        },
    }


# -- verification -------------------------------------------------------------------------------
def _verify_chunk(rows: list[tuple[Any, ...]]) -> tuple[int, int, dict[int, int], list[str]]:
    """(values checked, bad values, values by version, first problems) for (k, i, tid, ...)."""
    from bizosctl.security.fields import blind_index, decrypt, key_version, normalize_email

    assert _RING is not None
    checked = bad = 0
    versions: dict[int, int] = {}
    problems: list[str] = []
    for k, i, tid, email_enc, bidx, name_enc, phone_enc in rows:
        expected = plaintext(k, i)
        for token, col, want in zip(
            (email_enc, name_enc, phone_enc), COLUMNS, expected, strict=True
        ):
            checked += 1
            try:
                v = key_version(token)
                versions[v] = versions.get(v, 0) + 1
                got = decrypt(
                    _RING, token, tenant_id=tid, table="members", column=col,
                    row=member_id(tid, i),
                )  # fmt: skip
                ok = got == want
            except Exception as exc:
                ok, got = False, f"{type(exc).__name__}: {exc}"
            if not ok:
                bad += 1
                if len(problems) < 5:
                    problems.append(f"tenant {k} member {i} {col}: {got!r} != {want!r}")
        if bidx != blind_index(_RING, normalize_email(expected[0])):
            bad += 1
            if len(problems) < 5:
                problems.append(f"tenant {k} member {i}: blind index not recomputed")
    return checked, bad, versions, problems


def verify(ctl: Control, tenants: list[TenantSpec]) -> dict[str, Any]:
    from sqlalchemy import select

    from bizosctl.catalog.models import KeyringEntry
    from bizosctl.security.rotation import pii_usage

    t0 = time.perf_counter()
    ctl.reload_keyring()
    ring = ctl.keyring
    new = ring.primary("pii")
    with ctl.catalog() as s:
        entries = [
            (e.version, e.is_primary, e.retired_at is not None)
            for e in s.execute(select(KeyringEntry).where(KeyringEntry.purpose == "pii")).scalars()
        ]
    index = {
        member_id(tid, i): (k, i) for k, _, tid, n in tenants for i in range(n)
    }  # id -> (k, i)
    with connect(ctl, SHARED_DB) as conn:
        fetched = conn.execute(
            f"SELECT tenant_id, id, email_enc, email_bidx, name_enc, phone_enc "
            f"FROM {SHARED_SCHEMA}.members".encode()
        ).fetchall()
    rows = []
    unknown = 0
    for tid, mid, e, b, n, p in fetched:
        ki = index.pop(mid, None)
        if ki is None:
            unknown += 1
            continue
        rows.append((ki[0], ki[1], tid, e, b, n, p))
    chunks = [rows[i : i + 20_000] for i in range(0, len(rows), 20_000)]
    mp = multiprocessing.get_context("fork")
    with mp.Pool(max(1, os.cpu_count() or 1), initializer=_init_worker, initargs=([new],)) as pool:
        results = pool.map(_verify_chunk, chunks)
    versions: dict[int, int] = {}
    problems: list[str] = []
    for _, _, vs, ps in results:
        for v, c in vs.items():
            versions[v] = versions.get(v, 0) + c
        problems.extend(ps)
    usage = pii_usage(ctl)
    old = [retired for v, _, retired in entries if v < new.version]
    staged = [v for v, _, retired in entries if v > new.version and not retired]
    return {
        "new_version": new.version,
        "values_checked": sum(r[0] for r in results),
        "bad_values": sum(r[1] for r in results),
        "values_by_version": versions,
        "missing_members": len(index),
        "unexpected_members": unknown,
        "pii_usage": usage,
        "keyring": [{"version": v, "primary": p, "retired": r} for v, p, r in sorted(entries)],
        "old_retired": bool(old) and all(old),
        "staged": staged,
        "problems": problems[:10],
        "seconds": time.perf_counter() - t0,
        "ok": (
            not problems
            and not index
            and not unknown
            and set(versions) == {new.version}
            and bool(old)
            and all(old)
            and len(staged) == 1
        ),
    }


# -- output -------------------------------------------------------------------------------------
def server_facts(ctl: Control) -> dict[str, str]:
    names = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
    with connect(ctl, "postgres") as conn:
        rows = conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
            [list(names)],
        ).fetchall()
    return {str(name): str(setting) for name, setting in rows}


def ms(value: float | None) -> str:
    return f"{value:.1f} ms" if value is not None else "-"


def print_human(doc: dict[str, Any]) -> None:
    fl, fb = doc["floor"], doc["floor_batched"]
    print(
        f"values: {doc['values']:,} ({doc['members']:,} members x 3 columns, "
        f"{doc['tenants']} shared-tier tenant(s)); PostgreSQL "
        f"{doc['postgres'].get('server_version')}, fsync {doc['postgres'].get('fsync')}, "
        f"{doc['cpus']} CPUs, Python {doc['python']}"
    )
    print(
        f"set-up (untimed): encrypt + COPY {doc['load_s']:.1f}s, VACUUM (ANALYZE) "
        f"{doc['vacuum_s']:.1f}s; table {doc['table_mib']:.0f} MiB"
    )
    rows = [
        ("floor, one no-op UPDATE", fl),
        (f"floor, batched ({fb['batches']} x {doc['batch']} rows)", fb),
    ]
    rows += [(f"rotation, --workers {r['workers']}", r) for r in doc["rotations"]]
    for label, r in rows:
        ratio = f"  {r['ratio']:6.1%} of the floor" if "ratio" in r else ""
        print(
            f"{label + ':':<40} {r['seconds']:7.2f}s {r['values_per_s']:>10,.0f} values/s  "
            f"(WAL {r['wal_mib']:.0f} MiB){ratio}"
        )
    print(
        f"BIZOS_KEYRING_RELOAD_SECONDS={doc['keyring_reload_seconds']}: "
        + (
            "--fresh-key: each rotation makes a new key and waits one reload period before "
            "making it primary"
            if doc["fresh_key"]
            else "each rotation switches to the key staged one reload period or more before "
            "(by init, then by the previous rotation), without waiting"
        )
    )
    for rot in doc["rotations"]:
        print_rotation(rot)
    tg = doc["target"]
    print(
        f"throughput rotation/floor: {tg['ratio']:.1%} (target >= {TARGET_RATIO:.0%}, "
        f"{tg['judged_on']}: {'met' if tg['met'] else 'MISSED'})"
    )
    print(f"total runtime {doc['total_runtime_s']:.0f}s")


def print_rotation(rot: dict[str, Any]) -> None:
    rd, ver = rot["reader"], rot["verify"]
    print(f"--workers {rot['workers']}:")
    if rot["error"]:
        print(f"  rotation FAILED: {rot['error']}")
    print(
        f"  new key readable -> primary wait {rot['key_wait_s']:.2f}s; re-encryption pass "
        f"{rot['pass_s']:.2f}s ({rot['pass_values_per_s']:,.0f} values/s, "
        f"{rot['ratio_pass']:.1%} of the floor; {rot['batches']} chunks); wait before the "
        f"sweep {rot['sweep_wait_s']:.2f}s; final sweep + retire "
        f"{rot['final_sweep_and_retire_s']:.2f}s"
    )
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in rot["cpu_s"].items())
    print(f"  CPU during the rotation ({rot['cpu_total_s']:.1f}s in all): {parts}")
    before, during = rd["before"], rd["during"]
    print(
        f"  reader ({rd['rate_target']:g} reads/s, a {rd['mode']}): before p50 "
        f"{ms(before['p50_ms'])} p99 {ms(before['p99_ms'])} ({before['reads']} reads); during "
        f"p50 {ms(during['p50_ms'])} p99 {ms(during['p99_ms'])} max {ms(during['max_ms'])} "
        f"({during['reads']} reads, {during['rate'] or 0:.0f}/s), outcomes {during['outcomes']}"
    )
    if during["failed_between_s"]:
        a, b = during["failed_between_s"]
        print(f"  failed reads between {a:.2f}s and {b:.2f}s into the rotation")
    for err in rd["errors"][:3]:
        print(f"  reader error: {err}")
    print(
        f"  verify: {'ok' if ver['ok'] else 'FAILED'}: {ver['values_checked']:,} values checked, "
        f"{ver['bad_values']} bad, by version {ver['values_by_version']}, keyring "
        + ", ".join(
            f"v{e['version']}{' primary' if e['primary'] else ''}"
            f"{' retired' if e['retired'] else ''}"
            f"{' staged' if e['version'] in ver['staged'] else ''}"
            for e in ver["keyring"]
        )
    )
    for p in ver["problems"][:5]:
        print(f"  problem: {p}")


# -- main ---------------------------------------------------------------------------------------
def workers_list(value: str) -> list[int | None]:
    out: list[int | None] = []
    for part in value.split(","):
        part = part.strip()
        if part == "auto":
            out.append(None)
        elif part.isdigit():
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"not a number or 'auto': {part!r}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--values", type=int, default=1_000_000, help="encrypted values in all")
    parser.add_argument("--tenants", type=int, default=1, help="shared-tier tenants")
    parser.add_argument("--batch", type=int, default=2000, help="rotation batch (rows)")
    parser.add_argument("--read-rate", type=float, default=50.0, help="reader reads a second")
    parser.add_argument(
        "--reload-seconds",
        type=float,
        default=RELOAD_SECONDS,
        help="BIZOS_KEYRING_RELOAD_SECONDS for the run",
    )
    parser.add_argument(
        "--reader",
        choices=("process", "thread"),
        default="process",
        help="run the reader in its own process (default) or as a thread of this one",
    )
    parser.add_argument("--fast", action="store_true", help="BIZOS_EMBEDDED_DURABLE=false")
    parser.add_argument(
        "--workers",
        type=workers_list,
        default=[None, 0],
        help="rotations to run one after the other, by crypto worker processes: a comma list "
        "of numbers or 'auto' (default 'auto,0': the default, then all in-process); the "
        "target is judged on the first",
    )
    parser.add_argument(
        "--fresh-key",
        action="store_true",
        help="rotate to a newly made key (waits one reload period) instead of the staged one",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.values < 3 * args.tenants or args.values < 300:
        parser.error("--values must be at least 300 and 3 per tenant")
    if args.read_rate <= 0 or args.batch < 1 or args.tenants < 1:
        parser.error("--read-rate, --batch and --tenants must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = make_home(fast=args.fast, env={"BIZOS_KEYRING_RELOAD_SECONDS": str(args.reload_seconds)})

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    ctl: Control | None = None
    started = time.perf_counter()
    try:
        from bizosctl.catalog.control import get_control
        from bizosctl.tenancy.provision import create_tenant
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        log(f"home {home}: initialising")
        init_home(ctl)
        members = args.values // 3
        tenants: list[TenantSpec] = []
        for k in range(args.tenants):
            slug = f"{SLUG_PREFIX}{k + 1}"
            create_tenant(ctl, slug=slug, name=f"Benchmark {slug}", tier="shared", region=REGION)
            n = members // args.tenants + (1 if k < members % args.tenants else 0)
            tenants.append((k, slug, ctl.route(slug).tenant_id, n))
        values = 3 * members
        log(f"encrypting and loading {values:,} values ({members:,} members)")
        load_s, vacuum_s = load_members(ctl, [(k, t, n) for k, _, t, n in tenants], log)
        log(f"loaded in {load_s:.1f}s, vacuumed in {vacuum_s:.1f}s")
        tids = [t for _, _, t, _ in tenants]
        doc: dict[str, Any] = {
            "home": str(home),
            "durable": ctl.settings.embedded_durable,
            "postgres": server_facts(ctl),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "values": values,
            "members": members,
            "tenants": args.tenants,
            "batch": args.batch,
            "keyring_reload_seconds": ctl.settings.keyring_reload_seconds,
            "fresh_key": args.fresh_key,
            "load_s": load_s,
            "vacuum_s": vacuum_s,
            "table_mib": table_size(ctl) / 2**20,
        }

        # Untimed: one no-op UPDATE and a VACUUM, so that every timed phase starts from the same
        # state (half the pages free after a VACUUM) instead of the first one paying for
        # extending a freshly packed table.
        log("conditioning: one no-op UPDATE and VACUUM (untimed)")
        seconds, _ = floor_single(ctl, tids)
        doc["conditioning_update_s"] = seconds
        vacuum(ctl)
        quiesce(ctl, log)
        log("floor: one no-op UPDATE")
        mark = wal_mark(ctl)
        seconds, rows = floor_single(ctl, tids)
        log(f"  {rows:,} rows in {seconds:.2f}s")
        doc["floor"] = {"seconds": seconds, "rows": rows, "values_per_s": values / seconds}
        doc["floor"].update(since(ctl, mark))
        doc["floor"]["vacuum_after_s"] = vacuum(ctl)
        quiesce(ctl, log)
        log(f"floor: no-op UPDATE in batches of {args.batch}")
        mark = wal_mark(ctl)
        seconds, rows, batches = floor_batched(ctl, args.batch)
        log(f"  {rows:,} rows in {batches} batches in {seconds:.2f}s")
        doc["floor_batched"] = {
            "seconds": seconds,
            "rows": rows,
            "batches": batches,
            "values_per_s": values / seconds,
        }
        doc["floor_batched"].update(since(ctl, mark))
        doc["floor_batched"]["vacuum_after_s"] = vacuum(ctl)
        quiesce(ctl, log)
        floor_vps = doc["floor"]["values_per_s"]
        doc["rotations"] = []
        for workers in args.workers:
            mark = wal_mark(ctl)
            rot = run_rotation(
                ctl,
                tenants,
                reader_mode=args.reader,
                batch=args.batch,
                workers=workers,
                fresh_key=args.fresh_key,
                read_rate=args.read_rate,
                log=log,
            )
            rot.update(since(ctl, mark))
            rot["values_per_s"] = values / rot["seconds"]
            rot["pass_values_per_s"] = values / rot["pass_s"] if rot["pass_s"] > 0 else None
            rot["ratio"] = rot["values_per_s"] / floor_vps
            rot["ratio_pass"] = (rot["pass_values_per_s"] or 0.0) / floor_vps
            rot["ratio_batched"] = rot["values_per_s"] / doc["floor_batched"]["values_per_s"]
            log("verifying")
            rot["verify"] = verify(ctl, tenants)
            doc["rotations"].append(rot)
            vacuum(ctl)
            quiesce(ctl, log)
        first = doc["rotations"][0]
        doc["target"] = {
            "target": f"rotation throughput >= {TARGET_RATIO:.0%} of the floor's",
            "judged_on": f"workers={first['workers']} (the first --workers entry)",
            "ratio": first["ratio"],
            "met": first["ratio"] >= TARGET_RATIO and first["verify"]["ok"],
        }
        doc["total_runtime_s"] = time.perf_counter() - started
    finally:
        cleanup(ctl, home, log)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print_human(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
