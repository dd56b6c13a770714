"""Rate limits with the ``limits`` library: a moving window per caller and route group.

The caller is the API key (its prefix) or the member, anonymous requests count per client
address. ``BIZOS_RATE_LIMIT`` is the default (100 per 10 s), ``BIZOS_RATE_LIMITS`` overrides
it per route group (``auth``, ``invoices``, ...). Counters live in memory (one process;
:class:`MemoryWindows`, which counts as ``limits``' memory storage does, cheaper) or in Redis
(``BIZOS_REDIS_URL``: several workers or hosts share them; ``limits``' Redis storage).

When Redis cannot be reached, auth routes refuse (503: a login flood must not get through
because the counter is down) and the others serve or refuse by ``BIZOS_RATE_LIMIT_FAIL_OPEN``;
``/readyz`` reports the store's state. Answers carry ``RateLimit-Policy`` and ``RateLimit``
(IETF draft ``draft-ietf-httpapi-ratelimit-headers``) and, when refused, ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

from bizosctl.config import Settings
from bizosctl.errors import ConfigError, ServerUnavailable, TooManyRequests

log = logging.getLogger("bizosctl.api")

#: Route groups whose limiter refuses when the store is down, whatever the setting.
FAIL_CLOSED = frozenset({"auth"})
#: Seconds between two tries of an unreachable store (requests meanwhile do not wait on it).
RETRY_STORE_AFTER = 5.0


class MemoryWindows:
    """Moving windows in this process's memory, as ``limits``' moving-window strategy on its
    memory storage counts them (same remaining and reset), without its cost on the request
    path (a list insert at the front and an expiry timer thread started per hit): per key,
    the times of the hits still in the window, oldest first."""

    SWEEP_EVERY = 10.0  # seconds between two drops of idle keys

    def __init__(self) -> None:
        self._hits: dict[str, tuple[float, deque[float]]] = {}
        self._lock = threading.Lock()
        self._swept = time.time()

    def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        key, expiry, now = item.key_for(*identifiers), item.get_expiry(), time.time()
        with self._lock:
            if now - self._swept > self.SWEEP_EVERY:
                self._sweep(now)
            window = self._window(key, expiry, now)
            if len(window) >= item.amount:
                return False
            window.append(now)
            return True

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        key, expiry, now = item.key_for(*identifiers), item.get_expiry(), time.time()
        with self._lock:
            window = self._window(key, expiry, now)
            if not window:
                return WindowStats(now + expiry, item.amount)
            return WindowStats(window[0] + expiry, item.amount - len(window))

    def _window(self, key: str, expiry: float, now: float) -> deque[float]:
        entry = self._hits.get(key)
        if entry is None:
            entry = self._hits[key] = (expiry, deque())
        window = entry[1]
        while window and window[0] < now - expiry:
            window.popleft()
        return window

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key, (expiry, window) in list(self._hits.items()):
            if not window or window[-1] < now - expiry:
                del self._hits[key]


@dataclass
class Verdict:
    policy: str
    remaining: int
    reset: int


def _parse(value: str, what: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not a rate such as 100/10seconds") from None


class Limiter:
    def __init__(self, settings: Settings) -> None:
        self.default = _parse(settings.rate_limit or "100/10seconds", "BIZOS_RATE_LIMIT")
        self.groups = {
            name: _parse(value, f"BIZOS_RATE_LIMITS[{name}]")
            for name, value in settings.rate_limits.items()
        }
        self.fail_open = settings.rate_limit_fail_open
        self.backend = "redis" if settings.redis_url else "memory"
        self.strategy: MovingWindowRateLimiter | MemoryWindows
        if settings.redis_url:
            self.storage: Storage | None = RedisStorage(
                settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            self.strategy = MovingWindowRateLimiter(self.storage)
        else:
            self.storage = None  # never down
            self.strategy = MemoryWindows()
        self._down_since: float | None = None
        self._lock = threading.Lock()

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    def describe(self) -> dict[str, object]:
        """The store's state for ``/readyz`` (a store marked down is asked again)."""
        if not self.healthy and not self._skip_store():
            try:
                up = self.storage is None or bool(self.storage.check())
            except Exception:
                up = False
            with self._lock:
                self._down_since = None if up else time.monotonic()
        return {"backend": self.backend, "ok": self.healthy}

    def check(self, group: str, caller: str) -> Verdict:
        """Count one request; TooManyRequests over the limit."""
        item = self.groups.get(group, self.default)
        policy = f'"{group}";q={item.amount};w={item.get_expiry()}'
        if self._skip_store():
            return self._store_down(group, policy, item, None)
        try:
            ok = self.strategy.hit(item, group, caller)
            stats = self.strategy.get_window_stats(item, group, caller)
        except Exception as exc:  # redis errors, timeouts: the store is down
            return self._store_down(group, policy, item, exc)
        with self._lock:
            self._down_since = None
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        if not ok:
            raise TooManyRequests(
                f"rate limit of {item.amount} requests per {item.get_expiry()} s reached",
                retry_after=max(1, reset),
            )
        return Verdict(policy, stats.remaining, reset)

    def _skip_store(self) -> bool:
        down = self._down_since
        return down is not None and time.monotonic() - down < RETRY_STORE_AFTER

    def _store_down(
        self, group: str, policy: str, item: RateLimitItem, exc: Exception | None
    ) -> Verdict:
        with self._lock:
            if exc is not None:
                if self._down_since is None:
                    log.warning("rate-limit store unreachable: %s", exc)
                self._down_since = time.monotonic()
        if group in FAIL_CLOSED or not self.fail_open:
            raise ServerUnavailable("the rate-limit store is unreachable: try again shortly")
        return Verdict(policy, item.amount, item.get_expiry())
