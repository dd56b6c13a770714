"""What the calendar will do and has done: ``bizosctl schedule list``, ``scheduler --dry-run``,
and which schedulers are alive (``doctor``)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import text

from bizosctl.faults import now as clock_now
from bizosctl.jobs.entries import Entry, registry
from bizosctl.jobs.scheduler import Scheduler, load_view, run_public
from bizosctl.plans import Plan

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control


class LastRun(BaseModel):
    slot: str
    due_at: dt.datetime
    enqueued_at: dt.datetime
    job_id: int | None
    job_status: str | None
    scheduler: str


class NextRun(BaseModel):
    key: str  # a tenant's slug, or "*"
    time_zone: str | None = None
    next_run: dt.datetime | None  # UTC
    next_run_local: str | None = None  # in the tenant's zone
    last_run: LastRun | None = None


class EntryPublic(BaseModel):
    entry: str
    description: str
    task: str
    queue: str
    per_tenant: bool
    when: str
    runs: list[NextRun]


class SchedulerSeen(BaseModel):
    id: str
    host: str
    pid: int
    last_heartbeat: dt.datetime
    seconds_ago: float
    stale: bool


class ScheduleList(BaseModel):
    now: dt.datetime
    entries: list[EntryPublic]
    schedulers: list[SchedulerSeen]


def scheduler_silent_after(ctl: Control) -> float:
    """Seconds without a heartbeat after which a scheduler counts as gone."""
    return max(3 * float(ctl.settings.scheduler_refresh_interval), 30.0)


def list_schedulers(ctl: Control) -> list[SchedulerSeen]:
    silent = scheduler_silent_after(ctl)
    with ctl.catalog() as s:
        rows = s.execute(
            text(
                "SELECT id, host, pid, last_heartbeat, extract(epoch FROM now() - last_heartbeat) "
                "FROM scheduler_heartbeats ORDER BY last_heartbeat DESC"
            )
        ).all()
    return [
        SchedulerSeen(
            id=i, host=h, pid=p, last_heartbeat=lh, seconds_ago=round(float(ago), 1),
            stale=float(ago) > silent,
        )
        for i, h, p, lh, ago in rows
    ]  # fmt: skip


def _when(entry: Entry) -> str:
    from bizosctl.jobs.entries import Daily, Every

    if isinstance(entry, Daily):
        return f"daily at {entry.at.strftime('%H:%M')} in each tenant's time zone"
    if isinstance(entry, Every):
        return f"every {entry.every:g}s"
    return "when due"


def schedule_list(
    ctl: Control, *, tenant: str | None = None, now: dt.datetime | None = None
) -> ScheduleList:
    """Every entry with its next run (UTC and local, per tenant where it applies) and its last
    enqueued run. ``tenant``: only that tenant's runs (fleet entries still shown)."""
    from bizosctl.errors import NotFound
    from bizosctl.tenancy.names import check_slug

    now = now or clock_now()
    entries = registry(ctl.settings)
    view = load_view(ctl, entries)
    if tenant is not None:
        check_slug(tenant)
        view.tenants = [t for t in view.tenants if t.slug == tenant]
        if not view.tenants:
            raise NotFound(f"no tenant named {tenant!r} (or it is not active)")
    zones = {t.slug: t.zone for t in view.tenants}
    with ctl.catalog() as s:
        last = {
            (r.entry, r.key): LastRun(
                slot=r.slot, due_at=r.due_at, enqueued_at=r.enqueued_at, job_id=r.job_id,
                job_status=r.status, scheduler=r.scheduler,
            )
            for r in s.execute(
                text(
                    "SELECT DISTINCT ON (r.entry, r.key) r.entry, r.key, r.slot, r.due_at, "
                    "r.enqueued_at, r.job_id, r.scheduler, j.status::text AS status "
                    "FROM scheduled_runs AS r LEFT JOIN procrastinate_jobs AS j ON j.id = r.job_id "
                    "ORDER BY r.entry, r.key, r.due_at DESC"
                )
            ).all()
        }  # fmt: skip
    out = []
    for entry in entries:
        runs = []
        for key, when in entry.upcoming(view, now=now):
            zone = zones.get(key)
            runs.append(
                NextRun(
                    key=key,
                    time_zone=str(zone) if zone else None,
                    next_run=when,
                    next_run_local=when.astimezone(zone).isoformat() if when and zone else None,
                    last_run=last.get((entry.name, key)),
                )
            )
        out.append(
            EntryPublic(
                entry=entry.name,
                description=entry.description,
                task=entry.task,
                queue=entry.queue,
                per_tenant=entry.per_tenant,
                when=_when(entry),
                runs=runs,
            )
        )
    return ScheduleList(now=now, entries=out, schedulers=list_schedulers(ctl))


class SchedulerPlan(Plan):
    """``bizosctl scheduler --dry-run``: what it would enqueue now, what it missed (runs too
    late to make), and when it wakes next."""

    entries: list[str]
    tenants: int
    would_enqueue: list[dict[str, Any]]
    missed: list[dict[str, Any]]
    next_run: dt.datetime | None


def plan_scheduler(ctl: Control) -> SchedulerPlan:
    """What ``bizosctl scheduler`` would enqueue now, changing nothing."""
    sched = Scheduler(ctl)
    sched.view = load_view(ctl, sched.entries)
    due = sched.due()
    return SchedulerPlan(
        entries=[e.name for e in sched.entries],
        tenants=len(sched.view.tenants),
        would_enqueue=[run_public(r) for r in due if not r.late],
        missed=[run_public(r) for r in due if r.late],
        next_run=sched.next_run(),
    )
