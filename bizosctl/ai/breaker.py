"""A circuit breaker per provider: a dead provider is taken out of the path for a cool-down,
so requests do not each pay seconds of failed attempts before the fallback answers.

``closed``: calls go through; ``failures`` consecutive failed attempts open it. ``open``: calls
skip the provider until the cool-down (or a 429's ``Retry-After``) has passed. ``half_open``:
one call at a time probes the provider; a success closes the breaker, a failure opens it again.
State lives in the process (each worker learns on its own, after its first failures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BreakerState:
    state: str  # closed | open | half_open
    failures: int
    #: seconds until an open breaker lets a probe through (0 when not open)
    retry_in: float
    last_error: str | None


class Breaker:
    def __init__(
        self, *, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = "closed"
        self._failures = 0
        self._until = 0.0
        self._probing = False
        self._last_error: str | None = None

    def allow(self) -> bool:
        """May this attempt go to the provider? In ``half_open`` only one probe at a time."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open":
                if self._clock() < self._until:
                    return False
                self._state = "half_open"
                self._probing = False
            if self._probing:
                return False
            self._probing = True
            return True

    def is_open(self) -> bool:
        """Open and still cooling down (no attempt would be allowed); changes nothing."""
        with self._lock:
            return self._state == "open" and self._clock() < self._until

    def success(self) -> None:
        with self._lock:
            self._state = "closed"
            self._failures = 0
            self._probing = False

    def failure(self, error: str, *, hold: float | None = None) -> None:
        """Count a failed attempt; ``hold``: the provider asked us to stay away that long."""
        with self._lock:
            self._failures += 1
            self._last_error = error
            if self._state == "half_open" or self._failures >= self.threshold or hold:
                self._open(max(self.cooldown, hold or 0.0))

    def release(self) -> None:
        """A probe that ended without a verdict (the caller's own error) frees the slot."""
        with self._lock:
            self._probing = False

    def _open(self, seconds: float) -> None:
        self._state = "open"
        self._probing = False
        self._until = self._clock() + seconds

    def snapshot(self) -> BreakerState:
        with self._lock:
            retry_in = max(0.0, self._until - self._clock()) if self._state == "open" else 0.0
            return BreakerState(self._state, self._failures, retry_in, self._last_error)
