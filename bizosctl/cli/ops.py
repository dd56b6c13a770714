"""``bizosctl ops list|show|resume|cancel|ping``: every long operation, on one engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from bizosctl.cli.output import (
    BackgroundOpt,
    DryRunOpt,
    JsonOpt,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
    table,
)

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.catalog.operations import OperationPublic

app = typer.Typer(
    help="Operations (create, delete, sync, move, rotations): list, show, resume, cancel.\n\n"
    "Example: bizosctl ops list --status running",
    no_args_is_help=True,
)
OpId = typer.Argument(..., help="The operation's id (see `ops list`).", show_default=False)

STATUSES = ("queued", "running", "done", "failed", "aborted", "cancelled")


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _state(op: OperationPublic) -> str:
    if op.status == "running" and not op.alive:
        return "[yellow]stopped (resumable)[/]"
    colour = {"done": "green", "failed": "red", "running": "cyan", "queued": "blue"}.get(
        op.status, "white"
    )
    return f"[{colour}]{op.status}[/]"


def _progress(op: OperationPublic) -> str:
    p = op.progress or {}
    if p.get("total"):
        return f"{p.get('done', 0)}/{p['total']}"
    return "" if not p else str(p.get("done", ""))


@app.command("list")
@handle_errors
def list_(
    kind: str | None = typer.Option(
        None, "--kind", help="A kind (tenant.move) or its group (secrets)."
    ),
    status: str | None = typer.Option(None, "--status", help="One of: " + ", ".join(STATUSES)),
    since: str | None = typer.Option(
        None, "--since", help="Started at most this long ago (2h, 7d) or after a date."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="At most this many."),
    json_out: bool = JsonOpt,
) -> None:
    """List operations, newest first, with their status and progress.

    Example: bizosctl ops list --kind tenant.move --status running --since 1d --json
    """
    from bizosctl.catalog.operations import OperationKind, find_operations
    from bizosctl.durations import parse_since
    from bizosctl.errors import InvalidInput

    if status is not None and status not in STATUSES:
        raise InvalidInput(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    if kind is not None:
        groups = {k.value.split(".")[0] for k in OperationKind}
        if kind not in {k.value for k in OperationKind} | groups:
            known = ", ".join(sorted({k.value for k in OperationKind}))
            raise InvalidInput(f"--kind must be a kind ({known}) or a group, not {kind!r}")
    after = parse_since(since, what="--since") if since else None
    ops = find_operations(_ctl(), kind=kind, status=status, since=after, limit=limit)
    if json_out:
        print_json({"operations": [op.model_dump(mode="json") for op in ops]})
        return
    rows = [
        [str(op.id), op.kind, op.target, _state(op), _progress(op), _when(op.started_at)]
        for op in ops
    ]
    cols = ["id", "kind", "target", "status", "progress", "started"]
    t = table("Operations", cols, rows, markup_cols=(3,))
    t.columns[0].no_wrap = True
    stdout_console().print(t)


@app.command("show")
@handle_errors
def show(op_id: str = OpId, json_out: bool = JsonOpt) -> None:
    """Show one operation: its params, steps in order, progress and error.

    Example: bizosctl ops show 3f2b9c1e-7d4a-4c55-9a0e-2a1d5f0c8b61 --json
    """
    from bizosctl.catalog.operations import describe, parse_id

    op = describe(_ctl(), parse_id(op_id))
    if json_out:
        print_json({"operation": op.model_dump(mode="json")})
        return
    out = stdout_console()
    from rich.markup import escape

    from bizosctl.cli.output import clean

    out.print(f"[bold]{op.kind}[/] of {escape(clean(op.target))}: {_state(op)}")
    out.print(f"id {op.id}, started {_when(op.started_at)}, finished {_when(op.finished_at)}")
    if op.pid:
        out.print(f"last run by pid {op.pid} on {escape(clean(op.host or ''))}")
    if op.progress:
        out.print(f"progress: {_progress(op)} {escape(clean(op.progress.get('note') or ''))}")
    if op.error:
        out.print(f"[red]error:[/] {escape(clean(op.error))}")
    rows = [[st.name, st.status, _when(st.at)] for st in op.steps or []]
    out.print(table("Steps", ["step", "status", "at"], rows))


@app.command("resume")
@handle_errors
def resume(op_id: str = OpId, dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Run an unfinished operation (queued, or stopped by a crash) to its end, here and now.

    Example: bizosctl ops resume 3f2b9c1e-7d4a-4c55-9a0e-2a1d5f0c8b61
    """
    from bizosctl.catalog.operations import parse_id
    from bizosctl.runners import plan_resume
    from bizosctl.runners import resume as run

    ctl = _ctl()
    oid = parse_id(op_id)
    op = plan_resume(ctl, oid)
    if dry_run:
        done = [st.name for st in op.steps or [] if st.status == "done"]
        if json_out:
            print_json({"dry_run": True, "operation": op.model_dump(mode="json"), "done": done})
        else:
            stdout_console().print(
                f"would resume {op.kind} of {op.target} after {len(done)} step(s) done",
                markup=False,
            )
        return
    stderr_console().print(f"resuming {op.kind} of {op.target} (operation {oid})", markup=False)
    report = run(ctl, oid)
    ok = report.get("ok", True) and report.get("status") not in ("failed",)
    if json_out:
        print_json(report)
    else:
        stdout_console().print(
            f"operation {oid}: {report.get('status') or ('done' if ok else 'failed')}",
            markup=False,
        )
    if not ok:
        raise typer.Exit(1)


