"""Putting jobs on the queue, in the caller's transaction, and asking who works it.

:func:`enqueue_operation` calls procrastinate's own ``procrastinate_defer_jobs_v1`` through
the caller's SQLAlchemy session: the state change that asks for the work and the job that
does it commit together, or neither does (a rolled-back transaction leaves no job, and a
committed one always has its job).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import text

from bizosctl.jobs.app import NAMESPACE
from bizosctl.jobs.tasks import OPERATIONS_QUEUE

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bizosctl.catalog.operations import CloseWith

RUN_OPERATION = f"{NAMESPACE}:run_operation"

_DEFER = text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, :priority, :lock, "
    ":queueing_lock, CAST(:args AS jsonb), NULL)]::procrastinate_job_to_defer_v1[]))"
)


def operation_lock(kind: str, target: str) -> str:
    """The procrastinate lock of an operation's jobs: one at a time per kind and target."""
    return f"{kind}:{target}"


def enqueue_operation(
    session: Session,
    *,
    op_id: uuid.UUID,
    kind: str,
    target: str,
    queue: str = OPERATIONS_QUEUE,
    priority: int = 0,
) -> int:
    """Queue "run operation ``op_id``" in ``session``'s transaction; returns the job id.

    Nothing is visible to workers until the caller commits (procrastinate's NOTIFY is sent
    at commit too, so a worker wakes when the job can be seen).
    """
    return defer_job(
        session,
        task=RUN_OPERATION,
        queue=queue,
        args={"op_id": str(op_id)},
        lock=operation_lock(kind, target),
        priority=priority,
    )


def defer_job(
    session: Session,
    *,
    task: str,
    queue: str,
    args: dict[str, Any],
    lock: str | None = None,
    queueing_lock: str | None = None,
    priority: int = 0,
) -> int:
    """Queue a job of the task *named* ``task`` in ``session``'s transaction (the task's code
    need not be importable here: a worker that has it runs it). Returns the job id.

    ``queueing_lock``: while a job with the same one waits (``todo``), this one is refused
    (an IntegrityError: run it in a savepoint to carry on).
    """
    return int(
        session.execute(
            _DEFER,
            {
                "queue": queue,
                "task": task,
                "priority": priority,
                "lock": lock,
                "queueing_lock": queueing_lock,
                "args": json.dumps(args),
            },
        ).scalar_one()
    )


_DEFER_TASK = text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, 0, :lock, "
    ":queueing_lock, CAST(:args AS jsonb), NULL)]::procrastinate_job_to_defer_v1[]))"
)


def enqueue_task(
    session: Session,
    *,
    task: str,
    args: dict[str, object],
    queue: str,
    lock: str | None = None,
    queueing_lock: str | None = None,
) -> int | None:
    """Queue task ``task`` (its name without the namespace) in ``session``'s transaction;
    the job id, or None when a job with that ``queueing_lock`` is queued already (a
    savepoint keeps the caller's transaction usable)."""
    from sqlalchemy.exc import IntegrityError

    params = {
        "queue": queue,
        "task": f"{NAMESPACE}:{task}",
        "lock": lock,
        "queueing_lock": queueing_lock,
        "args": json.dumps(args),
    }
    try:
        with session.begin_nested():
            return int(session.execute(_DEFER_TASK, params).scalar_one())
    except IntegrityError:
        if queueing_lock is None:
            raise
        return None


#: Finish job ``bizos_job`` as succeeded while worker ``bizos_worker`` still runs it
#: (procrastinate's own ``procrastinate_finish_job_v1``). It runs in the transaction that
#: closes the job's operation (:func:`finish_with_operation`): a row when it did so; none when
#: the job is not running there any more (a reaper re-queued it meanwhile), and the worker
#: then finishes it as procrastinate does.
#:
#: The job is found by its id alone (``MATERIALIZED``: the primary key), then checked. A
#: prepared statement planned while few jobs were running otherwise looked it up through one
#: of procrastinate's partial indexes of running jobs (by worker, or by id and lock), which
#: keep an entry for every job a burst ran until a vacuum: each close read them all, and a
#: burst of 1,000 jobs slowed down as it went (``benchmarks/jobs.py --jobs 1000``).
_FINISH_WITH_OPERATION = (
    "WITH job AS MATERIALIZED (SELECT id, status, worker_id FROM procrastinate_jobs "
    "WHERE id = %(bizos_job)s) "
    "SELECT procrastinate_finish_job_v1(id, 'succeeded', false) AS bizos_job_finished "
    "FROM job WHERE status = 'doing' AND worker_id = %(bizos_worker)s"
)


def finish_with_operation(job_id: int, worker_id: int | None) -> CloseWith:
    """What the close of a job's operation runs to finish the job too, in one commit: the
    operation's end and its job's end cannot be seen apart, and the worker skips its own
    round trip to finish the job (:func:`bizosctl.jobs.tasks.finished_with_operation`)."""
    from bizosctl.catalog.operations import CloseWith

    return CloseWith(
        sql=_FINISH_WITH_OPERATION,
        params={"bizos_job": job_id, "bizos_worker": worker_id},
    )


class WorkerPublic(BaseModel):
    id: int
    last_heartbeat: dt.datetime
    seconds_ago: float
    stale: bool
    running_jobs: int


def list_workers(session: Session, *, stalled_after: float) -> list[WorkerPublic]:
    """Every registered worker with its last heartbeat, oldest first."""
    rows = session.execute(
        text(
            "SELECT w.id, w.last_heartbeat, extract(epoch FROM now() - w.last_heartbeat) AS ago, "
            "(SELECT count(*) FROM procrastinate_jobs AS j WHERE j.worker_id = w.id "
            "AND j.status = 'doing') AS running FROM procrastinate_workers AS w "
            "ORDER BY w.last_heartbeat"
        )
    ).all()
    return [
        WorkerPublic(
            id=r.id,
            last_heartbeat=r.last_heartbeat,
            seconds_ago=round(float(r.ago), 1),
            stale=float(r.ago) > stalled_after,
            running_jobs=r.running,
        )
        for r in rows
    ]


def queued_jobs(session: Session) -> dict[str, int]:
    """Jobs waiting or running, per queue."""
    rows = session.execute(
        text(
            "SELECT queue_name, count(*) FROM procrastinate_jobs "
            "WHERE status IN ('todo', 'doing') GROUP BY 1 ORDER BY 1"
        )
    ).all()
    return {q: n for q, n in rows}
