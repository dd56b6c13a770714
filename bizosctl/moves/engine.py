"""The move engine: provision, capture, copy, catch up, freeze, verify, switch, clean up.

Every step is a checkpoint of a ``tenant.move`` operation; running the same command again (or
``--resume``) after a crash continues from the last one, and ``--abort`` before the switch puts
the tenant back. Writes pause only during the freeze: the source's ``tenant_state`` says
``moving``, so the database refuses the tenant's writes with a retryable error (SQLSTATE BZ503)
while the last changes are applied and both sides are verified; the route then switches in one
catalog transaction and new sessions go to the target.

This module holds the entry points (plan and record a move, run, resume, abort, report on
it); the steps themselves are ``_Move``'s methods in ``bizosctl.moves.steps``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Operation
from bizosctl.catalog.operations import (
    OPEN,
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
    add_operation,
    is_alive,
    latest,
    patch_params,
    steps_of,
)
from bizosctl.errors import BizosError, Busy, InvalidInput, NotFound, TenantNotWritable
from bizosctl.faults import crash_point
from bizosctl.moves.plan import MovePlan, MoveRequest, current_endpoint, make_plan

# The steps themselves (re-exported: the CLI and the benchmark use them from here).
from bizosctl.moves.steps import Hooks as Hooks
from bizosctl.moves.steps import MoveReport as MoveReport
from bizosctl.moves.steps import _Move as _Move
from bizosctl.plans import Plan
from bizosctl.security.keycache import auth_changed
from bizosctl.tenancy.placement import Placement
from bizosctl.tenancy.servers import new_password

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bizosctl.jobs.background import Submitted


# -- entry points ------------------------------------------------------------------------------
def _register(
    ctl: Control,
    plan: MovePlan,
    req: MoveRequest,
    *,
    session: Session | None = None,
    status: OperationStatus = OperationStatus.RUNNING,
) -> uuid.UUID:
    """Mark the tenant moving and record the move, in ``session``'s transaction if given."""
    target = plan.target
    if target.tier == "isolated":
        target = target.with_password(ctl.seal(new_password(), context=f"role:{target.role}"))
        plan.target = target
    op_id = uuid.uuid4()
    params = {
        "tenant_id": str(plan.tenant_id),
        "slug": plan.slug,
        "source": plan.source.stored(),
        "target": target.stored(),
        "revision": plan.revision,
        "parallel": req.parallel,
        "keep_source_ms": req.keep_source_ms,
        "max_freeze_ms": req.max_freeze_ms,
        "max_rate_bytes": req.max_rate_bytes,
        "keep_until": None,
        "residency_change": req.residency_change,
        "plan": {"rows": plan.rows, "bytes": plan.bytes},
    }
    with contextlib.nullcontext(session) if session is not None else ctl.catalog() as s:
        updated = s.execute(
            text(
                "UPDATE tenants SET status = 'moving', operation_id = :op "
                "WHERE id = :t AND status = 'active' RETURNING id"
            ),
            {"op": op_id, "t": plan.tenant_id},
        ).first()
        if not updated:
            raise Busy(f"tenant {plan.slug!r} changed status meanwhile; try again")
        auth_changed(s, tenant_id=plan.tenant_id)
        add_operation(
            s, kind=OperationKind.TENANT_MOVE, target=plan.slug, params=params, status=status,
            op_id=op_id,
        )  # fmt: skip
    return op_id


def _running_move(ctl: Control, slug: str) -> Operation:
    """The tenant's unfinished move (before or after its switch), or InvalidInput."""
    current_endpoint(ctl, slug)  # NotFound for an unknown tenant
    with ctl.catalog() as s:
        op = latest(s, kind=OperationKind.TENANT_MOVE, target=slug)
    if op is None or op.status not in OPEN:  # queued (--background) or running
        raise InvalidInput(f"tenant {slug!r} is not moving")
    return op


def unfinished_move(ctl: Control, slug: str) -> Operation | None:
    try:
        return _running_move(ctl, slug)
    except InvalidInput:
        return None


