"""A shared byte-rate limit: ``--max-rate 20MB`` caps what several copy threads move together.

The move's gentle mode. The copy otherwise takes whatever the machine has, and on a small
server the application's own writes slow down while a large tenant is copied; a cap leaves
them room. A token bucket with a short burst: each chunk reserves its time slot, and a thread
sleeps only when the slots it reserved run more than ``burst`` seconds ahead of the clock.
"""

from __future__ import annotations

import re
import threading
import time

from bizosctl.errors import InvalidInput

_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_RATE_RE = re.compile(r" *(\d+(?:\.\d+)?) *([kmg]?b)? *(?:/s)? *", re.IGNORECASE)
MIN_RATE = 64 * 1024  # below this a move of any real tenant would take days


def parse_rate(value: str, *, what: str = "--max-rate") -> int:
    """Bytes a second in ``value`` (``20MB``, ``512KB/s``, ``1GB``; KB = 1024 bytes)."""
    m = _RATE_RE.fullmatch(value)
    if not m:
        raise InvalidInput(f"invalid {what} {value!r}: use e.g. 512KB, 20MB or 1GB (a second)")
    rate = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if rate < MIN_RATE:
        raise InvalidInput(f"{what} must be at least 64KB a second, not {value!r}")
    return rate


class Throttle:
    """Thread-safe: ``take(n)`` returns once ``n`` more bytes fit under the rate."""

    def __init__(self, bytes_per_second: int, *, burst: float = 0.05) -> None:
        self.rate = float(bytes_per_second)
        self.burst = burst
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            wait = self._next - now - self.burst
        if wait > 0:
            time.sleep(wait)
