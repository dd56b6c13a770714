"""The scheduler (issue 17): tenants' time zones, the calendar's next runs across DST, each run
enqueued exactly once (two schedulers at once, one SIGKILLed and restarted across 05:00),
``schedule list`` and the doctor's scheduler check.

Jobs are asserted as rows of ``procrastinate_jobs`` (task name and args): the digest itself is
another module's. Every test removes the jobs and run rows it made.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest
from children import Child, wait_for
from conftest import unique_slug
from sqlalchemy import text

from bizosctl.jobs.calendar import daily_runs, local_instant, next_daily
from bizosctl.jobs.entries import registry
from bizosctl.jobs.scheduler import Scheduler


# -- time zones ---------------------------------------------------------------------------------
def test_create_with_time_zone_and_show_it(cli, ctl):
    slug = unique_slug("z")
    r = cli(
        "tenant", "create", slug, "--name", "Zed", "--region", "global", "--tier", "shared",
        "--time-zone", "Europe/Berlin", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["time_zone"], doc["time_zone_is_default"]) == ("Europe/Berlin", False)
    listed = json.loads(cli("tenant", "list", "--json").stdout)["tenants"]
    assert {t["slug"]: t["time_zone"] for t in listed}[slug] == "Europe/Berlin"


def test_region_default_zone_is_shown(cli, make_tenant):
    slug = make_tenant(tier="shared", region="id")
    doc = json.loads(cli("tenant", "show", slug, "--json").stdout)
    assert (doc["time_zone"], doc["time_zone_is_default"]) == ("Asia/Jakarta", True)


def test_create_with_unknown_zone_exits_2_naming_it(cli, ctl):
    slug = unique_slug("z")
    r = cli(
        "tenant", "create", slug, "--name", "Zed", "--region", "global", "--tier", "shared",
        "--time-zone", "Mars/Olympus_Mons",
    )  # fmt: skip
    assert r.exit_code == 2
    assert "unknown time zone 'Mars/Olympus_Mons'" in r.stderr
    with ctl.catalog() as s:
        n = s.execute(text("SELECT count(*) FROM tenants WHERE slug = :s"), {"s": slug}).scalar()
    assert n == 0


def test_create_dry_run_with_unknown_zone_exits_2(cli):
    r = cli(
        "tenant", "create", unique_slug("z"), "--name", "Zed", "--region", "global", "--tier",
        "shared", "--time-zone", "Europe/Atlantis", "--dry-run",
    )  # fmt: skip
    assert r.exit_code == 2
    assert "unknown time zone 'Europe/Atlantis'" in r.stderr


def test_set_zone_dry_run_then_set_then_default(cli, make_tenant):
    slug = make_tenant(tier="shared", region="id")
    r = cli("tenant", "set-zone", slug, "America/New_York", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {
        "slug": slug, "from": "Asia/Jakarta", "to": "America/New_York", "default": False,
        "dry_run": True,
    }  # fmt: skip
    assert json.loads(cli("tenant", "show", slug, "--json").stdout)["time_zone"] == "Asia/Jakarta"
    r = cli("tenant", "set-zone", slug, "America/New_York")
    assert r.exit_code == 0, r.stderr
    assert "to America/New_York" in r.stdout
    assert json.loads(cli("tenant", "show", slug, "--json").stdout)["time_zone"] == (
        "America/New_York"
    )
    r = cli("tenant", "set-zone", slug, "--default", "--json")
    assert json.loads(r.stdout)["to"] == "Asia/Jakarta"
    doc = json.loads(cli("tenant", "show", slug, "--json").stdout)
    assert (doc["time_zone"], doc["time_zone_is_default"]) == ("Asia/Jakarta", True)


def test_set_zone_unknown_zone_exits_2(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("tenant", "set-zone", slug, "Nowhere/Land")
    assert r.exit_code == 2
    assert "unknown time zone 'Nowhere/Land'" in r.stderr


def test_set_zone_needs_a_zone_or_default(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("tenant", "set-zone", slug)
    assert r.exit_code == 2
    assert "give a time zone (e.g. Europe/Berlin) or --default" in r.stderr
    r = cli("tenant", "set-zone", slug, "UTC", "--default")
    assert r.exit_code == 2


def test_set_zone_unknown_tenant_exits_3(cli, ctl):
    r = cli("tenant", "set-zone", unique_slug("nope"), "UTC")
    assert r.exit_code == 3
    assert "no tenant named" in r.stderr


# -- the calendar across DST --------------------------------------------------------------------
UTC = dt.UTC


@pytest.mark.parametrize(
    ("zone", "start", "utc_hours"),
    [
        # Berlin springs forward on 2027-03-28 (05:00 CET = 04:00Z, then CEST = 03:00Z) and
        # falls back on 2027-10-31; New York on 2027-03-14 and 2027-11-07.
        ("Europe/Berlin", dt.datetime(2027, 3, 26, tzinfo=UTC), [4, 4, 3, 3, 3]),
        ("Europe/Berlin", dt.datetime(2027, 10, 29, tzinfo=UTC), [3, 3, 4, 4, 4]),
        ("America/New_York", dt.datetime(2027, 3, 12, 12, tzinfo=UTC), [10, 9, 9, 9, 9]),
        ("America/New_York", dt.datetime(2027, 11, 5, 12, tzinfo=UTC), [9, 10, 10, 10, 10]),
    ],
)
def test_next_05_00_is_once_per_local_date_across_dst(zone, start, utc_hours):
    tz = ZoneInfo(zone)
    after, seen = start, []
    for _ in range(5):
        day, when = next_daily(tz, dt.time(5), after=after)
        local = when.astimezone(tz)
        assert (local.date(), local.hour, local.minute) == (day, 5, 0)
        seen.append((day, when.hour))
        after = when
    days = [d for d, _ in seen]
    assert days == [days[0] + dt.timedelta(days=i) for i in range(5)]  # none skipped or doubled
    assert [h for _, h in seen] == utc_hours


def test_nonexistent_local_time_runs_when_the_gap_ends():
    berlin = ZoneInfo("Europe/Berlin")  # 2027-03-28: 02:00 CET jumps to 03:00 CEST
    when = local_instant(dt.date(2027, 3, 28), dt.time(2, 30), berlin)
    assert when == dt.datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
    assert when.astimezone(berlin).strftime("%H:%M %Z") == "03:00 CEST"
    ny = ZoneInfo("America/New_York")  # 2027-03-14: 02:00 EST jumps to 03:00 EDT
    assert local_instant(dt.date(2027, 3, 14), dt.time(2, 30), ny) == dt.datetime(
        2027, 3, 14, 7, 0, tzinfo=UTC
    )
    runs = daily_runs(
        berlin, dt.time(2, 30), after=dt.datetime(2027, 3, 26, tzinfo=UTC),
        until=dt.datetime(2027, 3, 31, tzinfo=UTC),
    )  # fmt: skip
    assert [d.day for d, _ in runs] == [26, 27, 28, 29, 30]


def test_repeated_local_time_runs_at_its_first_occurrence():
    berlin = ZoneInfo("Europe/Berlin")  # 2027-10-31: 02:30 happens in CEST, then in CET
    when = local_instant(dt.date(2027, 10, 31), dt.time(2, 30), berlin)
    assert when == dt.datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
    runs = daily_runs(
        berlin, dt.time(2, 30), after=dt.datetime(2027, 10, 30, tzinfo=UTC),
        until=dt.datetime(2027, 11, 2, tzinfo=UTC),
    )  # fmt: skip
    assert [d.day for d, _ in runs] == [30, 31, 1]


# -- the scheduler on the catalog, with a clock of the test's ------------------------------------
@pytest.fixture
def jobs_made(ctl):
    """Removes the jobs and run records a test made (by id and time watermarks)."""
    with ctl.catalog() as s:
        top = s.execute(text("SELECT coalesce(max(id), 0) FROM procrastinate_jobs")).scalar()
        since = s.execute(text("SELECT clock_timestamp()")).scalar()
    yield
    with ctl.catalog() as s:
        s.execute(text("DELETE FROM procrastinate_jobs WHERE id > :t"), {"t": top})
        s.execute(text("DELETE FROM scheduled_runs WHERE enqueued_at >= :s"), {"s": since})
        s.execute(text("DELETE FROM scheduler_heartbeats"))


def digest_jobs(ctl, slug):
    with ctl.catalog() as s:
        return s.execute(
            text(
                "SELECT id, task_name, args, status::text FROM procrastinate_jobs "
                "WHERE args->>'tenant' = :t ORDER BY id"
            ),
            {"t": slug},
        ).all()


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


def digest_only(ctl, clock, slugs):
    """A scheduler of the digest entry alone, seeing only ``slugs`` (the fleet has others)."""
    sched = Scheduler(ctl, clock=clock, entries=[registry(ctl.settings)[0]])
    sched.refresh()
    sched.view.tenants = [t for t in sched.view.tenants if t.slug in slugs]
    return sched


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Europe/Berlin", dt.datetime(2027, 3, 26, tzinfo=UTC)),
        ("Europe/Berlin", dt.datetime(2027, 10, 29, tzinfo=UTC)),
        ("America/New_York", dt.datetime(2027, 3, 12, tzinfo=UTC)),
        ("America/New_York", dt.datetime(2027, 11, 5, tzinfo=UTC)),
    ],
)
def test_ticking_across_dst_enqueues_one_digest_per_local_day(
    ctl, make_tenant, jobs_made, zone, start
):
    slug = make_tenant(tier="shared", time_zone=zone)
    clock = Clock(start)
    sched = digest_only(ctl, clock, {slug})
    first_seen: dict[str, dt.datetime] = {}
    while clock.at < start + dt.timedelta(days=4):  # a tick every 10 minutes for 4 days
        for run in sched.tick():
            first_seen[run.args["day"]] = clock.at
        clock.at += dt.timedelta(minutes=10)
    rows = digest_jobs(ctl, slug)
    days = [r.args["day"] for r in rows]
    assert len(days) == len(set(days)) == 4  # one per local date: none skipped or doubled
    assert {r.task_name for r in rows} == {"bizosctl:digest.run"}
    tz = ZoneInfo(zone)
    for day, at in first_seen.items():  # enqueued by the first tick at or after 05:00 local
        local = at.astimezone(tz)
        assert local.date() == dt.date.fromisoformat(day) + dt.timedelta(days=1)
        assert (local.hour, local.minute) == (5, 0)


def test_restart_after_05_00_runs_the_missed_slot_once(ctl, make_tenant, jobs_made):
    slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
    at_05_20 = dt.datetime(2027, 1, 15, 4, 20, tzinfo=UTC)  # 05:20 CET
    first = digest_only(ctl, Clock(at_05_20), {slug})
    assert [r.args for r in first.tick()] == [{"tenant": slug, "day": "2027-01-14"}]
    again = digest_only(ctl, Clock(at_05_20 + dt.timedelta(minutes=5)), {slug})  # restarted
    assert again.tick() == []
    assert len(digest_jobs(ctl, slug)) == 1
    with ctl.catalog() as s:
        run = s.execute(
            text("SELECT slot, job_id FROM scheduled_runs WHERE entry = 'digest' AND key = :k"),
            {"k": slug},
        ).one()
    assert (run.slot, run.job_id) == ("2027-01-15", digest_jobs(ctl, slug)[0].id)


def test_a_slot_missed_beyond_the_grace_window_is_reported_not_run(ctl, make_tenant, jobs_made):
    slug = make_tenant(tier="shared", time_zone="Asia/Jakarta")
    events: list[str] = []
    noon = dt.datetime(2027, 1, 15, 5, 0, tzinfo=UTC)  # 12:00 in Jakarta: 7 h after 05:00
    sched = digest_only(ctl, Clock(noon), {slug})
    sched.on_event = events.append
    assert sched.tick() == []  # grace is 6 h
    assert digest_jobs(ctl, slug) == []
    assert any("missed by more than" in e and f"digest {slug} 2027-01-15" in e for e in events)
    assert sched.tick() == []
    assert sum(slug in e for e in events) == 1  # reported once


def test_grace_window_is_a_setting(ctl, make_tenant, jobs_made, monkeypatch):
    from bizosctl.config import Settings

    assert Settings(scheduler_grace="8h").scheduler_grace == 8 * 3600
    slug = make_tenant(tier="shared", time_zone="Asia/Jakarta")
    monkeypatch.setattr(
        ctl, "settings", ctl.settings.model_copy(update={"scheduler_grace": 8 * 3600})
    )
    sched = digest_only(ctl, Clock(dt.datetime(2027, 1, 15, 5, 0, tzinfo=UTC)), {slug})
    assert [r.slot for r in sched.tick()] == ["2027-01-15"]  # 7 h late, within 8 h


def test_no_run_for_a_day_before_the_tenant_existed(ctl, make_tenant, jobs_made):
    slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
    with ctl.catalog() as s:
        created = s.execute(
            text("SELECT created_at FROM tenants WHERE slug = :s"), {"s": slug}
        ).scalar_one()
    sched = digest_only(ctl, Clock(created + dt.timedelta(minutes=1)), {slug})
    assert sched.tick() == []  # its last 05:00 was before it was created


def test_re_zoned_and_new_tenants_are_picked_up_at_refresh(ctl, make_tenant, jobs_made, cli):
    slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
    at = dt.datetime(2027, 1, 15, 4, 30, tzinfo=UTC)  # 05:30 Berlin, 23:30 in New York
    sched = digest_only(ctl, Clock(at), {slug})
    assert [r.key for r in sched.tick()] == [slug]
    assert cli("tenant", "set-zone", slug, "America/New_York").exit_code == 0
    newcomer = make_tenant(tier="shared", time_zone="Asia/Jakarta")
    sched.clock = Clock(dt.datetime(2027, 1, 15, 10, 5, tzinfo=UTC))  # 05:05 in New York
    sched.refresh()
    sched.view.tenants = [t for t in sched.view.tenants if t.slug in {slug, newcomer}]
    assert {str(t.zone) for t in sched.view.tenants} == {"America/New_York", "Asia/Jakarta"}
    # New York's 05:00 of the 15th is the same local date as Berlin's: not a second digest;
    # the newcomer's Jakarta 05:00 of the 15th (22:00Z the 14th) was before it existed.
    assert sched.tick() == []
    sched.clock = Clock(dt.datetime(2027, 1, 15, 22, 5, tzinfo=UTC))  # 05:05 in Jakarta
    assert [(r.key, r.args["day"]) for r in sched.tick()] == [(newcomer, "2027-01-15")]
    sched.clock = Clock(dt.datetime(2027, 1, 16, 10, 5, tzinfo=UTC))  # 05:05 in New York
    assert [(r.key, r.args["day"]) for r in sched.tick()] == [(slug, "2027-01-15")]


# -- real processes ----------------------------------------------------------------------------
FAST = {"BIZOS_SCHEDULER_REFRESH_INTERVAL": "0.5"}


class SchedulerProc(Child):
    """``bizosctl scheduler`` in a child process, its clock starting at ``clock``."""

    def __init__(self, clock: dt.datetime, env: dict[str, str] | None = None) -> None:
        super().__init__(
            ["scheduler", "--json"],
            {**os.environ, **FAST, "BIZOS_CLOCK_START": clock.isoformat(), **(env or {})},
        )

    def started(self) -> SchedulerProc:
        self.wait_started("the scheduler to start", "started:")
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)
        self._reader.join(5)
        assert self.proc.returncode == -signal.SIGKILL

    def terminate(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self._reader.join(5)
        assert self.proc.returncode == 0, self.lines
        return json.loads(out)


def run_row(ctl, slug):
    with ctl.catalog() as s:
        return s.execute(
            text("SELECT slot, job_id FROM scheduled_runs WHERE entry = 'digest' AND key = :k"),
            {"k": slug},
        ).all()


def test_scheduler_wakes_at_05_00_and_sigterm_exits_0(ctl, make_tenant, jobs_made):
    slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
    # 04:59:52 CET: yesterday's 05:00 is out of the grace window; today's comes in 8 s
    proc = SchedulerProc(dt.datetime(2027, 1, 15, 3, 59, 52, tzinfo=UTC)).started()
    try:
        wait_for("the 05:00 digest job", lambda: digest_jobs(ctl, slug))
    finally:
        doc = proc.terminate()
    started = next(i for i, line in enumerate(proc.lines) if "started:" in line)
    woke = next(i for i, line in enumerate(proc.lines) if f"enqueued digest {slug}" in line)
    assert woke > started  # by the wake-up at 05:00, not by the catch-up at start
    rows = digest_jobs(ctl, slug)
    assert [(r.task_name, r.args) for r in rows] == [
        ("bizosctl:digest.run", {"tenant": slug, "day": "2027-01-14"})
    ]
    assert doc["stopped_by"] == "SIGTERM"
    assert any(r["key"] == slug for r in doc["runs"])
    with ctl.catalog() as s:  # unregistered on the way out
        assert s.execute(text("SELECT count(*) FROM scheduler_heartbeats")).scalar() == 0


def test_killed_and_restarted_across_05_00_enqueues_the_run_once(ctl, make_tenant, jobs_made):
    slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
    before = SchedulerProc(dt.datetime(2027, 1, 15, 3, 55, tzinfo=UTC)).started()  # 04:55
    before.kill()
    assert digest_jobs(ctl, slug) == []
    # Restarted at 05:20, killed in the transaction that records the run: nothing of it stays.
    crashed = SchedulerProc(
        dt.datetime(2027, 1, 15, 4, 20, tzinfo=UTC), env={"BIZOS_CRASH_AT": "scheduler.enqueue"}
    )
    crashed.proc.communicate(timeout=60)
    assert crashed.proc.returncode == -signal.SIGKILL, crashed.lines
    assert digest_jobs(ctl, slug) == [] and run_row(ctl, slug) == []
    after = SchedulerProc(dt.datetime(2027, 1, 15, 4, 25, tzinfo=UTC)).started()
    wait_for("the missed run", lambda: digest_jobs(ctl, slug))
    after.kill()  # a real SIGKILL once it is enqueued
    again = SchedulerProc(dt.datetime(2027, 1, 15, 4, 40, tzinfo=UTC)).started()
    again.terminate()
    rows = digest_jobs(ctl, slug)
    assert [r.args for r in rows] == [{"tenant": slug, "day": "2027-01-14"}]
    assert run_row(ctl, slug) == [("2027-01-15", rows[0].id)]


def test_two_schedulers_at_once_enqueue_each_run_once(ctl, make_tenant, jobs_made, tmp_path):
    slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
    at = dt.datetime(2027, 1, 15, 4, 10, tzinfo=UTC)  # 05:10 CET, within the grace window
    release = tmp_path / "release"
    first = SchedulerProc(
        at, env={"BIZOS_PAUSE_AT": "scheduler.enqueue", "BIZOS_PAUSE_RELEASE": str(release)}
    )
    second = None
    try:
        wait_for("the first to hold a run uncommitted", lambda: first.saw("paused at"))
        second = SchedulerProc(at)

        def second_waits() -> bool:  # on the first's uncommitted row of the same run
            with ctl.catalog() as s:
                return bool(
                    s.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                            "'Lock' AND query LIKE 'INSERT INTO scheduled_runs%'"
                        )
                    ).scalar()
                )

        wait_for("the second scheduler to wait on the same run", second_waits)
        release.touch()
        first.started()
        second.started()
        wait_for("our tenant's digest", lambda: digest_jobs(ctl, slug))
        # let both refresh and tick a few times more
        wait_for("more refreshes", lambda: _heartbeats_advanced(ctl))
    finally:
        release.touch()
        docs = [p.terminate() for p in (first, second) if p is not None]
    assert len(digest_jobs(ctl, slug)) == 1
    with ctl.catalog() as s:
        doubles = s.execute(
            text(
                "SELECT task_name, args, count(*) FROM procrastinate_jobs "
                "WHERE task_name LIKE 'bizosctl:%' AND task_name <> 'bizosctl:run_operation' "
                "GROUP BY 1, 2 HAVING count(*) > 1"
            )
        ).all()
    assert doubles == []
    assert sum(d["enqueued"] for d in docs) >= 1


def _heartbeats_advanced(ctl) -> bool:
    with ctl.catalog() as s:
        return bool(
            s.execute(
                text(
                    "SELECT count(*) = 2 AND bool_and(last_heartbeat > started_at + "
                    "'1 second'::interval) FROM scheduler_heartbeats"
                )
            ).scalar()
        )


def test_a_tenant_created_while_it_runs_is_picked_up(ctl, make_tenant, jobs_made):
    proc = SchedulerProc(dt.datetime(2027, 1, 15, 4, 10, tzinfo=UTC)).started()  # 05:10 CET
    try:
        slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
        wait_for("the newcomer's digest", lambda: digest_jobs(ctl, slug))
    finally:
        proc.terminate()
    assert [r.args["day"] for r in digest_jobs(ctl, slug)] == ["2027-01-14"]


# -- doctor --------------------------------------------------------------------------------------
def scheduler_check(cli):
    r = cli("doctor", "--json")
    return next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "scheduler")


def test_doctor_warns_when_no_scheduler_runs(ctl, cli, jobs_made):
    check = scheduler_check(cli)
    assert (check["ok"], check["warning"]) == (True, True)
    assert check["detail"].startswith("no scheduler is running: digests")
    sched = Scheduler(ctl)
    sched.heartbeat()
    check = scheduler_check(cli)
    assert (check["ok"], check["warning"]) == (True, False)
    assert "last heartbeat" in check["detail"]
    with ctl.catalog() as s:  # silent for an hour: gone
        s.execute(
            text("UPDATE scheduler_heartbeats SET last_heartbeat = now() - '1 hour'::interval")
        )
    check = scheduler_check(cli)
    assert check["warning"] is True
    assert "no scheduler seen for 180s (the last," in check["detail"]
    sched.stop()
    assert scheduler_check(cli)["detail"].startswith("no scheduler is running")


# -- schedule list -------------------------------------------------------------------------------
def test_schedule_list_shows_next_runs_local_and_last_enqueued(ctl, cli, make_tenant, jobs_made):
    slug = make_tenant(tier="shared", time_zone="Europe/Berlin")
    r = cli("schedule", "list", "--tenant", slug, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    entries = {e["entry"]: e for e in doc["entries"]}
    assert set(entries) == {"digest", "moves.purge-sources", "keys.retire", "jobs.reap"}
    digest = entries["digest"]
    assert digest["per_tenant"] is True and digest["task"] == "bizosctl:digest.run"
    (run,) = digest["runs"]
    assert (run["key"], run["time_zone"], run["last_run"]) == (slug, "Europe/Berlin", None)
    local = dt.datetime.fromisoformat(run["next_run_local"])
    assert (local.hour, local.minute) == (5, 0)
    assert dt.datetime.fromisoformat(run["next_run"]) == local
    assert entries["jobs.reap"]["runs"][0]["key"] == "*"
    # after a run is enqueued, it is the last one
    sched = digest_only(ctl, Clock(dt.datetime(2027, 1, 15, 4, 30, tzinfo=UTC)), {slug})
    assert len(sched.tick()) == 1
    doc = json.loads(cli("schedule", "list", "--tenant", slug, "--json").stdout)
    last = next(e for e in doc["entries"] if e["entry"] == "digest")["runs"][0]["last_run"]
    assert (last["slot"], last["job_status"]) == ("2027-01-15", "todo")
    assert last["job_id"] == digest_jobs(ctl, slug)[0].id
    r = cli("schedule", "list", "--tenant", slug)
    assert r.exit_code == 0 and "digest" in r.stdout and "Europe/Berlin" in r.stdout
    assert "1 scheduler(s) running" in r.stdout  # this test's, which heartbeat at refresh
    sched.stop()
    assert "no scheduler is running" in cli("schedule", "list", "--tenant", slug).stdout


def test_schedule_list_all_tenants(cli, make_tenant):
    a = make_tenant(tier="shared", region="id")
    doc = json.loads(cli("schedule", "list", "--json").stdout)
    digest = next(e for e in doc["entries"] if e["entry"] == "digest")
    zones = {r["key"]: r["time_zone"] for r in digest["runs"]}
    assert zones[a] == "Asia/Jakarta"


def test_schedule_list_unknown_tenant_exits_3(cli, ctl):
    r = cli("schedule", "list", "--tenant", unique_slug("nope"))
    assert r.exit_code == 3
    assert "no tenant named" in r.stderr


def test_schedule_list_bad_slug_exits_2(cli, ctl):
    r = cli("schedule", "list", "--tenant", "Not A Slug!")
    assert r.exit_code == 2


def test_scheduler_dry_run_changes_nothing(ctl, cli, jobs_made):
    with ctl.catalog() as s:
        before = s.execute(text("SELECT count(*) FROM scheduled_runs")).scalar()
    r = cli("scheduler", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True and "digest" in doc["entries"]
    assert any(w["entry"] == "jobs.reap" for w in doc["would_enqueue"])
    with ctl.catalog() as s:
        assert s.execute(text("SELECT count(*) FROM scheduled_runs")).scalar() == before
        assert s.execute(text("SELECT count(*) FROM scheduler_heartbeats")).scalar() == 0


# -- the routine entries are durable jobs a worker runs -------------------------------------------
def test_a_worker_runs_the_routine_jobs_the_scheduler_enqueues(ctl, jobs_made):
    from bizosctl.jobs.app import task_names

    names = {"bizosctl:reap_stalled_jobs", "bizosctl:retire_due_keys"}
    assert names | {"bizosctl:purge_expired_sources"} <= set(task_names())
    entries = {e.name: e for e in registry(ctl.settings)}
    sched = Scheduler(ctl, entries=[entries["jobs.reap"]])
    sched.refresh()
    (reap,) = sched.tick()
    assert sched.tick() == []  # same slot: once
    keys = Scheduler(ctl, entries=[entries["keys.retire"]])
    keys.view.due["keys.retire"] = [dt.datetime.now(UTC) - dt.timedelta(seconds=1)]
    assert len(keys.tick()) == 1
    worker = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "worker", "--queue", "routine", "--json"],
        env={**os.environ, "BIZOS_WORKER_HEARTBEAT_INTERVAL": "0.3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def statuses():
        with ctl.catalog() as s:
            rows = s.execute(
                text(
                    "SELECT task_name, status::text FROM procrastinate_jobs "
                    "WHERE task_name = ANY(:n)"
                ),
                {"n": list(names)},
            ).all()
        return dict(rows) if rows and all(st == "succeeded" for _, st in rows) else None

    try:
        done = wait_for("the routine jobs to succeed", statuses)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert done == dict.fromkeys(names, "succeeded")
    assert reap.queueing_lock == "jobs.reap"


def test_old_run_records_are_pruned_keeping_the_latest(ctl, jobs_made):
    from bizosctl.jobs.entries import Daily, Every

    every = Every("test.every", "bizosctl:reap_stalled_jobs", "routine", "t", every=60)
    daily = Daily("test.daily", "bizosctl:digest.run", "digests", "t")
    rows = [
        ("test.every", "*", "a", "3 days"), ("test.every", "*", "b", "2 days"),
        ("test.every", "*", "c", "1 minute"),
        ("test.daily", "x", "d1", "40 days"), ("test.daily", "x", "d2", "35 days"),
        ("test.daily", "y", "d1", "40 days"),
    ]  # fmt: skip
    try:
        with ctl.catalog() as s:
            for entry, key, slot, ago in rows:
                s.execute(
                    text(
                        "INSERT INTO scheduled_runs (entry, key, slot, due_at, enqueued_at, "
                        "scheduler) VALUES (:e, :k, :s, now() - CAST(:a AS interval), "
                        "now() - CAST(:a AS interval), 'test')"
                    ),
                    {"e": entry, "k": key, "s": slot, "a": ago},
                )
        Scheduler(ctl, entries=[every, daily]).heartbeat()
        with ctl.catalog() as s:
            left = s.execute(
                text(
                    "SELECT entry, key, slot FROM scheduled_runs WHERE entry LIKE 'test.%' "
                    "ORDER BY 1, 2, 3"
                )
            ).all()
        assert [tuple(r) for r in left] == [
            ("test.daily", "x", "d2"), ("test.daily", "y", "d1"), ("test.every", "*", "c"),
        ]  # fmt: skip
    finally:
        with ctl.catalog() as s:
            s.execute(text("DELETE FROM scheduled_runs WHERE entry LIKE 'test.%'"))


def test_create_in_the_background_keeps_the_time_zone(ctl, jobs_made):
    from bizosctl.tenancy.provision import delete_tenant, submit_create

    slug = unique_slug("zb")
    submit_create(
        ctl, slug=slug, name="Bg", tier="shared", region="global", time_zone="America/New_York"
    )
    try:
        with ctl.catalog() as s:
            zone = s.execute(
                text("SELECT time_zone FROM tenants WHERE slug = :s"), {"s": slug}
            ).scalar_one()
        assert zone == "America/New_York"
    finally:
        delete_tenant(ctl, slug)


def test_a_demoted_jwt_key_is_due_at_its_retire_after(fresh_home):
    """In a home of its own: a JWT rotation demotes v1 until its last token expires; the
    keys.retire entry's next run is then, and once it has come a run is enqueued."""
    from bizosctl.catalog.control import get_control
    from bizosctl.security.secrets import rotate_jwt
    from bizosctl.tenancy.regions import init_home

    ctl = get_control()
    init_home(ctl)
    _ = ctl.keyring
    rotate_jwt(ctl)
    with ctl.catalog() as s:
        retire_after = s.execute(
            text("SELECT retire_after FROM keyring WHERE purpose = 'jwt' AND version = 1")
        ).scalar_one()
    entries = {e.name: e for e in registry(ctl.settings)}
    sched = Scheduler(ctl, clock=Clock(retire_after - dt.timedelta(seconds=5)))
    sched.entries = [entries["keys.retire"]]
    sched.refresh()
    assert sched.next_run() == retire_after
    assert sched.tick() == []
    sched.clock = Clock(retire_after + dt.timedelta(seconds=1))
    (run,) = sched.tick()
    assert (run.task, run.slot) == ("bizosctl:retire_due_keys", retire_after.isoformat())


