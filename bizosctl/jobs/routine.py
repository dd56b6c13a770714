"""The platform's routine work as durable jobs: what the scheduler's fleet entries enqueue.

Each task is idempotent (it looks at what is due when it runs, not when it was queued), so a
job that runs late, twice after a worker died, or after someone did the same by hand from cron
(``tenant purge-sources``, ``secrets retire-due``) does no harm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procrastinate import Blueprint, JobContext

from bizosctl.jobs.retry import ErrorTreeRetry

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control

blueprint = Blueprint()

#: The queue of the routine jobs (``bizosctl worker`` without ``--queue`` runs it).
ROUTINE_QUEUE = "routine"


def _ctl(context: JobContext) -> Control:
    from bizosctl.catalog.control import Control, get_control

    ctl = context.additional_context.get("ctl")
    return ctl if isinstance(ctl, Control) else get_control()


@blueprint.task(
    name="purge_expired_sources", queue=ROUTINE_QUEUE, pass_context=True, retry=ErrorTreeRetry()
)
def purge_expired_sources(context: JobContext) -> dict[str, Any]:
    """Drop every kept move source whose ``--keep-source`` has expired."""
    from bizosctl.moves.kept import purge_expired_sources as purge

    return purge(_ctl(context))


@blueprint.task(
    name="retire_due_keys", queue=ROUTINE_QUEUE, pass_context=True, retry=ErrorTreeRetry()
)
def retire_due_keys(context: JobContext) -> dict[str, Any]:
    """Retire keys past their ``retire_after`` (JWT keys once no token they signed is valid)
    and destroy retired keys' material past its grace."""
    from bizosctl.security.secrets import retire_and_destroy_due

    return retire_and_destroy_due(_ctl(context)).model_dump()


@blueprint.task(name="reap_stalled_jobs", queue=ROUTINE_QUEUE, pass_context=True)
def reap_stalled_jobs(context: JobContext) -> dict[str, Any]:
    """Re-queue (or fail) the running jobs of workers silent for BIZOS_WORKER_STALLED_TIMEOUT."""
    from bizosctl.jobs.reaper import reap_stalled_in

    ctl = _ctl(context)
    s = ctl.settings
    with ctl.catalog() as session:
        reaped = reap_stalled_in(
            session, timeout=s.worker_stalled_timeout, max_attempts=s.worker_retry_max_attempts
        )
    return {"reaped": [{"job": j, "status": st} for j, st in reaped]}
