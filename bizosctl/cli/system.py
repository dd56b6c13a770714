"""``init``, ``quickstart``, ``doctor``, ``down``."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control


def _control() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


@handle_errors
def init(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Create BIZOS_HOME, the master key, the home region's server and the catalog.

    Running it again changes nothing.

    Example: BIZOS_HOME=/srv/bizos bizosctl init
    """
    from rich.markup import escape

    if dry_run:
        from bizosctl.tenancy.home_plans import plan_init

        plan = plan_init(_control())
        if json_out:
            print_json(
                {
                    "dry_run": True,
                    "home": str(plan.home),
                    "would_create": plan.would_create,
                    "catalog_checked": plan.catalog_checked,
                }
            )
        elif plan.would_create:
            stdout_console().print(f"init would, in {escape(str(plan.home))}:")
            for item in plan.would_create:
                stdout_console().print(f"  [green]+[/] {escape(item)}")
        else:
            stdout_console().print(f"already initialised in {plan.home}: nothing to do")
        return
    from bizosctl.tenancy.regions import init_home

    result = init_home(_control())
    if json_out:
        print_json({"home": str(result.home), "created": result.created})
        return
    if result.created:
        for item in result.created:
            stdout_console().print(f"[green]+[/] {escape(item)}")
    else:
        stdout_console().print(f"already initialised in {result.home}: nothing to do")


@handle_errors
def quickstart(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Two regions (global, id), one tenant of each tier, sample data, and a summary.

    Idempotent: a second run changes nothing and says so. What it adds is reported on stderr
    as it goes; the summary goes to stdout.

    Example: bizosctl quickstart
    """
    from rich.markup import escape

    from bizosctl.quickstart import plan_quickstart, run_quickstart

    ctl = _control()
    if dry_run:
        changes = plan_quickstart(ctl)
        if json_out:
            print_json({"dry_run": True, "would_change": changes})
        elif changes:
            stdout_console().print("quickstart would add:")
            for item in changes:
                stdout_console().print(f"  [green]+[/] {escape(item)}")
        else:
            stdout_console().print(
                "Everything is already in place: quickstart would change nothing."
            )
        return
    if json_out:
        result = run_quickstart(ctl)
    else:
        with stderr_console().status("Setting up regions, tenants and sample data..."):
            result = run_quickstart(ctl)
    if json_out:
        print_json({"changed": result.changed, "tenants": result.tenants})
        return
    out = stdout_console()
    if result.changed:
        for item in result.changed:
            stderr_console().print(f"[green]+[/] {escape(item)}")
    else:
        out.print("Everything was already in place: nothing changed.")
    rows = []
    for t in result.tenants:
        total = sum(t.row_counts.values())
        where = t.database if t.tier != "schema" else f"{t.database}.{t.schema_}"
        if t.tier == "shared":
            where = f"{t.database}.{t.schema_} (RLS)"
        rows.append([t.slug, t.tier, t.region, t.status, t.server, where, total])
    out.print(
        table("Tenants", ["slug", "tier", "region", "status", "server", "data in", "rows"], rows)
    )
    out.print(
        "\nNext:\n"
        "  bizosctl tenant list\n"
        "  bizosctl tenant show garuda\n"
        '  bizosctl tenant query acme "select status, count(*) from tasks group by 1"\n'
        "  bizosctl doctor\n"
        "  bizosctl down            # stop the embedded servers"
    )


@handle_errors
def doctor(json_out: bool = JsonOpt) -> None:
    """Check servers, extensions, revisions, RLS, roles, authentication and the master key.

    Exit code 1 when any check fails.

    Example: bizosctl doctor --json | jq '.checks[] | select(.ok == false)'
    """
    from bizosctl.doctor import run_doctor

    report = run_doctor(_control())
    if json_out:
        print_json(report)
    else:
        rows = [
            [
                "[red]FAIL[/]" if not c.ok else "[yellow]warn[/]" if c.warning else "[green]ok[/]",
                c.name,
                c.detail,
            ]
            for c in report.checks
        ]
        stdout_console().print(table("Doctor", ["", "check", "detail"], rows, markup_cols=(0,)))
    if not report.ok:
        failed = [c.name for c in report.checks if not c.ok]
        stderr_console().print(f"[red]{len(failed)} check(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(1)


@handle_errors
def down(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Stop every embedded PostgreSQL server of this BIZOS_HOME. Data stays.

    Example: bizosctl down
    """
    if dry_run:
        from bizosctl.tenancy.home_plans import plan_down

        running = plan_down(_control())
        if json_out:
            print_json({"dry_run": True, "would_stop": running})
        elif running:
            stdout_console().print(f"would stop: {', '.join(running)}")
        else:
            stdout_console().print("no embedded server is running: nothing to stop")
        return
    from bizosctl.tenancy.regions import stop_embedded

    stopped = stop_embedded(_control())
    if json_out:
        print_json({"stopped": stopped})
    elif stopped:
        stdout_console().print(f"stopped: {', '.join(stopped)}")
    else:
        stdout_console().print("no embedded server was running")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("quickstart")(quickstart)
    app.command("doctor")(doctor)
    app.command("down")(down)
