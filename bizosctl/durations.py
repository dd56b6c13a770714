"""Durations given on the command line: ``500ms``, ``5s``, ``2m``, ``1h``, ``7d``."""

from __future__ import annotations

import datetime as dt
import re

from bizosctl.errors import InvalidInput

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")


def parse_ms(value: str, *, what: str = "duration", allow_zero: bool = True) -> int:
    """Milliseconds in ``value``; a bare number means seconds."""
    m = _RE.fullmatch(value)
    if not m:
        raise InvalidInput(f"invalid {what} {value!r}: use e.g. 500ms, 5s, 2m, 1h or 7d")
    ms = int(float(m.group(1)) * _UNITS_MS[m.group(2) or "s"])
    if ms == 0 and not allow_zero:
        raise InvalidInput(f"{what} must be more than zero")
    return ms


def parse_since(
    value: str, *, what: str = "--since", now: dt.datetime | None = None
) -> dt.datetime:
    """A point in time as an operator types it: a duration back from now (``2h``, ``7d``) or
    an ISO date/time (``2026-12-01``, ``2026-12-01T08:00:00+07:00``; UTC when it has no zone).
    """
    text = value.strip()
    now = now or dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - dt.timedelta(milliseconds=parse_ms(text, what=what, allow_zero=False))
        except InvalidInput:
            raise InvalidInput(
                f"{what} must be a duration back from now (2h, 7d) or an ISO date, not {value!r}"
            ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if when > now:
        raise InvalidInput(f"{what} {value!r} is in the future")
    return when
