"""``bizosctl scheduler`` (the calendar, long-running) and ``bizosctl schedule list``."""

from __future__ import annotations

import typer

from bizosctl.cli.output import (
    DryRunOpt,
    JsonOpt,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
    table,
)

schedule_app = typer.Typer(
    help="The platform's calendar: what `bizosctl scheduler` enqueues, and when.\n\n"
    "Example: bizosctl schedule list --tenant acme",
    no_args_is_help=True,
)


@handle_errors
def scheduler(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Run the calendar until SIGTERM or Ctrl-C: enqueue each due run once; workers run them.

    The digest at 05:00 (BIZOS_SCHEDULER_DIGEST_TIME) in each tenant's own time zone, kept
    move sources when they expire, keys when due, stalled-job reaping. Several schedulers may
    run at once on one catalog (a run is enqueued exactly once); one started late enqueues
    the runs it missed within BIZOS_SCHEDULER_GRACE. Each run is reported on stderr; --json
    prints a summary when it stops. SIGTERM exits 0.

    Example: bizosctl scheduler --dry-run
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.jobs.schedule import plan_scheduler
    from bizosctl.jobs.scheduler import serve

    ctl = get_control()
    if dry_run:
        plan = plan_scheduler(ctl)
        if json_out:
            print_json(plan)
            return
        out = stdout_console()
        out.print(f"entries: {', '.join(plan.entries)}; tenants: {plan.tenants}")
        for r in plan.would_enqueue:
            out.print(f"would enqueue {r['entry']} {r['key']} {r['slot']}", markup=False)
        for r in plan.missed:
            out.print(f"missed (beyond the grace window) {r['entry']} {r['key']} {r['slot']}")
        out.print(f"next run: {plan.next_run or 'none'}", markup=False)
        return
    console = stderr_console()
    report = serve(
        ctl,
        on_event=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
    )
    if json_out:
        print_json(report)
    else:
        console.print(
            f"scheduler stopped ({report.stopped_by}): {report.enqueued} run(s) enqueued",
            markup=False,
        )


@schedule_app.command("list")
@handle_errors
def list_(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's runs."),
    json_out: bool = JsonOpt,
) -> None:
    """Every entry, its next run (UTC and the tenant's local time) and its last enqueued run.

    Example: bizosctl schedule list --tenant acme --json
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.jobs.schedule import schedule_list

    doc = schedule_list(get_control(), tenant=tenant)
    if json_out:
        print_json(doc)
        return
    rows = []
    for e in doc.entries:
        for r in e.runs:
            last = r.last_run
            rows.append(
                [
                    e.entry,
                    r.key,
                    r.next_run.strftime("%Y-%m-%d %H:%M UTC") if r.next_run else "-",
                    (r.next_run_local or "-")[:16].replace("T", " ")
                    + (f" {r.time_zone}" if r.time_zone else ""),
                    f"{last.slot} (job {last.job_id or '-'}, {last.job_status or '-'})"
                    if last
                    else "-",
                ]
            )
    out = stdout_console()
    out.print(table("Schedule", ["entry", "key", "next run", "local", "last enqueued"], rows))
    live = [s for s in doc.schedulers if not s.stale]
    out.print(
        f"{len(live)} scheduler(s) running"
        if live
        else "no scheduler is running: start `bizosctl scheduler` next to `bizosctl worker`",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("scheduler")(scheduler)
    app.add_typer(schedule_app, name="schedule")
