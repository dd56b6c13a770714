"""What every key rotation shares as an operation: one start-or-resume call (a rotation is
exclusive on its purpose) and a catalog change written together with the step that records it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pydantic import BaseModel
from sqlalchemy.orm import Session

from bizosctl.catalog.operations import (
    OperationKind,
    OperationRun,
    OperationStatus,
    start_or_resume,
)
from bizosctl.db.engines import translate_errors

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control


def start_rotation(
    ctl: Control,
    s: Session,
    *,
    kind: OperationKind,
    target: str,
    params: BaseModel,
    status: OperationStatus = OperationStatus.RUNNING,
) -> tuple[uuid.UUID, bool]:
    """Resume the rotation of ``target`` that a dead process left open (whatever its params:
    half a rotation must be finished before another starts), else record a new one, in the
    caller's transaction. Busy, naming the operation, while another process runs one."""
    return start_or_resume(
        ctl,
        s,
        kind=kind,
        target=target,
        params=params,
        exclusive=True,
        other_params="resume",
        status=status,
    )


def start(
    ctl: Control, *, kind: OperationKind, target: str, params: BaseModel
) -> tuple[uuid.UUID, bool]:
    """:func:`start_rotation` in a transaction of its own."""
    with ctl.catalog() as s:
        return start_rotation(ctl, s, kind=kind, target=target, params=params)


@contextmanager
def step_session(run: OperationRun) -> Iterator[Session]:
    """A Session on the run's own connection, in a savepoint: what it writes commits with the
    next ``run.step`` (the change and its checkpoint together, or neither of them)."""
    with (
        translate_errors("catalog"),
        Session(
            bind=run.conn, join_transaction_mode="create_savepoint", expire_on_commit=False
        ) as s,
    ):
        yield s
        s.commit()  # releases the savepoint; run.step commits the transaction