def submit_move(ctl: Control, req: MoveRequest) -> Submitted | MoveReport:
    """``tenant move --background``: refuse what a move refuses, then record it (the tenant
    marked moving) and queue its job in one transaction. An unfinished move of the same
    request is queued again; one that has finished gives its report, as in the foreground."""
    from bizosctl.jobs.background import submit

    unfinished = unfinished_move(ctl, req.slug)
    if unfinished is not None:
        _same_move_or_refuse(ctl, unfinished, req)
        if is_alive(ctl, unfinished.id):
            raise Busy(
                f"tenant {req.slug!r} is being moved by a running process "
                f"(operation {unfinished.id})"
            )
        return submit(ctl, lambda s: (unfinished.id, True))
    finished = finished_move(ctl, req)
    if finished is not None:
        return finished
    plan = make_plan(ctl, req)
    return submit(
        ctl,
        lambda s: (_register(ctl, plan, req, session=s, status=OperationStatus.QUEUED), False),
    )


def submit_upgrade(ctl: Control, slug: str, *, tier: str) -> Submitted:
    """The seed's "Upgrade to Enterprise" button (``POST /tenant/upgrade``): a move to a
    higher tier, in the background, as ``tenant move SLUG --to-tier TIER --background`` with
    its defaults. InvalidInput for the same or a lower tier, Busy while a move is unfinished
    (queued or running: the button was pressed already)."""
    from bizosctl.tenancy.names import TIERS, check_tier

    check_tier(tier)
    tenant, here = current_endpoint(ctl, slug)
    unfinished = unfinished_move(ctl, slug)  # first: the tier changes at the switch already
    if unfinished is not None:
        raise Busy(f"tenant {slug!r} is moving already (operation {unfinished.id})")
    if tenant.status == "read_only":
        raise TenantNotWritable(f"tenant {slug!r} is read-only: it can upgrade once unlocked")
    if TIERS.index(tier) <= TIERS.index(here.tier):
        higher = ", ".join(TIERS[TIERS.index(here.tier) + 1 :]) or "there is none"
        raise InvalidInput(
            f"tenant {slug!r} is on the {here.tier} tier: an upgrade goes to a higher tier "
            f"({higher})"
        )
    submitted = submit_move(ctl, MoveRequest(slug=slug, to_tier=tier))
    assert not isinstance(submitted, MoveReport)  # a higher tier: no such move has finished
    return submitted


def submit_resume(ctl: Control, slug: str) -> Submitted:
    """``tenant move SLUG --resume --background``: queue the unfinished move for a worker."""
    from bizosctl.jobs.background import submit

    op = _running_move(ctl, slug)
    if is_alive(ctl, op.id):
        raise Busy(f"tenant {slug!r} is being moved by a running process (operation {op.id})")
    return submit(ctl, lambda s: (op.id, True))


def move_tenant(
    ctl: Control,
    req: MoveRequest,
    *,
    hooks: Hooks | None = None,
    progress: Callable[[str], None] | None = None,
) -> MoveReport:
    """Plan and run a move (see the module docstring). An unfinished move of the same tenant
    (a crashed run) is resumed instead: running the same command again finishes it."""
    unfinished = unfinished_move(ctl, req.slug)
    if unfinished is not None:
        _same_move_or_refuse(ctl, unfinished, req)
        return resume_move(ctl, req.slug, hooks=hooks, progress=progress)
    finished = finished_move(ctl, req)
    if finished is not None:
        return finished
    plan = make_plan(ctl, req)
    op_id = _register(ctl, plan, req)
    crash_point("move.registered")
    return _run(ctl, op_id, hooks=hooks, progress=progress, resumed=False)


def _same_move_or_refuse(ctl: Control, op: Operation, req: MoveRequest) -> None:
    """Running the same command again resumes its move; another destination is refused."""
    target = Placement.of(op.params["target"])
    source = Placement.of(op.params["source"])
    wanted = (req.to_tier, req.to_region or source.region, req.to_server or target.server)
    if (target.tier, target.region, target.server) != wanted:
        raise InvalidInput(
            f"tenant {req.slug!r} has an unfinished move to {target.tier} on {target.server} "
            f"in {target.region} (operation {op.id}): `bizosctl tenant move {req.slug} "
            f"--resume` finishes it, `bizosctl tenant move {req.slug} --abort` undoes it"
        )


