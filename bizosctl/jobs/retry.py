"""When a failed job runs again: the error tree decides (``BizosError.retryable``).

ServerUnavailable, Busy and TenantNotWritable are retryable: the server comes back, the
other run ends, the tenant is unlocked. Everything else (bad input, a missing operation, a
bug) fails the job at once: running it again would fail the same way. A job stopped by its
worker's SIGTERM after a step (``Interrupted`` while the worker stops) is re-queued at once,
so another worker continues the operation from that step.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import TYPE_CHECKING

from procrastinate import BaseRetryStrategy, RetryDecision

from bizosctl.errors import Interrupted
from bizosctl.signals import stop_requested

if TYPE_CHECKING:
    from procrastinate.jobs import Job

MAX_BACKOFF_S = 3600.0


class ErrorTreeRetry(BaseRetryStrategy):
    """Retry errors whose ``retryable`` is true, up to ``BIZOS_WORKER_RETRY_MAX_ATTEMPTS``
    runs in all, after ``BIZOS_WORKER_RETRY_BACKOFF`` seconds doubled each time (capped at an
    hour, with up to 20 % jitter so that jobs failed by one outage do not return together)."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        from bizosctl.config import get_settings

        if isinstance(exception, Interrupted) and stop_requested():
            return RetryDecision(retry_at=dt.datetime.now(dt.UTC))
        if not getattr(exception, "retryable", False):
            return None
        settings = get_settings()
        if job.attempts + 1 >= settings.worker_retry_max_attempts:
            return None
        wait = backoff(settings.worker_retry_backoff, job)
        return RetryDecision(retry_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait))


def backoff(base: float, job: Job) -> float:
    """Seconds before the next run of ``job`` (``job.attempts`` runs have failed before)."""
    wait = min(base * 2 ** min(int(job.attempts), 30), MAX_BACKOFF_S)
    return float(wait * (1 + random.uniform(0, 0.2)))  # spreading, not secrecy