@app.command("cancel")
@handle_errors
def cancel(op_id: str = OpId, dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Stop an operation where its kind can stop safely: a queued one at once, a sync after
    the targets in flight, a move before its switch (aborted: the tenant stays where it was).

    Example: bizosctl ops cancel 3f2b9c1e-7d4a-4c55-9a0e-2a1d5f0c8b61
    """
    from bizosctl.catalog.operations import describe, parse_id
    from bizosctl.runners import cancel as stop
    from bizosctl.runners import plan_cancel

    ctl = _ctl()
    oid = parse_id(op_id)
    if dry_run:
        plan = plan_cancel(ctl, oid)
        if json_out:
            print_json({"dry_run": True, "cancel": plan.model_dump(mode="json")})
        else:
            stdout_console().print(f"would cancel operation {oid}: {plan.how}", markup=False)
        return
    result = stop(ctl, oid)
    if json_out:
        print_json({"cancel": result.model_dump(mode="json")})
    else:
        op = describe(ctl, oid, with_steps=False)
        stdout_console().print(f"{op.kind} {op.id}: {result.how}", markup=False)


@app.command("ping")
@handle_errors
def ping(
    seconds: float = typer.Option(0.0, "--seconds", min=0, max=3600, help="How long it runs."),
    background: bool = BackgroundOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run an operation that does nothing (a step, a wait, a step): checks the engine end to
    end, in the foreground or, with --background, on a worker.

    Example: bizosctl ops ping --background --json
    """
    from bizosctl.runners import plan_ping, start_ping
    from bizosctl.runners import resume as run

    if dry_run:
        plan = plan_ping(seconds=seconds)
        if json_out:
            print_json(plan)
        else:
            stdout_console().print(f"would run {plan.kind} for {plan.seconds}s", markup=False)
        return
    from bizosctl.catalog.operations import OperationStatus

    ctl = _ctl()
    if background:
        from bizosctl.cli.output import print_submitted
        from bizosctl.jobs.background import submit

        def record(s: Any) -> tuple[Any, bool]:
            return start_ping(s, seconds=seconds, status=OperationStatus.QUEUED), False

        print_submitted(submit(ctl, record), json_out=json_out)
        return
    with ctl.catalog() as s:
        op_id = start_ping(s, seconds=seconds, status=OperationStatus.QUEUED)
    report = run(ctl, op_id)
    if json_out:
        print_json(report)
    else:
        stdout_console().print(f"operation {op_id}: {report['status']}", markup=False)
