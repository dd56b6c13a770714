"""The job every long operation runs as: ``run_operation(op_id)`` resumes it to its end.

The operation engine keeps the state (steps, checkpoints, the advisory lock of the run);
the job carries only the id. Its procrastinate ``lock`` is the operation's "<kind>:<target>"
(``queue.operation_lock``), so no two workers run jobs of one operation (or of two
operations on one target) at once; the operation's own advisory lock is the last guard
(``Busy``, retried).
"""

from __future__ import annotations

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

    ctl = context.additional_context.get("ctl")
    if not isinstance(ctl, Control):
        ctl = get_control()
    # A second job of one operation (a command re-run with --background, or a job the reaper
    # re-queued after the operation finished elsewhere) finds it done: not a failure.
    return runners.resume(ctl, uuid.UUID(op_id), finished_ok=True)
