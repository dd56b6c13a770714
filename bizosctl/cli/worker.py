"""``bizosctl worker``: run background jobs (operations, deliveries) until stopped."""

from __future__ import annotations

import typer

from bizosctl.cli.output import (
    DryRunOpt,
    JsonOpt,
    handle_errors,
    print_json,
    stderr_console,
    stderr_line,
    stdout_console,
)


@handle_errors
def worker(
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "-c",
        help="Jobs run at once (default BIZOS_WORKER_CONCURRENCY).",
        show_default=False,
    ),
    queue: list[str] | None = typer.Option(
        None, "--queue", "-q", help="Run only this queue's jobs (repeatable; default: all)."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run queued jobs until SIGTERM or Ctrl-C; many workers may share one catalog.

    On SIGTERM the running jobs finish their current step, then the worker exits 0. A worker
    that died (SIGKILL, lost machine) has its jobs re-queued by the others once its heartbeat
    is older than BIZOS_WORKER_STALLED_TIMEOUT. Each job is reported on stderr; --json prints
    a summary when the worker stops.

    Example: bizosctl worker --concurrency 4 --queue operations
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.jobs.worker import plan_worker, serve

    ctl = get_control()
    n = concurrency if concurrency is not None else ctl.settings.worker_concurrency
    if dry_run:
        plan = plan_worker(ctl, concurrency=n, queues=queue)
        if json_out:
            print_json(plan)
        else:
            out = stdout_console()
            queues = ", ".join(plan.queues) if plan.queues else "every queue"
            waiting = ", ".join(f"{q}: {c}" for q, c in plan.jobs_waiting.items()) or "none"
            out.print(f"would run {', '.join(plan.tasks)} on {queues} (concurrency {n})")
            out.print(f"jobs waiting or running: {waiting}; live workers: {plan.live_workers}")
        return
    console = stderr_console()
    report = serve(
        ctl,
        concurrency=n,
        queues=queue or None,
        on_event=stderr_line,  # a line per job: plain, not through rich
    )
    if json_out:
        print_json(report.public())
    else:
        console.print(
            f"worker stopped ({report.stopped_by}): {report.succeeded} job(s) done, "
            f"{report.failed} failed, {report.retried} to run again",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
