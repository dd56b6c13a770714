"""The job every long operation runs as: ``run_operation(op_id)`` resumes it to its end.

The operation engine keeps the state (steps, checkpoints, the advisory lock of the run);
the job carries only the id. Its procrastinate ``lock`` is the operation's "<kind>:<target>"
(``queue.operation_lock``), so no two workers run jobs of one operation (or of two
operations on one target) at once; the operation's own advisory lock is the last guard
(``Busy``, retried).

The operation's close finishes its job in the same commit (``queue.finish_with_operation``):
one round trip for both, and no moment where one has ended and the other not. The worker
then skips procrastinate's own finish of that job (:func:`finished_with_operation`).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from procrastinate import Blueprint, JobContext

from bizosctl.jobs.retry import ErrorTreeRetry

blueprint = Blueprint()

#: The queue operations run on (``bizosctl worker --queue operations``).
OPERATIONS_QUEUE = "operations"


@blueprint.task(
    name="run_operation", queue=OPERATIONS_QUEUE, pass_context=True, retry=ErrorTreeRetry()
)
def run_operation(context: JobContext, op_id: str) -> dict[str, Any]:
    """Run operation ``op_id`` to its end in this worker (from its last checkpoint)."""
    from bizosctl import runners
    from bizosctl.catalog.control import Control, get_control
    from bizosctl.catalog.operations import closing_with
    from bizosctl.jobs.fetch import take_claim
    from bizosctl.jobs.queue import finish_with_operation

    ctl = context.additional_context.get("ctl")
    if not isinstance(ctl, Control):
        ctl = get_control()
    job = context.job
    made = take_claim(job.id)  # the claim the worker's fetch made (jobs.fetch)
    op = uuid.UUID(op_id)
    assert job.id is not None
    with closing_with(op, finish_with_operation(job.id, job.worker_id)) as fin:
        try:
            # A second job of one operation (a command re-run with --background, or a job
            # the reaper re-queued after the operation finished elsewhere) finds it done:
            # not a failure.
            return runners.resume(ctl, op, finished_ok=True, made=made)
        finally:
            if fin.done:  # even if something failed after the close: the job has ended
                with _finished_lock:
                    _finished.add(job.id)


#: Jobs whose operation's close finished them (procrastinate's job row is final already).
_finished: set[int] = set()
_finished_lock = threading.Lock()


def finished_with_operation(job_id: int | None) -> bool:
    """True (once) when job ``job_id`` was finished by its operation's close: the worker must
    not finish or retry it again (procrastinate's ``finish_job`` refuses a finished job)."""
    with _finished_lock:
        if job_id in _finished:
            _finished.discard(job_id)
            return True
    return False
