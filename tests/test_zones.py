"""Tenants' time zones: validation, region defaults, local days across DST."""

from __future__ import annotations

import datetime as dt

import pytest

from bizosctl.errors import InvalidInput
from bizosctl.tenancy.zones import check_zone, day_bounds, local_yesterday, zone_of


@pytest.mark.parametrize("bad", ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "x" * 80])
def test_unknown_zone_is_refused_naming_it(bad):
    with pytest.raises(InvalidInput, match="unknown time zone"):
        check_zone(bad)


def test_region_default_and_own_setting():
    assert str(zone_of(region="id")) == "Asia/Jakarta"
    assert str(zone_of(region="global")) == "UTC"
    assert str(zone_of(region="id", time_zone="Europe/Berlin")) == "Europe/Berlin"


def test_local_day_is_23_or_25_hours_across_dst():
    berlin = check_zone("Europe/Berlin")
    start, end = day_bounds(dt.date(2026, 3, 29), berlin)
    assert end - start == dt.timedelta(hours=23)
    start, end = day_bounds(dt.date(2026, 10, 25), berlin)
    assert end - start == dt.timedelta(hours=25)


def test_yesterday_is_local():
    jakarta = check_zone("Asia/Jakarta")  # UTC+7: 20:00 UTC on the 1st is the 2nd there
    now = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)
    assert local_yesterday(jakarta, now=now) == dt.date(2026, 12, 1)
    assert local_yesterday(check_zone("UTC"), now=now) == dt.date(2026, 11, 30)