def finished_move(ctl: Control, req: MoveRequest) -> MoveReport | None:
    """The report of the tenant's last move when it is the move ``req`` asks for and it has
    finished: the tenant is where that move put it, so running the same command again (say,
    after a crash that came after the switch) is done, not an error. A tenant that was
    already there before any move is still refused by the plan."""
    tenant, here = current_endpoint(ctl, req.slug)
    with ctl.catalog() as s:
        op = latest(s, kind=OperationKind.TENANT_MOVE, target=req.slug)
    if op is None or op.status != "done" or op.params.get("tenant_id") != str(tenant.id):
        return None
    target = Placement.of(op.params["target"])
    wanted = (
        req.to_tier,
        req.to_region or here.region,
        req.to_server or here.server,
    )
    if (target.tier, target.region, target.server) != wanted:
        return None
    if (here.tier, here.region, here.server, here.database, here.schema) != (
        target.tier,
        target.region,
        target.server,
        target.database,
        target.schema,
    ):
        return None
    return MoveReport(
        operation=str(op.id),
        slug=req.slug,
        source=Placement.of(op.params["source"]).public(),
        target=target.public(),
        status="done",
        keep_until=op.params.get("keep_until"),
        done_at=op.finished_at.isoformat() if op.finished_at else None,
    )


def resume_move(
    ctl: Control,
    slug: str,
    *,
    hooks: Hooks | None = None,
    progress: Callable[[str], None] | None = None,
) -> MoveReport:
    op = _running_move(ctl, slug)
    if is_alive(ctl, op.id):
        raise Busy(f"tenant {slug!r} is being moved by a running process (operation {op.id})")
    return _run(ctl, op.id, hooks=hooks, progress=progress, resumed=True)


def _run(
    ctl: Control,
    op_id: uuid.UUID,
    *,
    hooks: Hooks | None,
    progress: Callable[[str], None] | None,
    resumed: bool,
) -> MoveReport:
    with OperationRun(ctl, op_id) as run:
        params = run.params()
        params = _cloud_target(ctl, run, params)
        move = _Move(ctl, run, params, hooks, progress)
        move.report.resumed = resumed
        try:
            report = move.execute()
        except BizosError as exc:
            if run.final_status is not None:
                raise  # aborted (a mismatch): the tenant is back where it was
            slug = params["slug"]
            raise type(exc)(
                f"{exc}. The move of {slug!r} is unfinished (operation {op_id}) and its writes "
                f"go on at the source: `bizosctl tenant move {slug} --resume` continues it, "
                f"`bizosctl tenant move {slug} --abort` undoes it"
            ) from exc
        if run.final_status is not None:
            return report  # cancelled: aborted before its switch
        keep_until = time.time() + params["keep_source_ms"] / 1000

        def keep(conn: Connection) -> None:
            patch_params(conn, op_id, keep_until=keep_until)

        run.finish("done", also=keep)
        report.keep_until = keep_until
    return report


def _cloud_target(ctl: Control, run: OperationRun, params: dict[str, Any]) -> dict[str, Any]:
    """A move into a cloud region first gets the tenant its project (the steps of
    :func:`bizosctl.providers.cloud.make_project`); the target is then that project's
    server. A provider failure leaves the move unfinished: ``--resume`` continues it."""
    target = params["target"]
    account = ctl.server(target["server"])
    if not account.is_account:
        return params
    from bizosctl.providers.cloud import make_project

    try:
        server = make_project(
            ctl, run, account=account, slug=params["slug"], database=target["database"],
            tenant_id=uuid.UUID(params["tenant_id"]), reroute=False,
        )  # fmt: skip
    except BizosError as exc:
        raise type(exc)(
            f"{exc}. The move of {params['slug']!r} is unfinished (operation {run.id}): "
            f"`bizosctl tenant move {params['slug']} --resume` continues it"
        ) from exc
    with ctl.catalog() as s:
        patch_params(s, run.id, target={**target, "server": server})
    return run.params()


