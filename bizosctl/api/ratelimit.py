"""Rate limits with the ``limits`` library: a moving window per caller and route group.

The caller is the API key (its prefix) or the member, anonymous requests count per client
address. ``BIZOS_RATE_LIMIT`` is the default (100 per 10 s), ``BIZOS_RATE_LIMITS`` overrides
it per route group (``auth``, ``invoices``, ...). Counters live in memory (one process) or in
Redis (``BIZOS_REDIS_URL``: several workers or hosts share them).

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
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from bizosctl.config import Settings
from bizosctl.errors import ConfigError, ServerUnavailable, TooManyRequests

log = logging.getLogger("bizosctl.api")

#: Route groups whose limiter refuses when the store is down, whatever the setting.
FAIL_CLOSED = frozenset({"auth"})
#: Seconds between two tries of an unreachable store (requests meanwhile do not wait on it).
RETRY_STORE_AFTER = 5.0


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
        storage: Storage
        if settings.redis_url:
            storage = RedisStorage(
                settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
        else:
            storage = MemoryStorage()
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)
        self._down_since: float | None = None
        self._lock = threading.Lock()

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    def describe(self) -> dict[str, object]:
        """The store's state for ``/readyz`` (a store marked down is asked again)."""
        if not self.healthy and not self._skip_store():
            try:
                up = bool(self.storage.check())
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
