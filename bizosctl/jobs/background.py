"""``--background``: record an operation and queue the job that runs it, in one transaction.

A command run with ``--background`` validates its input exactly as in the foreground, then
records the operation (``queued``) and its job together and returns the operation's id at
once: ``bizosctl ops show ID`` follows it, a worker (``bizosctl worker``) runs it. When no
worker has been seen recently the submission still stands (a worker started later runs it),
with a warning that says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import BaseModel
from sqlalchemy import select

from bizosctl.catalog.models import Operation
from bizosctl.jobs.queue import enqueue_operation

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bizosctl.catalog.control import Control

NO_WORKER = (
    "no worker has been seen recently: the operation waits in the queue until one runs "
    "(start one with `bizosctl worker`)"
)


class Submitted(BaseModel):
    """What ``--background`` prints: the operation to follow and its job."""

    operation: uuid.UUID
    kind: str
    target: str
    job: int
    resumed: bool  # an unfinished operation of the same request was queued again
    background: bool = True
    warning: str | None = None


def submit(ctl: Control, record: Callable[[Session], tuple[uuid.UUID, bool]]) -> Submitted:
    """Run ``record(session)`` (it records or finds the operation, returning its id and whether
    it was an unfinished one) and queue its job in the same transaction."""
    from bizosctl.fleet_health import worker_seen_recently

    with ctl.catalog() as s:
        op_id, resumed = record(s)
        kind, target = s.execute(
            select(Operation.kind, Operation.target).where(Operation.id == op_id)
        ).one()
        job = enqueue_operation(s, op_id=op_id, kind=kind, target=target)
    return Submitted(
        operation=op_id,
        kind=kind,
        target=target,
        job=job,
        resumed=resumed,
        warning=None if worker_seen_recently(ctl) else NO_WORKER,
    )
