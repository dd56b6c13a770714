"""``bizosctl schema status|sync|drift``."""

from __future__ import annotations

import typer

from bizosctl.cli.output import (
    BackgroundOpt,
    DryRunOpt,
    JsonOpt,
    handle_errors,
    print_json,
    print_submitted,
    stderr_console,
    stdout_console,
    table,
)

app = typer.Typer(
    help="Tenant schema revisions: status, parallel sync, drift.\n\n"
    "Example: bizosctl schema sync --json",
    no_args_is_help=True,
)

TenantOpt = typer.Option(None, "--tenant", help="Only this tenant (repeatable).")
TierOpt = typer.Option(None, "--tier", help="Only this tier: shared | schema | isolated.")
RegionOpt = typer.Option(None, "--region", help="Only this region.")


def _selection(tenant: list[str] | None, tier: str | None, region: str | None):  # type: ignore[no-untyped-def]
    from bizosctl.sync.targets import Selection

    return Selection(tenants=list(tenant or []), tier=tier, region=region)


@app.command("status")
@handle_errors
def status(
    tenant: list[str] | None = TenantOpt,
    tier: str | None = TierOpt,
    region: str | None = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Head revision, each target's revision, a summary, and last errors.

    Example: bizosctl schema status --tier isolated --json
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.sync.targets import status_report

    doc = status_report(get_control(), _selection(tenant, tier, region))
    unknown = doc["unknown_revisions"]
    warning = (
        f"the fleet is at revision(s) {', '.join(unknown)} that this bizosctl does not know "
        f"(its head is {doc['head']}): it is older than the fleet; run the release that has them"
    )
    if json_out:
        print_json(doc)
        if unknown:
            stderr_console().print(warning, markup=False, highlight=False)
            raise typer.Exit(1)
        return
    rows = [
        [
            t["kind"],
            t["tenant"] or "-",
            t["region"],
            t["server"],
            t["database"],
            t["schema"],
            t["revision"] or "none",
            t["status"] or "",
            t["error"] or "",
        ]
        for t in doc["targets"]
    ]
    out = stdout_console()
    out.print(
        table(
            f"Targets (head {doc['head']})",
            [
                "kind",
                "tenant",
                "region",
                "server",
                "database",
                "schema",
                "revision",
                "last",
                "error",
            ],
            rows,
        )
    )
    out.print("summary: " + ", ".join(f"{rev}: {n}" for rev, n in sorted(doc["summary"].items())))
    if unknown:
        stderr_console().print(warning, markup=False, highlight=False)
        raise typer.Exit(1)


@app.command("sync")
@handle_errors
def sync(
    to: str = typer.Option("head", "--to", help="Target revision (default head)."),
    parallel: int = typer.Option(4, "--parallel", help="Targets migrated at once, overall."),
    per_server: int = typer.Option(
        4, "--per-server", help="At most this many connections per server."
    ),
    tenant: list[str] | None = TenantOpt,
    tier: str | None = TierOpt,
    region: str | None = RegionOpt,
    canary: int = typer.Option(
        0, "--canary", help="Migrate the N smallest targets first; stop if any fails."
    ),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed target."),
    lock_timeout: str = typer.Option(
        "5s", "--lock-timeout", help="Per target: give up waiting for table locks."
    ),
    statement_timeout: str = typer.Option(
        "0", "--statement-timeout", help="Per statement; 0 = none."
    ),
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="A target another sync holds: wait for it (the default; a target the other run "
        "migrated counts as done) or, with --no-wait, report it busy and exit 1.",
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Confirm a downgrade (--to below the current revision)."
    ),
    background: bool = BackgroundOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Migrate every selected target (shared schemas, tenant schemas, isolated databases).

    Targets run in parallel, each in its own transaction under its own lock; one failure never
    stops the others (unless --fail-fast). Exit code 1 when any target failed; the JSON lists
    them. Running the same command after a crash finishes the rest.

    Example: bizosctl schema sync --canary 3 --lock-timeout 2s --json
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.durations import parse_ms
    from bizosctl.sync.engine import SyncOptions, run_sync, submit_sync

    opts = SyncOptions(
        to=to,
        selection=_selection(tenant, tier, region),
        parallel=parallel,
        per_server=per_server,
        canary=canary,
        fail_fast=fail_fast,
        lock_timeout_ms=parse_ms(lock_timeout, what="--lock-timeout"),
        statement_timeout_ms=parse_ms(statement_timeout, what="--statement-timeout"),
        dry_run=dry_run,
        yes=yes,
        wait=wait,
    )
    ctl = get_control()
    opts.validate()  # bad input is refused before any progress bar is drawn
    if background and not dry_run:
        print_submitted(submit_sync(ctl, opts), json_out=json_out)
        return
    if json_out or dry_run:
        report = run_sync(ctl, opts)
    else:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        counts = {"failed": 0}
        with Progress(
            TextColumn("[bold]sync[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TextColumn("{task.fields[rate]}/s"),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=False,
        ) as bar:
            task = bar.add_task("sync", total=None, failed=0, rate="0")
            import time

            t0 = time.perf_counter()

            def on_result(result, done, total):  # type: ignore[no-untyped-def]
                if result.status in ("failed", "busy"):
                    counts["failed"] += 1
                rate = done / max(time.perf_counter() - t0, 1e-6)
                bar.update(
                    task, completed=done, total=total, failed=counts["failed"], rate=f"{rate:.0f}"
                )

            report = run_sync(ctl, opts, on_result=on_result)
    doc = report.public()
    if json_out:
        print_json(doc)
    else:
        _render_sync(doc)
    if not report.ok and not dry_run:
        raise typer.Exit(1)


def _render_sync(doc: dict) -> None:  # type: ignore[type-arg]
    out = stdout_console()
    if doc["dry_run"]:
        if not doc["plan"]:
            out.print(f"every selected target is at {doc['to']}: nothing to do")
        for group in doc["plan"]:
            out.print(
                f"[bold]{group['count']} {group['kind']} target(s) "
                f"from {group['from'] or 'nothing'} "
                f"to {group['to']}[/]: {', '.join(group['targets'][:10])}"
                f"{' ...' if group['count'] > 10 else ''}"
            )
            out.print(
                f"-- SQL for {group['example']} (other targets differ only in the schema name)"
            )
            out.print(group["sql"], markup=False, highlight=False)
        return
    summary = ", ".join(f"{k}: {v}" for k, v in doc["summary"].items()) or "no targets"
    out.print(
        f"operation {doc['operation']}: {summary} in {doc['elapsed_s']:.2f}s (to {doc['to']})"
    )
    if doc["failed"]:
        rows = [
            [t["tenant"] or t["schema"], t["server"], t["database"], t["status"], t["error"]]
            for t in doc["failed"]
        ]
        out.print(table("Failed", ["target", "server", "database", "status", "error"], rows))


@app.command("drift")
@handle_errors
def drift(
    tenant: list[str] | None = TenantOpt,
    tier: str | None = TierOpt,
    region: str | None = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Compare each target's tables, columns, indexes, policies and triggers with its migrations.

    Exit code 1 when any target differs (an index added by hand, a policy dropped, ...).

    Example: bizosctl schema drift --json
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.sync.drift import find_drift

    doc = find_drift(get_control(), _selection(tenant, tier, region))
    if json_out:
        print_json(doc)
    else:
        out = stdout_console()
        out.print(f"checked {doc['checked']} target(s); {len(doc['drifted'])} differ")
        for t in doc["drifted"]:
            name = t["tenant"] or f"{t['server']}/{t['schema']}"
            out.print(f"[bold]{name}[/] ({t['kind']}, {t['database']})")
            for d in t["differences"][:20]:
                out.print(f"  - {d[:300]}", markup=False)
            if len(t["differences"]) > 20:
                out.print(f"  ... {len(t['differences']) - 20} more (see --json)")
    if not doc["ok"]:
        raise typer.Exit(1)
