"""The calendar's entries: what the scheduler enqueues, and when. One line each in
:func:`registry`.

Three kinds:

* :class:`Daily` per tenant: at a local time in each tenant's own zone (the digest at 05:00).
  A run is (entry, tenant, local date): one per date, whatever DST does that day
  (``calendar``). A run missed while no scheduler ran is enqueued late within
  ``BIZOS_SCHEDULER_GRACE`` of its time, never twice, never for a date before the tenant
  existed.
* :class:`WhenDue`: when the earliest pending thing of a kind falls due (a kept move source's
  ``--keep-source`` expires, a key's ``retire_after`` passes). A run is (entry, ``*``, that
  instant); its job handles everything due when it runs. No grace: something overdue is
  always handled.
* :class:`Every` N seconds, on instants aligned to the epoch so that every scheduler agrees
  on them (stalled-job reaping). Only the latest slot counts: missed ones are not caught up.

Every entry only enqueues a durable job (a task name and keyword arguments); ``bizosctl
worker`` runs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from bizosctl.jobs.calendar import aligned, daily_runs, next_daily

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings

FLEET = "*"  # the key of a run that is not one tenant's


@dataclass(frozen=True)
class TenantZone:
    slug: str
    zone: ZoneInfo
    created_at: dt.datetime


@dataclass(frozen=True)
class Run:
    """One run of an entry: its identity (entry, key, slot), its time, and its job."""

    entry: str
    key: str
    slot: str
    due_at: dt.datetime
    task: str
    queue: str
    args: dict[str, Any]
    queueing_lock: str | None = None
    #: past the grace window: reported, not enqueued
    late: bool = False


@dataclass
class View:
    """What a scheduler knows between two refreshes: tenants with their zones, and the
    pending due instants of each :class:`WhenDue` entry."""

    tenants: list[TenantZone] = field(default_factory=list)
    due: dict[str, list[dt.datetime]] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    queue: str
    description: str

    per_tenant = False

    def runs(self, view: View, *, now: dt.datetime, grace: float) -> list[Run]:
        """The runs due by ``now`` that may still be enqueued (and the ones too late)."""
        raise NotImplementedError

    def upcoming(self, view: View, *, now: dt.datetime) -> list[tuple[str, dt.datetime | None]]:
        """(key, next run) per key: each tenant, or ``*``; None when nothing is pending."""
        raise NotImplementedError


@dataclass(frozen=True)
class Daily(Entry):
    """At ``at`` local time in each tenant's zone; ``args(slug, local date)`` are the job's."""

    at: dt.time = dt.time(5, 0)
    args: Callable[[str, dt.date], dict[str, Any]] = lambda slug, day: {"tenant": slug}
    per_tenant = True

    def _run(self, slug: str, day: dt.date, when: dt.datetime, late: bool) -> Run:
        args = self.args(slug, day)
        lock = f"{self.name}:{slug}:{day.isoformat()}"
        return Run(self.name, slug, day.isoformat(), when, self.task, self.queue, args, lock, late)

    def runs(self, view: View, *, now: dt.datetime, grace: float) -> list[Run]:
        # Look back a little past the grace window: what fell out of it is reported once.
        window = dt.timedelta(seconds=grace)
        out = []
        for t in view.tenants:
            start = max(now - window - dt.timedelta(days=1), t.created_at)
            for day, when in daily_runs(t.zone, self.at, after=start, until=now):
                out.append(self._run(t.slug, day, when, late=when < now - window))
        return out

    def upcoming(self, view: View, *, now: dt.datetime) -> list[tuple[str, dt.datetime | None]]:
        return [(t.slug, next_daily(t.zone, self.at, after=now)[1]) for t in view.tenants]


@dataclass(frozen=True)
class WhenDue(Entry):
    """When something ``due(ctl)`` lists (the instants pending things fall due) has come.

    The run's slot is the *latest* instant already come: each new due instant makes a new
    run, and one thing that stays pending (its job failed) never holds back the others."""

    due: Callable[[Control], list[dt.datetime]] = lambda ctl: []

    def runs(self, view: View, *, now: dt.datetime, grace: float) -> list[Run]:
        come = [d for d in view.due.get(self.name, []) if d <= now]
        if not come:
            return []
        when = max(come).astimezone(dt.UTC)
        return [Run(self.name, FLEET, when.isoformat(), when, self.task, self.queue, {}, self.name)]

    def upcoming(self, view: View, *, now: dt.datetime) -> list[tuple[str, dt.datetime | None]]:
        later = [d for d in view.due.get(self.name, []) if d > now]
        return [(FLEET, min(later) if later else None)]


@dataclass(frozen=True)
class Every(Entry):
    """Every ``seconds(settings)`` seconds (aligned to the epoch)."""

    every: float = 60.0

    def runs(self, view: View, *, now: dt.datetime, grace: float) -> list[Run]:
        when = aligned(now, self.every)
        slot = when.isoformat()
        return [Run(self.name, FLEET, slot, when, self.task, self.queue, {}, self.name)]

    def upcoming(self, view: View, *, now: dt.datetime) -> list[tuple[str, dt.datetime | None]]:
        return [(FLEET, aligned(now, self.every) + dt.timedelta(seconds=self.every))]


# -- what falls due when ----------------------------------------------------------------------
def kept_sources_due(ctl: Control) -> list[dt.datetime]:
    """When each kept move source not purged yet expires (past ones included)."""
    from bizosctl.moves.kept import kept_sources

    return [dt.datetime.fromtimestamp(k.keep_until or 0, dt.UTC) for k in kept_sources(ctl)]


def keys_due(ctl: Control) -> list[dt.datetime]:
    """When each key is to be retired (``retire_after``) or each retired key's material
    destroyed (JWT keys at once, others after ``BIZOS_KEY_DESTROY_AFTER``)."""
    with ctl.catalog() as s:
        rows = s.execute(
            text(
                "SELECT retire_after FROM keyring WHERE retired_at IS NULL AND NOT is_primary "
                "AND retire_after IS NOT NULL "
                "UNION ALL SELECT CASE WHEN purpose = 'jwt' THEN retired_at "
                "ELSE retired_at + make_interval(secs => :grace) END FROM keyring "
                "WHERE retired_at IS NOT NULL AND destroyed_at IS NULL AND NOT is_primary"
            ),
            {"grace": float(ctl.settings.key_destroy_after)},
        ).scalars()
        return [r for r in rows if r is not None]


def digest_task() -> str:
    """The digest's task name: the ``digest.run`` task a worker of this code has, by name
    (the digest module is not imported here)."""
    from bizosctl.jobs.app import NAMESPACE, _registry

    tasks = _registry().tasks
    for name in (f"{NAMESPACE}:digest.run", "digest.run"):
        if name in tasks:
            return name
    return f"{NAMESPACE}:digest.run"


def digest_args(slug: str, day: dt.date) -> dict[str, Any]:
    """The digest run of local date ``day`` is the digest of the day before."""
    return {"tenant": slug, "day": (day - dt.timedelta(days=1)).isoformat()}


def registry(settings: Settings) -> list[Entry]:
    """Every entry of the calendar, in the order ``schedule list`` shows them."""
    from bizosctl.jobs.app import NAMESPACE
    from bizosctl.jobs.routine import ROUTINE_QUEUE as Q

    def routine(name: str) -> str:
        return f"{NAMESPACE}:{name}"

    # the queue `digest run --background` uses too (BIZOS_DIGEST_QUEUE)
    digest, digest_queue = digest_task(), settings.digest_queue
    return [
        Daily("digest", digest, digest_queue, "the CEO digest of the local day before",
              at=settings.scheduler_digest_time,
              args=digest_args),
        WhenDue("moves.purge-sources", routine("purge_expired_sources"), Q,
                "drop kept move sources whose --keep-source expired", due=kept_sources_due),
        WhenDue("keys.retire", routine("retire_due_keys"), Q,
                "retire keys past retire-after (JWT), destroy retired material", due=keys_due),
        Every("jobs.reap", routine("reap_stalled_jobs"), Q,
              "re-queue the jobs of dead workers", every=settings.scheduler_reap_interval),
    ]  # fmt: skip
