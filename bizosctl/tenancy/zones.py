"""Tenants' time zones: where "yesterday" and "05:00" are, for the digest and the scheduler.

A tenant's zone is its own setting when it has one, else its region's default
(``region_time_zones``: Asia/Jakarta for ``id``), else UTC.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bizosctl.errors import InvalidInput

UTC_NAME = "UTC"


def check_zone(name: str) -> ZoneInfo:
    """The zone called ``name`` (IANA, e.g. ``Asia/Jakarta``); InvalidInput naming it otherwise."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise InvalidInput(f"unknown time zone {name!r} (use an IANA name such as Asia/Jakarta)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidInput(
            f"unknown time zone {name!r} (use an IANA name such as Asia/Jakarta)"
        ) from exc


def region_zone_name(region: str) -> str:
    """The default zone of a region's tenants."""
    from bizosctl.config import get_settings

    return get_settings().region_time_zones.get(region, UTC_NAME)


def zone_of(*, region: str, time_zone: str | None = None) -> ZoneInfo:
    """A tenant's zone from its own setting (may be None) and its region."""
    return check_zone(time_zone or region_zone_name(region))


def local_yesterday(zone: ZoneInfo, *, now: dt.datetime | None = None) -> dt.date:
    """The calendar day before today in ``zone``."""
    now = now or dt.datetime.now(dt.UTC)
    return (now.astimezone(zone) - dt.timedelta(days=1)).date()


def day_bounds(day: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` of a local calendar day as aware instants (23 or 25 hours across DST)."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)
