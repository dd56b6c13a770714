"""``bizosctl tenant move``: the move and its modes (status, resume, abort, purge-source)."""

from __future__ import annotations

import time
from typing import Any

import typer

from bizosctl.cli.output import (
    BackgroundOpt,
    DryRunOpt,
    JsonOpt,
    YesOpt,
    confirm_destructive,
    handle_errors,
    print_json,
    print_submitted,
    stderr_console,
    stdout_console,
    table,
    to_jsonable,
)

Slug = typer.Argument(..., help="The tenant's slug, e.g. 'acme'.", show_default=False)


def _where(ep: dict[str, Any]) -> str:
    place = ep["database"] if ep["tier"] == "isolated" else f"{ep['database']}.{ep['schema']}"
    return f"{ep['tier']} on {ep['server']} ({place}, region {ep['region']})"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def _sql(lines: list[str]) -> None:
    out = stdout_console()
    for stmt in lines:
        out.print(f"  {stmt};", markup=False, highlight=False)


def _render_report(doc: dict[str, Any]) -> None:
    """A finished move (``move_tenant`` / ``resume_move``)."""
    from rich.markup import escape

    out = stdout_console()
    if doc.get("done_at"):
        out.print(
            f"the move of {doc['slug']} to {_where(doc['target'])} is done (finished at "
            f"{doc['done_at']}, operation {doc['operation']})",
            markup=False,
        )
        return
    verb = "resumed and moved" if doc.get("resumed") else "moved"
    out.print(
        f"[bold]{verb} {escape(doc['slug'])}[/]: {escape(_where(doc['source']))} -> "
        f"{escape(_where(doc['target']))}"
    )
    rows = [
        [
            name,
            t.get("rows", ""),
            t.get("target_rows", ""),
            "[green]yes[/]" if t.get("match") else "[red]NO[/]",
        ]
        for name, t in sorted(doc["tables"].items())
    ]
    if rows:
        out.print(
            table("Verified", ["table", "rows", "target rows", "match"], rows, markup_cols=(3,))
        )
    freeze = "-" if doc.get("freeze_ms") is None else f"{doc['freeze_ms']:.0f} ms"
    out.print(
        f"copied {doc['copied_bytes'] // 1024} KiB; writes paused {freeze} "
        f"({doc['freeze_attempts']} freeze attempt(s)); operation {doc['operation']}"
    )
    out.print(
        f"the source is kept until {_when(doc.get('keep_until'))}: "
        f"`bizosctl tenant move {doc['slug']} --purge-source --yes` drops it then"
    )


def _render_plan(doc: dict[str, Any]) -> None:
    out = stdout_console()
    plan = doc["plan"]
    out.print(
        f"would move {plan['slug']}: {_where(plan['source'])} -> {_where(plan['target'])}",
        markup=False,
    )
    rows = [[name, n, plan["bytes"].get(name, 0)] for name, n in sorted(plan["rows"].items())]
    out.print(table(None, ["table", "rows", "bytes (estimate)"], rows))
    out.print(
        f"{plan['total_rows']} row(s), about {plan['total_bytes'] // 1024} KiB, "
        f"at revision {plan['revision']}",
        markup=False,
    )


def _render_status(doc: dict[str, Any]) -> None:
    out = stdout_console()
    alive = " (a process is running it)" if doc["alive"] else ""
    out.print(
        f"last move of {doc['slug']}: {doc['status']}{alive}, tenant {doc['tenant_status']}, "
        f"operation {doc['operation']}",
        markup=False,
    )
    out.print(f"  from {_where(doc['source'])}", markup=False)
    out.print(f"  to   {_where(doc['target'])}", markup=False)
    if doc.get("error"):
        out.print(f"  error: {doc['error']}", markup=False)
    if doc["status"] == "done":
        kept = "purged" if doc["source_purged"] else f"kept until {_when(doc['keep_until'])}"
        out.print(f"  source {kept}", markup=False)
    rows = [[st.get("name", ""), st.get("status", ""), st.get("at", "")] for st in doc["steps"]]
    if rows:
        out.print(table("Steps", ["step", "status", "at"], rows))
    render_kept(doc["kept_sources"])


