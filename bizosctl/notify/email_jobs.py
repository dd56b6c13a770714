"""The ``email.send`` job: one attempt at one e-mail; a server that is down makes it fail
retryably, so the job system runs it again later (``ErrorTreeRetry``: the backoff and the
attempts of ``BIZOS_WORKER_RETRY_*``); the last attempt marks the message failed."""

from __future__ import annotations

import uuid

from procrastinate import Blueprint, JobContext

from bizosctl.jobs.retry import ErrorTreeRetry

blueprint = Blueprint()


@blueprint.task(name="email.send", queue="email", pass_context=True, retry=ErrorTreeRetry())
def send(context: JobContext, tenant: str, message_id: str) -> str:
    """Send e-mail ``message_id`` of ``tenant`` (one attempt, recorded)."""
    from bizosctl.catalog.control import Control, get_control
    from bizosctl.config import get_settings
    from bizosctl.notify.email import send_message

    ctl = context.additional_context.get("ctl")
    if not isinstance(ctl, Control):
        ctl = get_control()
    job = context.job
    final = job.attempts + 1 >= get_settings().worker_retry_max_attempts
    return send_message(ctl, tenant, uuid.UUID(message_id), job_id=job.id, final=final)
