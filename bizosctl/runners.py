"""The registry of operation kinds: kind → the function that runs (or resumes) it by id.

Every long operation is recorded in the catalog (:mod:`bizosctl.catalog.operations`) before
it starts, with params that say everything needed to run it. :func:`resume` therefore runs
any open operation from its id alone: the CLI's ``ops resume ID``, a worker's job (the job
is "run operation X") and a re-run of the same command after a crash all come here or to the
same per-kind function.

The runners are named as ``"module:function"`` and imported when used, so the registry
costs nothing at start-up and imports no core package (no import cycle through it).
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from bizosctl.catalog.operations import (
    FINISHED,
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
    add_operation,
    claim,
    describe,
    mark_cancelled,
    request_cancel,
)
from bizosctl.errors import Busy, InvalidInput
from bizosctl.plans import Plan

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bizosctl.catalog.control import Control
    from bizosctl.catalog.operations import MadeClaim

Runner = Callable[["Control", OperationPublic], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """How the engine runs one kind of operation."""

    run: str  # "module:function" taking (ctl, operation) and returning its report
    #: What ``ops cancel`` does to a running operation of this kind: None when it cannot stop
    #: safely once started; otherwise a sentence for the operator (it stops at a safe point).
    cancel: str | None = None
    #: The runner opens its :class:`OperationRun` in the calling thread, and nothing before
    #: it asks whether the operation is alive (that would see the claim's own lock):
    #: :func:`resume` then claims the run in the statement that reads the operation (a
    #: worker: in the statement that fetches its job), and the run takes that claim over (one
    #: round trip fewer per resume). What the runner reads before is read while the claim is
    #: held; a runner that fails before its run gives the claim back.
    claim_first: bool = False
    #: With ``claim_first``: the runner's first checkpoint when nothing comes before it (it
    #: marks that the run started); the claim records it in its statement, and the runner's
    #: own ``if name not in run.completed: run.step(name)`` finds it done (one round trip
    #: fewer). A run that is not claimed by :func:`resume` writes it itself.
    claim_step: str | None = None


REGISTRY: dict[OperationKind, Kind] = {
    OperationKind.PING: Kind(
        "bizosctl.runners:run_ping",
        cancel="stops between two slices",
        claim_first=True,
        claim_step="started",
    ),
    OperationKind.SCHEMA_SYNC: Kind(
        "bizosctl.sync.engine:resume_sync", cancel="stops after the targets in flight"
    ),
    OperationKind.TENANT_CREATE: Kind("bizosctl.tenancy.provision:run_create", claim_first=True),
    OperationKind.TENANT_DELETE: Kind("bizosctl.tenancy.provision:run_delete", claim_first=True),
    OperationKind.TENANT_MOVE: Kind(
        "bizosctl.moves.engine:resume_operation", cancel="aborted before its switch"
    ),
    OperationKind.ROTATE_PII: Kind(
        "bizosctl.security.rotation:resume_pii_rotation",
        cancel="stops between two targets",
        claim_first=True,
    ),
    OperationKind.ROTATE_JWT: Kind(
        "bizosctl.security.secrets:resume_jwt_rotation", claim_first=True
    ),
    OperationKind.ROTATE_DB_CREDENTIALS: Kind(
        "bizosctl.security.secrets:resume_credentials_rotation", claim_first=True
    ),
    OperationKind.ROTATE_MASTER_KEY: Kind(
        "bizosctl.security.master_rotation:resume_master_rotation"
    ),
    OperationKind.ROTATE_DB_PASSWORD: Kind(
        "bizosctl.security.dbpasswords:resume_db_password_rotation", claim_first=True
    ),
    OperationKind.GDPR_EXPORT: Kind("bizosctl.privacy.export:resume_export", claim_first=True),
    OperationKind.GDPR_DELETE: Kind(
        "bizosctl.privacy.erase:resume_erase", cancel="stops between two tenants", claim_first=True
    ),
}


#: The kinds :func:`resume` claims the run of in its read (``Kind.claim_first``).
CLAIM_FIRST = tuple(kind.value for kind, entry in REGISTRY.items() if entry.claim_first)
#: The first step those claims record (``Kind.claim_step``), by kind.
CLAIM_STEPS = {
    kind.value: entry.claim_step
    for kind, entry in REGISTRY.items()
    if entry.claim_first and entry.claim_step is not None
}


def resumable_by_id(kind: str) -> bool:
    return kind in REGISTRY


def _runner(kind: str) -> Runner:
    try:
        entry = REGISTRY[OperationKind(kind)]
    except (ValueError, KeyError):
        raise InvalidInput(f"operations of kind {kind!r} cannot be resumed by id") from None
    module, _, name = entry.run.partition(":")
    fn: Runner = getattr(importlib.import_module(module), name)
    return fn


def plan_resume(
    ctl: Control, op_id: uuid.UUID, *, with_steps: bool = True, check_alive: bool = True
) -> OperationPublic:
    """The operation :func:`resume` would run, changing nothing; it refuses what ``resume``
    refuses."""
    return _check_resumable(describe(ctl, op_id, with_steps=with_steps, check_alive=check_alive))


def _check_resumable(op: OperationPublic) -> OperationPublic:
    if op.status in FINISHED:
        raise InvalidInput(f"operation {op.id} is {op.status}: there is nothing to resume")
    if op.alive:
        raise Busy(f"operation {op.id} is running in another process (pid {op.pid} on {op.host})")
    if not resumable_by_id(op.kind):
        raise InvalidInput(
            f"operations of kind {op.kind!r} cannot be resumed by id: run the same command again"
        )
    return op


def resume(
    ctl: Control,
    op_id: uuid.UUID,
    *,
    finished_ok: bool = False,
    made: MadeClaim | None = None,
) -> dict[str, Any]:
    """Run an open operation (queued, or running with no live process) to its end here.

    Raises NotFound for an unknown id, InvalidInput for a finished one (nothing to resume;
    with ``finished_ok``, as for a worker's second job of one operation, its status is
    returned instead), Busy when another process runs it now. ``made``: the worker's fetch
    of this operation's job read it and claimed it already (``jobs.fetch``).
    """
    # one statement reads it and, for a kind whose runner claims its run first thing, claims
    # that run too (the runner's OperationRun takes it over); for the other kinds whether
    # another process runs it is not asked here: the run's own lock answers that (Busy)
    with claim(ctl, op_id, kinds=CLAIM_FIRST, first_steps=CLAIM_STEPS, made=made) as op:
        if finished_ok and op.status in FINISHED:
            return {"operation": str(op_id), "status": op.status, "already_finished": True}
        _check_resumable(op)
        if op.cancel_requested:
            mark_cancelled(ctl, op_id, "cancelled before it resumed")
            return {"operation": str(op_id), "status": OperationStatus.CANCELLED}
        return _runner(op.kind)(ctl, op)


class CancelResult(BaseModel):
    operation: uuid.UUID
    kind: str
    status: str  # the operation's status after the request
    how: str  # what happens now, for the operator


def plan_cancel(ctl: Control, op_id: uuid.UUID) -> CancelResult:
    """What :func:`cancel` would do, changing nothing; it refuses what ``cancel`` refuses."""
    op = describe(ctl, op_id, with_steps=False)
    if op.status in FINISHED:
        raise InvalidInput(f"operation {op_id} is {op.status} already: there is nothing to cancel")
    try:
        entry: Kind | None = REGISTRY[OperationKind(op.kind)]
    except (ValueError, KeyError):
        entry = None
    if op.status == OperationStatus.QUEUED:
        how = "cancelled before it started"
    elif entry is None or entry.cancel is None:
        raise InvalidInput(f"a {op.kind} operation cannot stop safely once started; let it finish")
    elif op.kind == OperationKind.TENANT_MOVE and not op.alive:
        raise InvalidInput(
            f"the move of {op.target!r} stopped unfinished: `bizosctl tenant move {op.target} "
            "--abort` undoes it, `--resume` finishes it"
        )
    elif not op.alive:
        how = "cancelled (no process was running it; what it did stays done)"
    else:
        how = f"requested: it {entry.cancel}"
    status = op.status if op.alive else OperationStatus.CANCELLED
    return CancelResult(operation=op_id, kind=op.kind, status=status, how=how)


def cancel(ctl: Control, op_id: uuid.UUID) -> CancelResult:
    """Ask an operation to stop where its kind can stop safely.

    A queued operation, or one whose process died, is closed as cancelled at once (what it
    did stays done; a dead move is undone by ``tenant move --abort``, not here). A running one
    gets a request that it honours at its next safe point (a worker that picks up a queued one
    later sees it too). Raises InvalidInput for a finished operation or a kind that cannot
    stop once started.
    """
    plan = plan_cancel(ctl, op_id)
    request_cancel(ctl, op_id)
    if plan.status == OperationStatus.CANCELLED:
        mark_cancelled(ctl, op_id, "cancelled by the operator")
    return plan


# -- ops.ping: an operation that does nothing, to check workers end to end ---------------------


class PingParams(BaseModel):
    seconds: float = Field(0.0, ge=0, le=3600)


def run_ping(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """Record a step, wait ``seconds`` in slices (a cancel stops it), record another."""
    from bizosctl.faults import crash_point

    params = PingParams.model_validate(op.params)
    with OperationRun(ctl, op.id) as run:
        if "started" not in run.completed:
            run.step("started")
        crash_point("ping.started")
        end = time.monotonic() + params.seconds
        while time.monotonic() < end:
            if run.cancel_requested():
                run.finish(OperationStatus.CANCELLED, "cancelled by the operator")
                return {"operation": str(op.id), "status": OperationStatus.CANCELLED}
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        # the last checkpoint commits with the close (one round trip)
        run.finish(OperationStatus.DONE, step="waited", data={"seconds": params.seconds})
    return {"operation": str(op.id), "status": OperationStatus.DONE, "pong": True}


class PingPlan(Plan):
    """``ops ping --dry-run``."""

    kind: str = OperationKind.PING.value
    seconds: float


def plan_ping(*, seconds: float = 0.0) -> PingPlan:
    """What :func:`start_ping` would record (its parameters validated); changes nothing."""
    return PingPlan(seconds=PingParams(seconds=seconds).seconds)


def start_ping(
    s: Session,
    *,
    seconds: float = 0.0,
    status: OperationStatus = OperationStatus.RUNNING,
    target: str = "ping",
) -> uuid.UUID:
    """Record a ping (``queued`` for a worker) in the caller's transaction. Pings are not
    exclusive; ``target`` (``ping`` by default) is what their jobs' procrastinate lock is
    made of, so pings on one target run one at a time and pings on distinct ones do not."""
    params = PingParams(seconds=seconds)
    return add_operation(s, kind=OperationKind.PING, target=target, params=params, status=status)
