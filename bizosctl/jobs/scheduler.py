"""``bizosctl scheduler``: the platform's calendar. It only enqueues durable jobs; ``bizosctl
worker`` runs them.

What runs when is :mod:`bizosctl.jobs.entries` (the digest at 05:00 in each tenant's own zone,
kept move sources when they expire, keys when due, stalled-job reaping). APScheduler is the
timer: one job wakes the scheduler at the next run's instant, computed here with
:mod:`bizosctl.jobs.calendar` (so DST neither skips nor doubles a run), and one re-reads the
catalog every ``BIZOS_SCHEDULER_REFRESH_INTERVAL`` seconds (tenants created or re-zoned
meanwhile, new due instants) and writes the heartbeat ``doctor`` looks at. What it will do
and has done is :mod:`bizosctl.jobs.schedule` (``schedule list``).

Exactly once: a run is the row (entry, key, slot) of ``scheduled_runs``; the scheduler inserts
it and defers the run's job in ONE catalog transaction. A second scheduler inserting the same
row waits for the first's transaction, then finds it there and does nothing; a scheduler killed
at any point leaves both (committed) or neither. A scheduler started after a run's time enqueues
it late within ``BIZOS_SCHEDULER_GRACE`` (procrastinate's queueing lock alone would not do: it
holds only while the job waits, so a restarted scheduler would queue a finished run again).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from bizosctl.errors import BizosError
from bizosctl.faults import crash_point
from bizosctl.faults import now as clock_now
from bizosctl.jobs.entries import Entry, Run, TenantZone, View, WhenDue, registry

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control

log = logging.getLogger("bizosctl.scheduler")

Event = Callable[[str], None]

#: Tenants whose calendar runs (not one being made, banned, or going away).
LIVE = ("active", "read_only", "moving")


def load_view(ctl: Control, entries: list[Entry], *, on_event: Event | None = None) -> View:
    """Tenants with their effective zones, and the due instants of the WhenDue entries."""
    from bizosctl.tenancy.zones import zone_of

    view = View()
    with ctl.catalog() as s:
        rows = s.execute(
            text(
                "SELECT slug, region, time_zone, created_at FROM tenants "
                "WHERE status = ANY(:live) ORDER BY slug"
            ),
            {"live": list(LIVE)},
        ).all()
    for slug, region, time_zone, created_at in rows:
        try:
            zone = zone_of(region=region, time_zone=time_zone)
        except BizosError as exc:  # a zone this machine's tzdata does not know
            if on_event:
                on_event(f"tenant {slug}: {exc.message}; its daily runs wait until it is fixed")
            continue
        view.tenants.append(TenantZone(slug, zone, created_at))
    for entry in entries:
        if isinstance(entry, WhenDue):
            view.due[entry.name] = entry.due(ctl)
    return view


@dataclass
class Scheduler:
    """One scheduler's state; :meth:`tick` enqueues what is due. ``clock`` is injectable."""

    ctl: Control
    clock: Callable[[], dt.datetime] = clock_now
    on_event: Event = lambda line: None
    id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    entries: list[Entry] = field(default_factory=list)
    view: View = field(default_factory=View)
    #: runs known to be recorded (by anyone): entry, key, slot -> due instant
    done: dict[tuple[str, str, str], dt.datetime] = field(default_factory=dict)
    enqueued: list[Run] = field(default_factory=list)
    #: heartbeat and stop exclude each other: a refresh finishing after stop() must not
    #: register this scheduler again
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def __post_init__(self) -> None:
        if not self.entries:
            self.entries = registry(self.ctl.settings)

    @property
    def grace(self) -> float:
        return float(self.ctl.settings.scheduler_grace)

    def refresh(self) -> None:
        """Re-read tenants and due instants; heartbeat; forget old runs."""
        self.view = load_view(self.ctl, self.entries, on_event=self.on_event)
        self.heartbeat()
        horizon = self.clock() - dt.timedelta(seconds=self.grace) - dt.timedelta(days=3)
        self.done = {k: d for k, d in self.done.items() if d >= horizon}

    def heartbeat(self) -> None:
        from bizosctl.jobs.entries import Every

        keep = float(self.ctl.settings.scheduler_keep_runs)
        every = [e.name for e in self.entries if isinstance(e, Every)]
        with self._lock, self.ctl.catalog() as s:
            if self.stopped:
                return
            s.execute(
                text(
                    "INSERT INTO scheduler_heartbeats (id, host, pid) VALUES (:id, :host, :pid) "
                    "ON CONFLICT (id) DO UPDATE SET last_heartbeat = now()"
                ),
                {"id": self.id, "host": socket.gethostname(), "pid": os.getpid()},
            )
            s.execute(
                text(
                    "DELETE FROM scheduler_heartbeats "
                    "WHERE last_heartbeat < now() - '1 day'::interval"
                )
            )
            # The latest run of each entry and key stays: `schedule list` shows it. Runs of
            # Every entries (one a minute) are kept a day.
            s.execute(
                text(
                    "DELETE FROM scheduled_runs AS r WHERE (r.enqueued_at < now() - "
                    "make_interval(secs => :keep) AND r.due_at < now() - make_interval(secs => "
                    ":grace) - '3 days'::interval OR r.entry = ANY(:every) AND r.enqueued_at < "
                    "now() - '1 day'::interval) AND EXISTS (SELECT 1 FROM scheduled_runs AS n "
                    "WHERE n.entry = r.entry AND n.key = r.key AND n.due_at > r.due_at)"
                ),
                {"keep": keep, "grace": self.grace, "every": every},
            )

    def stop(self) -> None:
        """Unregister (doctor then no longer counts this scheduler)."""
        with self._lock, self.ctl.catalog() as s:
            self.stopped = True
            s.execute(text("DELETE FROM scheduler_heartbeats WHERE id = :id"), {"id": self.id})

    def due(self, now: dt.datetime | None = None) -> list[Run]:
        """The runs due by ``now`` (default: the clock) that nobody has recorded yet."""
        now = now or self.clock()
        fresh = [
            r
            for e in self.entries
            for r in e.runs(self.view, now=now, grace=self.grace)
            if (r.entry, r.key, r.slot) not in self.done
        ]
        recorded = _recorded(self.ctl, fresh)
        out = []
        for r in fresh:
            key = (r.entry, r.key, r.slot)
            if key in recorded:
                self.done[key] = r.due_at
            else:
                out.append(r)
        return out

    def tick(self, now: dt.datetime | None = None) -> list[Run]:
        """Enqueue every run due by ``now``; returns the ones this scheduler enqueued."""
        mine = []
        late = []
        for r in self.due(now):
            key = (r.entry, r.key, r.slot)
            if r.late:
                self.done[key] = r.due_at  # reported once
                late.append(r)
                continue
            job = enqueue_run(self.ctl, r, scheduler=self.id)
            self.done[key] = r.due_at
            if job is None:
                continue  # another scheduler enqueued it
            mine.append(r)
            self.enqueued.append(r)
            what = f"job {job}" if job else "its previous job still waits"
            self.on_event(f"enqueued {r.entry} {r.key} {r.slot} ({r.task}, {what})")
        if late:
            self._report_late(late)
        return mine

    def _report_late(self, late: list[Run]) -> None:
        shown = ", ".join(f"{r.entry} {r.key} {r.slot}" for r in late[:5])
        more = f" and {len(late) - 5} more" if len(late) > 5 else ""
        self.on_event(
            f"missed by more than BIZOS_SCHEDULER_GRACE ({self.grace:g}s) while no scheduler "
            f"ran, not enqueued: {shown}{more}"
            + (" (`bizosctl digest run` makes a digest by hand)" if any(
                r.entry == "digest" for r in late) else "")
        )  # fmt: skip

    def next_run(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """The instant of the next run of any entry (the time to wake up)."""
        now = now or self.clock()
        times = [
            when
            for e in self.entries
            for _, when in e.upcoming(self.view, now=now)
            if when is not None
        ]
        return min(times, default=None)


def _recorded(ctl: Control, runs: list[Run]) -> set[tuple[str, str, str]]:
    if not runs:
        return set()
    with ctl.catalog() as s:
        rows = s.execute(
            text(
                "SELECT r.entry, r.key, r.slot FROM scheduled_runs AS r JOIN unnest("
                "CAST(:e AS text[]), CAST(:k AS text[]), CAST(:s AS text[])) AS c(entry, key, "
                "slot) USING (entry, key, slot)"
            ),
            {
                "e": [r.entry for r in runs],
                "k": [r.key for r in runs],
                "s": [r.slot for r in runs],
            },
        ).all()
    return {(e, k, s_) for e, k, s_ in rows}


def enqueue_run(ctl: Control, run: Run, *, scheduler: str) -> int | None:
    """Record ``run`` and defer its job in one transaction. Returns the job id; 0 when its
    queueing lock refused a second waiting job (the run counts as done); None when the run
    was recorded already (by another scheduler, or before a restart)."""
    from bizosctl.jobs.queue import defer_job

    with ctl.catalog() as s:
        first = s.execute(
            text(
                "INSERT INTO scheduled_runs (entry, key, slot, due_at, scheduler) "
                "VALUES (:e, :k, :s, :d, :by) ON CONFLICT DO NOTHING RETURNING 1"
            ),
            {"e": run.entry, "k": run.key, "s": run.slot, "d": run.due_at, "by": scheduler},
        ).first()
        if first is None:
            return None
        crash_point("scheduler.enqueue")
        try:
            with s.begin_nested():
                job = defer_job(
                    s,
                    task=run.task,
                    queue=run.queue,
                    args=run.args,
                    queueing_lock=run.queueing_lock,
                )
        except IntegrityError:
            job = 0
        s.execute(
            text(
                "UPDATE scheduled_runs SET job_id = :j WHERE entry = :e AND key = :k AND slot = :s"
            ),
            {"j": job or None, "e": run.entry, "k": run.key, "s": run.slot},
        )
    return job


# -- the long-running process ------------------------------------------------------------------
class SchedulerReport(BaseModel):
    ok: bool = True
    scheduler: str
    stopped_by: str | None = None
    enqueued: int = 0
    runs: list[dict[str, Any]] = []
    seconds: float = 0.0


def serve(ctl: Control, *, on_event: Event | None = None) -> SchedulerReport:
    """Run the scheduler in this process until SIGTERM or SIGINT (then return)."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    event = on_event or (lambda _: None)
    started = time.monotonic()
    sched = Scheduler(ctl, on_event=event)
    report = SchedulerReport(scheduler=sched.id)
    sched.refresh()
    aps = BlockingScheduler(
        executors={"default": ThreadPoolExecutor(1)},  # one tick at a time
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=dt.UTC,
    )

    def plan_next() -> None:
        when = sched.next_run()
        if when is None:
            return
        offset = sched.clock() - dt.datetime.now(dt.UTC)  # BIZOS_CLOCK_START (tests)
        aps.add_job(wake, DateTrigger(run_date=when - offset), id="wake", replace_existing=True)

    # held by a tick: SIGTERM stops the calendar at once, and the way out waits for a tick
    # in flight to finish (its runs committed and reported) before unregistering
    ticking = threading.Lock()

    def wake() -> None:
        try:
            with ticking:
                sched.tick()
        except BizosError as exc:
            event(f"tick: {exc.message} (next try at the next refresh)")
        except Exception as exc:  # the catalog went away mid-tick; the next refresh retries
            event(f"tick: {' '.join(str(exc).split())[:200]}")
        plan_next()

    def refresh() -> None:
        try:
            sched.refresh()
        except BizosError as exc:
            event(
                f"refresh: {exc.message} (retried in {ctl.settings.scheduler_refresh_interval:g}s)"
            )
            return
        except Exception as exc:
            event(f"refresh: {' '.join(str(exc).split())[:200]}")
            return
        wake()

    def on_signal(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # a second one kills at once
        report.stopped_by = signal.Signals(signum).name
        event(f"{report.stopped_by}: stopping")
        if aps.running:
            aps.shutdown(wait=False)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sched.tick()  # what was missed while no scheduler ran (within the grace window)
        aps.add_job(
            refresh,
            IntervalTrigger(seconds=ctl.settings.scheduler_refresh_interval, timezone=dt.UTC),
            id="refresh",
        )
        plan_next()
        event(
            f"scheduler {sched.id} started: {len(sched.entries)} entries, "
            f"{len(sched.view.tenants)} tenant(s); next run "
            + (_fmt(sched.next_run()) if sched.next_run() else "none")
        )
        if report.stopped_by is None:
            aps.start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with ticking:
            pass
        try:
            sched.stop()
        except BizosError as exc:
            event(f"unregistering: {exc.message}")
    report.enqueued = len(sched.enqueued)
    report.runs = [run_public(r) for r in sched.enqueued[-100:]]
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _fmt(when: dt.datetime | None) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else "-"


def run_public(r: Run) -> dict[str, Any]:
    return {
        "entry": r.entry,
        "key": r.key,
        "slot": r.slot,
        "due_at": r.due_at.isoformat(),
        "task": r.task,
        "args": r.args,
    }