def test_a_kept_move_source_is_due_when_its_keep_source_expires(ctl, cli, make_tenant, jobs_made):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "move", slug, "--to-tier", "shared", "--keep-source", "1h", "--json")
    assert r.exit_code == 0, r.output
    try:
        (kept,) = json.loads(cli("tenant", "show", slug, "--json").stdout)["kept_sources"]
        until = dt.datetime.fromtimestamp(kept["keep_until"], UTC)
        entries = {e.name: e for e in registry(ctl.settings)}
        sched = Scheduler(ctl, clock=Clock(until - dt.timedelta(seconds=5)))
        sched.entries = [entries["moves.purge-sources"]]
        sched.refresh()
        assert until in sched.view.due["moves.purge-sources"]
        # other tests' sources may have come already; ours has not
        assert all(r.due_at < until for r in sched.tick())
        sched.clock = Clock(until + dt.timedelta(seconds=1))
        runs = sched.tick()
        assert [(r.task, r.slot) for r in runs] == [
            ("bizosctl:purge_expired_sources", until.isoformat())
        ]
        assert sched.tick() == []
    finally:
        r = cli("tenant", "move", slug, "--purge-source", "--force", "--yes")
        assert r.exit_code == 0, r.output


def test_the_scheduled_digest_is_made_by_a_real_worker_once(ctl, cli, make_tenant):
    """End to end: the scheduler's 05:00 run in the tenant's zone, on BIZOS_DIGEST_QUEUE (the
    queue `digest run --background` uses), is the digest of the local day before, made by
    `bizosctl worker`; the same slot ticked again enqueues nothing."""
    import test_jobs

    gen = test_jobs.jobs.__wrapped__(ctl)
    jobs = next(gen)
    try:
        slug = make_tenant(tier="shared", region="id")  # Asia/Jakarta, UTC+7
        settings = ctl.settings.model_copy(update={"digest_queue": jobs["queue"]})
        clock = Clock(dt.datetime(2027, 1, 14, 22, 0, tzinfo=UTC))  # 05:00 on the 15th there
        sched = Scheduler(ctl, clock=clock, entries=[registry(settings)[0]])
        sched.refresh()
        sched.view.tenants = [t for t in sched.view.tenants if t.slug == slug]
        (run,) = sched.tick()
        assert run.args == {"tenant": slug, "day": "2027-01-14"}
        assert sched.tick() == []
        test_jobs.worker(jobs).started()

        def made():
            r = cli("digest", "show", slug, "--date", "2027-01-14", "--json")
            return json.loads(r.stdout)["digest"] if r.exit_code == 0 else None

        doc = wait_for("the scheduled digest", made)
        assert len(doc["insights"]) == 3 and doc["date"] == "2027-01-14"
        r = cli("digest", "list", slug, "--json")
        assert [d["date"] for d in json.loads(r.stdout)["digests"]] == ["2027-01-14"]
    finally:
        next(gen, None)
