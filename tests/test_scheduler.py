"""The scheduler (issue 17): tenants' time zones, the calendar's next runs across DST, each run
enqueued exactly once (two schedulers at once, one SIGKILLed and restarted across 05:00),
``schedule list`` and the doctor's scheduler check.

Jobs are asserted as rows of ``procrastinate_jobs`` (task name and args): the digest itself is
another module's. Every test removes the jobs and run rows it made.
"""

from __future__ import annotations

import json

from conftest import unique_slug
from sqlalchemy import text


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
