"""``bizosctl provider orphans``."""

from __future__ import annotations

import typer

from bizosctl.cli.output import (
    DryRunOpt,
    JsonOpt,
    YesOpt,
    confirm_destructive,
    handle_errors,
    print_json,
    stdout_console,
    table,
)

app = typer.Typer(
    help="Cloud providers (Neon, Supabase): what they hold for bizosctl.\n\n"
    "Example: bizosctl provider orphans --json",
    no_args_is_help=True,
)


@app.command("orphans")
@handle_errors
def orphans(
    delete: bool = typer.Option(
        False, "--delete", help="Delete the projects that belong to no tenant (with --yes)."
    ),
    yes: bool = YesOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Projects at the providers that belong to no tenant (or to one stuck being created),
    and tenants whose project is gone, so no failed run leaves a paid project unnoticed.

    Exit 1 when there is anything to look at.

    Example: bizosctl provider orphans --delete --yes
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.providers.cloud import delete_orphans, find_orphans

    ctl = get_control()
    if delete and not dry_run:
        confirm_destructive(yes, "deleting projects that belong to no tenant")
        report = delete_orphans(ctl)
    else:
        report = find_orphans(ctl)
    left = [p for p in report.projects if p.project_id not in report.deleted]
    if json_out:
        print_json({**report.model_dump(mode="json"), "dry_run": dry_run})
    else:
        out = stdout_console()
        rows = [
            [p.provider, p.server, p.project_id, p.name,
             "deleted" if p.project_id in report.deleted else p.reason]
            for p in report.projects
        ]  # fmt: skip
        if rows:
            out.print(table("Projects", ["provider", "server", "project", "name", "state"], rows))
        if report.missing:
            out.print(
                table(
                    "Tenants whose project is gone",
                    ["tenant", "provider", "server", "project"],
                    [[m.slug, m.provider, m.server, m.project_id] for m in report.missing],
                )
            )
        if not rows and not report.missing:
            out.print("no orphans")
        elif delete and dry_run:
            out.print(f"would delete {sum(p.deletable for p in left)} project(s)")
    if left or report.missing:
        raise typer.Exit(1)
