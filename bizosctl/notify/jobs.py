"""Webhook jobs on procrastinate; the worker's app loads ``bizosctl.notify.jobs:blueprint``.

- ``relay`` (periodic, every minute, one at a time by its lock): runs the relay loop for a
  minute; every delivery it creates is deferred as a ``deliver`` job at once, so an event
  reaches the receiver in the time of a NOTIFY, a job fetch and a request.
- ``deliver``: one attempt of one delivery; when it is to be retried the job defers itself at
  the delivery's next time (a queueing lock per delivery keeps one such job queued).
- ``sweep`` (periodic, every minute): attempts due deliveries that have no job, e.g. one whose
  worker was killed mid-request (its lease ended) or whose relay died before deferring it.

``make_blueprint()`` builds a fresh blueprint (loading one into an app renames its tasks with
the app's namespace, so each app, a test's own included, gets its own).

Every path goes through the same claim (``delivery.attempt``/``deliver_due``), so a delivery
is never sent twice at once whichever job or worker gets to it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued

from bizosctl.catalog.control import Control, get_control
from bizosctl.notify.delivery import attempt, deliver_due
from bizosctl.notify.relay import Relay

log = logging.getLogger(__name__)

QUEUE = "webhooks"
DELIVER = "bizosctl.webhooks.deliver"
RELAY = "bizosctl.webhooks.relay"
SWEEP = "bizosctl.webhooks.sweep"
RELAY_SECONDS = 60


def _ctl() -> Control:
    return get_control()


def defer_deliveries(app: procrastinate.App, task_name: str, ids: list[uuid.UUID]) -> None:
    """One ``deliver`` job per new delivery (one round trip for the batch)."""
    if ids:
        app.configure_task(task_name, queue=QUEUE).batch_defer(
            *[{"delivery_id": str(i)} for i in ids]  # type: ignore[arg-type]
        )


def _redefer(app: procrastinate.App, task_name: str, delivery_id: str, when: Any) -> None:
    try:
        app.configure_task(
            task_name,
            queue=QUEUE,
            schedule_at=when,
            queueing_lock=f"webhook-delivery:{delivery_id}",
        ).defer(delivery_id=delivery_id)
    except AlreadyEnqueued:  # another job of this delivery is queued already
        pass


def make_blueprint(*, relay_seconds: int = RELAY_SECONDS) -> procrastinate.Blueprint:
    """The webhook tasks: ``deliver``, and the periodic ``relay`` and ``sweep``."""
    bp = procrastinate.Blueprint()

    @bp.task(name=DELIVER, queue=QUEUE, pass_context=True)
    def deliver(context: procrastinate.JobContext, delivery_id: str) -> str:
        """Attempt one delivery; defer the next attempt when it is to be retried."""
        out = attempt(_ctl(), delivery_id)
        if out.next_attempt_at is not None:
            _redefer(context.app, context.job.task_name, delivery_id, out.next_attempt_at)
        return out.result

    @bp.periodic(cron="* * * * *", periodic_id="relay")
    @bp.task(
        name=RELAY,
        queue=QUEUE,
        pass_context=True,
        lock="bizosctl-webhook-relay",
        queueing_lock="bizosctl-webhook-relay",
    )
    def relay(context: procrastinate.JobContext, timestamp: int) -> int:
        """Run the relay loop for a minute (the next periodic job then takes over)."""
        app = context.app
        loop = Relay(_ctl(), on_deliveries=lambda ids: defer_deliveries(app, deliver.name, ids))
        loop.run(duration=relay_seconds)
        return loop.stats.events

    @bp.periodic(cron="* * * * *", periodic_id="sweep")
    @bp.task(name=SWEEP, queue=QUEUE, lock="bizosctl-webhook-sweep")
    def sweep(timestamp: int) -> int:
        """Attempt due deliveries that no job holds; returns how many were attempted."""
        total = 0
        while n := deliver_due(_ctl(), limit=100):
            total += n
        return total

    return bp


blueprint = make_blueprint()