def render_kept(kept: list[dict[str, Any]]) -> None:
    """The tenant's kept move sources (``tenant show``, ``tenant move --status``)."""
    if not kept:
        return
    rows = [
        [
            _where(k["source"]),
            "expired" if k["expired"] else _when(k["keep_until"]),
            k["operation"][:8],
        ]
        for k in kept
    ]
    stdout_console().print(table("Kept move sources", ["where", "kept until", "operation"], rows))


def _render_dry(doc: dict[str, Any]) -> None:
    out = stdout_console()
    if "purge" in doc:
        for p in doc["purge"]["sources"]:
            state = "expired" if p["expired"] else f"kept until {_when(p['keep_until'])}"
            out.print(
                f"would {p['action']} (the source kept by operation {p['operation']}, {state}):",
                markup=False,
            )
            _sql(p["sql"])
    elif "abort" in doc:
        p = doc["abort"]
        out.print(
            f"would abort the move of {p['slug']} (operation {p['operation']}):", markup=False
        )
        if p["alive"]:
            out.print("  warning: a process is running this move now", markup=False)
        if p["capture_triggers"]:
            out.print(f"  remove the capture triggers at {_where(p['source'])}", markup=False)
        out.print(f"  {p['action']}", markup=False)
        _sql(p["sql"])
        out.print(f"  then {p['then']}", markup=False)
    elif "resume" in doc:
        p = doc["resume"]
        out.print(
            f"would resume the move of {p['slug']} (operation {p['operation']}): "
            f"{_where(p['source'])} -> {_where(p['target'])}",
            markup=False,
        )
        out.print(f"  done: {', '.join(p['done']) or 'nothing'}", markup=False)
        out.print(f"  left: {', '.join(p['left']) or 'nothing'}", markup=False)
    else:
        _render_plan(doc)