def resume_operation(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: run a queued move, or resume one whose process died."""
    return _run(ctl, op.id, hooks=None, progress=None, resumed=op.status == "running").public()


def abort_move(ctl: Control, slug: str) -> dict[str, Any]:
    op = _running_move(ctl, slug)
    if _switched(ctl, op.id):
        raise InvalidInput(f"the move of {slug!r} has switched already; move it back instead")
    with OperationRun(ctl, op.id) as run:
        move = _Move(ctl, run, op.params, None, None)
        move.abort(reason="aborted by the operator")
    return {"slug": slug, "operation": str(op.id), "status": "aborted"}


def move_status(ctl: Control, slug: str) -> dict[str, Any]:
    from bizosctl.moves.kept import kept_sources

    tenant, _ = current_endpoint(ctl, slug)
    with ctl.catalog() as s:
        op = latest(s, kind=OperationKind.TENANT_MOVE, target=slug)
    if op is None:
        raise NotFound(f"tenant {slug!r} has never moved")
    params = op.params
    return {
        "slug": slug,
        "tenant_status": tenant.status,
        "operation": str(op.id),
        "status": op.status,
        "alive": is_alive(ctl, op.id) if op.status == "running" else False,
        "source": Placement.of(params["source"]).public(),
        "target": Placement.of(params["target"]).public(),
        "steps": [st.flat() for st in steps_of(ctl, op.id)],
        "error": op.error,
        "keep_until": params.get("keep_until"),
        "source_purged": bool(params.get("source_purged")),
        "kept_sources": [k.public() for k in kept_sources(ctl, slug)],
    }


#: The steps of a move in order (``copy`` stands for one ``copy:<table>`` step per table).
MOVE_STEPS = ("provision", "capture", "copy", "freeze", "switch", "cleanup")


def _switched(ctl: Control, op_id: uuid.UUID) -> bool:
    return any(st.name == "switch" and st.status == "done" for st in steps_of(ctl, op_id))


def _progress_of(ctl: Control, op: Operation) -> tuple[list[str], list[str]]:
    """Steps of an unfinished move done and left, as a resumed run would see them."""
    done = [st.name for st in steps_of(ctl, op.id) if st.status == "done" and st.name != "unfreeze"]
    tables = sorted((op.params.get("plan") or {}).get("rows", {}))
    copied = {n.removeprefix("copy:") for n in done if n.startswith("copy:")}
    left = []
    for step in MOVE_STEPS:
        if step == "copy":
            left += [f"copy:{t}" for t in tables if t not in copied]
        elif step not in done:
            left.append(step)
    return done, left


class AbortPlan(Plan):
    """``tenant move SLUG --abort --dry-run``: what the abort would undo."""

    slug: str
    operation: str
    alive: bool
    source: dict[str, Any]
    target: dict[str, Any]
    done: list[str]
    capture_triggers: bool
    action: str
    sql: list[str]
    then: str


class ResumePlan(Plan):
    """``tenant move SLUG --resume --dry-run``: the steps done and the steps left."""

    slug: str
    operation: str
    source: dict[str, Any]
    target: dict[str, Any]
    done: list[str]
    left: list[str]
    max_freeze_ms: int | float | None


def plan_abort(ctl: Control, slug: str) -> AbortPlan:
    """What ``abort_move`` would undo, changing nothing (``--dry-run``); it refuses what
    ``abort_move`` refuses (no unfinished move, or one that has switched)."""
    op = _running_move(ctl, slug)
    if _switched(ctl, op.id):
        raise InvalidInput(f"the move of {slug!r} has switched already; move it back instead")
    target = Placement.of(op.params["target"])
    done, _left = _progress_of(ctl, op)
    action, sql = target.drop_summary(ctl, uuid.UUID(op.params["tenant_id"]))
    return AbortPlan(
        slug=slug,
        operation=str(op.id),
        alive=is_alive(ctl, op.id),
        source=Placement.of(op.params["source"]).public(),
        target=target.public(),
        done=done,
        capture_triggers="capture" in done,
        action=action,
        sql=sql,
        then="writes resume on the source and the tenant is active again",
    )


def plan_resume(ctl: Control, slug: str) -> ResumePlan:
    """What ``resume_move`` would continue, changing nothing (``--dry-run``); it refuses what
    ``resume_move`` refuses (no unfinished move, or one a live process is running)."""
    op = _running_move(ctl, slug)
    if is_alive(ctl, op.id):
        raise Busy(f"tenant {slug!r} is being moved by a running process (operation {op.id})")
    done, left = _progress_of(ctl, op)
    return ResumePlan(
        slug=slug,
        operation=str(op.id),
        source=Placement.of(op.params["source"]).public(),
        target=Placement.of(op.params["target"]).public(),
        done=done,
        left=left,
        max_freeze_ms=op.params.get("max_freeze_ms"),
    )
