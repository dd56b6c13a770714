"""Wall-clock times in a time zone as instants, across daylight-saving changes.

A daily entry runs once per *local date*: the run of a date is the instant its local time
(05:00) names in the zone. A date has exactly one such instant, so a DST change can neither
skip a run nor double it (cron-like schedulers that step through "every hour at :00" local do
both: at spring-forward the hour does not exist, at fall-back it happens twice).

* A local time that happens twice (fall-back: 02:30 in Berlin on the last Sunday of
  October) is its first occurrence (``fold=0``).
* A local time that does not exist (spring-forward: 02:30 in Berlin on the last Sunday of
  March) is the instant the gap ends (03:00 local): the run happens, as soon as it can.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

UTC = dt.UTC


def exists(local: dt.datetime) -> bool:
    """Does the aware local time ``local`` (its ``fold`` ignored) show on the zone's clocks?"""
    naive = local.replace(tzinfo=None)
    back = local.astimezone(UTC).astimezone(local.tzinfo)
    return back.replace(tzinfo=None) == naive


def local_instant(day: dt.date, at: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The UTC instant of ``at`` on local date ``day`` in ``zone`` (see the module docstring
    for the times a DST change skips or repeats)."""
    first = dt.datetime.combine(day, at, tzinfo=zone).replace(fold=0)
    if exists(first):
        return first.astimezone(UTC)
    # In a gap fold=0 reads the time with the offset before the change (an instant after
    # the gap) and fold=1 with the offset after it (an instant before the gap): the change
    # is between the two. Find it to the second.
    before = first.replace(fold=1).astimezone(UTC)
    after = first.astimezone(UTC)
    low, high = before, after  # offset(low) is the old one, offset(high) the new one
    old = low.astimezone(zone).utcoffset()
    while high - low > dt.timedelta(seconds=1):
        mid = low + (high - low) / 2
        mid = mid.replace(microsecond=0)
        if mid <= low:
            break
        if mid.astimezone(zone).utcoffset() == old:
            low = mid
        else:
            high = mid
    return high


def daily_runs(
    zone: ZoneInfo, at: dt.time, *, after: dt.datetime, until: dt.datetime
) -> list[tuple[dt.date, dt.datetime]]:
    """Every (local date, instant) of the daily ``at`` in ``zone`` with ``after < instant <=
    until``, oldest first."""
    first = after.astimezone(zone).date() - dt.timedelta(days=1)
    last = until.astimezone(zone).date() + dt.timedelta(days=1)
    out = []
    day = first
    while day <= last:
        when = local_instant(day, at, zone)
        if after < when <= until:
            out.append((day, when))
        day += dt.timedelta(days=1)
    return out


def next_daily(zone: ZoneInfo, at: dt.time, *, after: dt.datetime) -> tuple[dt.date, dt.datetime]:
    """The first (local date, instant) of the daily ``at`` in ``zone`` strictly after
    ``after``."""
    day = after.astimezone(zone).date() - dt.timedelta(days=1)
    while True:
        when = local_instant(day, at, zone)
        if when > after:
            return day, when
        day += dt.timedelta(days=1)


def aligned(now: dt.datetime, every: float) -> dt.datetime:
    """The latest instant at or before ``now`` that is a whole multiple of ``every`` seconds
    since the epoch: every scheduler agrees on it."""
    epoch = now.timestamp()
    return dt.datetime.fromtimestamp(epoch - epoch % every, UTC)