@handle_errors
def move(
    slug: str = Slug,
    to_tier: str | None = typer.Option(None, "--to-tier", help="shared | schema | isolated"),
    to_region: str | None = typer.Option(None, "--to-region", help="Default: the current region."),
    to_server: str | None = typer.Option(None, "--to-server", help="Default: the region's server."),
    keep_source: str = typer.Option(
        "7d", "--keep-source", help="Keep the source data this long (at most 90d)."
    ),
    max_freeze: str = typer.Option(
        "2s", "--max-freeze", help="Longest pause of writes allowed (at most 60s)."
    ),
    residency_change: str | None = typer.Option(
        None, "--residency-change", help="Reason, required to leave the tenant's region."
    ),
    parallel: int = typer.Option(4, "--parallel", help="Tables copied at once (at most 32)."),
    max_rate: str | None = typer.Option(
        None,
        "--max-rate",
        help="Gentle mode: cap the copy at this many bytes a second (e.g. 20MB), all tables "
        "together, so the application's own writes keep their pace.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted move."),
    status: bool = typer.Option(False, "--status", help="Show the tenant's last move."),
    abort: bool = typer.Option(False, "--abort", help="Undo a move that has not switched yet."),
    purge_source: bool = typer.Option(
        False, "--purge-source", help="Drop the kept source (with --yes)."
    ),
    force: bool = typer.Option(
        False, "--force", help="With --purge-source: also sources not expired yet."
    ),
    operation: str | None = typer.Option(
        None,
        "--operation",
        help="With --purge-source: only the source this move left (a unique id prefix).",
    ),
    yes: bool = YesOpt,
    background: bool = BackgroundOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Move a tenant to another tier, server or region, online: copy, catch up, verify, switch.

    Writes pause only for the final catch-up and verification (at most --max-freeze). Running
    the same command again after a crash continues from the last checkpoint. Every mode takes
    --dry-run and prints what it would do.

    With --background the move is queued for a worker (`bizosctl worker`) and the command
    returns its operation id at once; the tenant keeps working while it runs.

    Example: bizosctl tenant move acme --to-tier isolated --max-freeze 1s --max-rate 20MB
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.durations import parse_ms
    from bizosctl.errors import InvalidInput
    from bizosctl.moves import engine
    from bizosctl.moves.kept import plan_purge_sources, purge_sources
    from bizosctl.moves.plan import MoveRequest, make_plan
    from bizosctl.throttle import parse_rate

    def request() -> MoveRequest:
        if to_tier is None:
            raise InvalidInput("--to-tier is required (shared, schema or isolated)")
        return MoveRequest(
            slug=slug,
            to_tier=to_tier,
            to_region=to_region,
            to_server=to_server,
            keep_source_ms=parse_ms(keep_source, what="--keep-source"),
            max_freeze_ms=parse_ms(max_freeze, what="--max-freeze", allow_zero=False),
            residency_change=residency_change,
            parallel=parallel,
            max_rate_bytes=parse_rate(max_rate) if max_rate is not None else None,
        )

    ctl = get_control()
    modes = [
        m
        for m, on in (
            ("--status", status),
            ("--abort", abort),
            ("--purge-source", purge_source),
            ("--resume", resume),
        )
        if on
    ]
    if len(modes) > 1:
        raise InvalidInput(f"choose one of {', '.join(modes)}")
    if background and set(modes) - {"--resume"}:
        raise InvalidInput(f"--background goes with a move or --resume, not {modes[0]}")
    doc: dict[str, Any]
    if status:
        doc = engine.move_status(ctl, slug)
        print_json(doc) if json_out else _render_status(doc)
        return
    if dry_run:
        if abort:
            doc = {"dry_run": True, "abort": engine.plan_abort(ctl, slug)}
        elif purge_source:
            doc = {
                "dry_run": True,
                "purge": plan_purge_sources(ctl, slug, operation=operation, force=force),
            }
        elif resume:
            doc = {"dry_run": True, "resume": engine.plan_resume(ctl, slug)}
        else:
            doc = {"dry_run": True, "plan": make_plan(ctl, request()).public()}
        print_json(doc) if json_out else _render_dry(to_jsonable(doc))
        return
    if abort:
        doc = engine.abort_move(ctl, slug)
        if json_out:
            print_json(doc)
        else:
            stdout_console().print(
                f"aborted the move of {slug} (operation {doc['operation']}): the tenant is back "
                "where it was and writes resumed",
                markup=False,
            )
        return
    if operation is not None and not purge_source:
        raise InvalidInput("--operation goes with --purge-source")
    if purge_source:
        plan = plan_purge_sources(ctl, slug, operation=operation, force=force)  # refuse first
        n = len(plan.sources)
        what = "the kept source" if n == 1 else f"{n} kept sources"
        confirm_destructive(yes, f"purging {what} of {slug!r}")
        doc = purge_sources(ctl, slug, operation=operation, force=force)
        if json_out:
            print_json(doc)
        else:
            for p in doc["purged"]:
                stdout_console().print(
                    f"purged the kept source of {slug}: {_where(p['source'])} (operation "
                    f"{p['operation']})",
                    markup=False,
                )
        return
    progress = None if json_out else (lambda msg: stderr_console().print(f"[dim]{msg}[/]"))
    if background:
        submitted = (
            engine.submit_resume(ctl, slug) if resume else engine.submit_move(ctl, request())
        )
        if isinstance(submitted, engine.MoveReport):  # that very move has finished already
            doc = submitted.public()
            print_json(doc) if json_out else _render_report(doc)
        else:
            print_submitted(submitted, json_out=json_out)
        return
    if resume:  # the same destination again also resumes (in move_tenant)
        doc = engine.resume_move(ctl, slug, progress=progress).public()
    else:
        doc = engine.move_tenant(ctl, request(), progress=progress).public()
    if doc["status"] == "aborted":  # cancelled (`ops cancel`) before its switch
        if json_out:
            print_json(doc)
        else:
            stderr_console().print(
                f"the move of {slug} was cancelled and aborted before its switch: the tenant "
                "is where it was and its writes go on"
            )
        raise typer.Exit(1)
    print_json(doc) if json_out else _render_report(doc)
