"""``bizosctl tenant create|list|show|lock|unlock|delete|query|move``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from bizosctl.cli.move import move as move_command
from bizosctl.cli.output import (
    BackgroundOpt,
    DryRunOpt,
    JsonOpt,
    YesOpt,
    confirm_destructive,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
    table,
    to_jsonable,
)

app = typer.Typer(
    help="Tenants: create them in a tier and region, inspect, lock, delete, query.\n\n"
    "Example: bizosctl tenant create acme --name 'Acme' --region global --tier shared",
    no_args_is_help=True,
)
Slug = typer.Argument(..., help="The tenant's slug, e.g. 'acme'.", show_default=False)

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


def _render_tenants(tenants: list, title: str = "Tenants") -> None:  # type: ignore[type-arg]
    rows = [
        [
            t.slug,
            t.name,
            t.tier,
            t.region,
            t.status,
            t.server,
            t.database,
            t.schema_,
            t.time_zone,
            t.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for t in tenants
    ]
    cols = ["slug", "name", "tier", "region", "status", "server", "database", "schema", "zone"]
    cols.append("created")
    stdout_console().print(table(title, cols, rows))


@app.command("create")
@handle_errors
def create(
    slug: str = Slug,
    name: str = typer.Option(..., "--name", help="Display name."),
    region: str = typer.Option(..., "--region", help="Where the tenant's data lives."),
    tier: str = typer.Option(..., "--tier", help="shared | schema | isolated"),
    owner_email: str | None = typer.Option(
        None, "--owner-email", help="Owner's e-mail (stored as a keyed hash)."
    ),
    time_zone: str | None = typer.Option(
        None,
        "--time-zone",
        help="IANA zone of its 'today' and 05:00 digest (default: the region's, see "
        "BIZOS_REGION_TIME_ZONES).",
        show_default=False,
    ),
    background: bool = BackgroundOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create a tenant in a tier and region. Running it again after a crash finishes it.

    With --background the tenant is registered (provisioning) and a worker builds it.

    Example: bizosctl tenant create globex --name "Globex" --region id --tier isolated
    """
    from bizosctl.tenancy.lifecycle import get_tenant
    from bizosctl.tenancy.provision import create_tenant, plan_create, submit_create

    ctl = _ctl()
    if dry_run:
        plan = plan_create(ctl, slug=slug, tier=tier, region=region, name=name, time_zone=time_zone)
        if json_out:
            print_json(plan)
        else:
            stdout_console().print(
                f"would create {slug} ({tier}) in {plan.server}: "
                f"database {plan.database}, schema {plan.schema_}"
            )
        return
    if background:
        from bizosctl.cli.output import print_submitted

        sub = submit_create(
            ctl,
            slug=slug,
            name=name,
            tier=tier,
            region=region,
            owner_email=owner_email,
            time_zone=time_zone,
        )
        print_submitted(sub, json_out=json_out)
        return
    if json_out:
        create_tenant(
            ctl, slug=slug, name=name, tier=tier, region=region, owner_email=owner_email,
            time_zone=time_zone,
        )  # fmt: skip
    else:
        what = f"Creating {slug} ({tier}, {region})"
        with stderr_console().status(f"{what}...") as status:
            create_tenant(
                ctl, slug=slug, name=name, tier=tier, region=region, owner_email=owner_email,
                time_zone=time_zone, progress=lambda note: status.update(f"{what}: {note}"),
            )  # fmt: skip
    detail = get_tenant(ctl, slug)
    if json_out:
        print_json(detail)
    else:
        _render_tenants([detail], title="Created")


@app.command("list")
@handle_errors
def list_(
    region: str | None = typer.Option(None, "--region", help="Only this region."),
    tier: str | None = typer.Option(
        None, "--tier", help="Only this tier: shared | schema | isolated."
    ),
    status: str | None = typer.Option(
        None,
        "--status",
        help="Only this status: provisioning | active | read_only | suspended | moving | "
        "deleting | deleted.",
    ),
    deleted: bool = typer.Option(False, "--deleted", help="Include deleted tenants."),
    json_out: bool = JsonOpt,
) -> None:
    """List tenants with their tier, region, status and where their data lives.

    Example: bizosctl tenant list --tier isolated --json
    """
    from bizosctl.tenancy.lifecycle import list_tenants

    tenants = list_tenants(_ctl(), region=region, tier=tier, status=status, include_deleted=deleted)
    if json_out:
        print_json({"tenants": tenants})
    else:
        _render_tenants(tenants)


@app.command("show")
@handle_errors
def show(slug: str = Slug, json_out: bool = JsonOpt) -> None:
    """Show a tenant, its route and its rows per table.

    Example: bizosctl tenant show acme --json
    """
    from bizosctl.tenancy.lifecycle import get_tenant

    t = get_tenant(_ctl(), slug)
    if json_out:
        print_json(t)
        return
    _render_tenants([t], title=f"Tenant {slug}")
    if t.status_reason:
        stdout_console().print(f"reason: {t.status_reason}")
    rows = [[k, v] for k, v in sorted(t.row_counts.items())]
    stdout_console().print(table("Rows", ["table", "rows"], rows))
    from bizosctl.cli.move import render_kept

    render_kept(t.kept_sources)


@app.command("purge-sources")
@handle_errors
def purge_sources(yes: bool = YesOpt, dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Drop every tenant's kept move sources whose --keep-source has expired (for cron).

    Example: bizosctl tenant purge-sources --yes --json
    """
    from bizosctl.moves.kept import purge_expired_sources

    ctl = _ctl()
    if dry_run:
        doc = purge_expired_sources(ctl, dry_run=True)
        if json_out:
            print_json(doc)
        else:
            stdout_console().print(
                f"would purge {len(doc['would_purge'])} expired kept source(s)", markup=False
            )
            for k in doc["would_purge"]:
                src = k["source"]
                stdout_console().print(
                    f"  {k['slug']}: {src['tier']} on {src['server']} ({src['database']}."
                    f"{src['schema']})",
                    markup=False,
                )
        return
    confirm_destructive(yes, "purging the expired kept move sources")
    doc = purge_expired_sources(ctl)
    if json_out:
        print_json(doc)
        return
    stdout_console().print(f"purged {len(doc['purged'])} expired kept source(s)", markup=False)


@app.command("set-zone")
@handle_errors
def set_zone(
    slug: str = Slug,
    time_zone: str | None = typer.Argument(
        None,
        help="IANA zone, e.g. Europe/Berlin (omit with --default).",
        show_default=False,
    ),
    default: bool = typer.Option(
        False, "--default", help="Clear the tenant's own zone: its region's default applies."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Set the time zone of a tenant's "today" and 05:00 digest; a running scheduler follows.

    Example: bizosctl tenant set-zone acme Europe/Berlin --dry-run
    """
    from bizosctl.errors import InvalidInput
    from bizosctl.tenancy.lifecycle import set_time_zone

    if (time_zone is None) == (not default):
        raise InvalidInput("give a time zone (e.g. Europe/Berlin) or --default, not both")
    doc = set_time_zone(_ctl(), slug, time_zone=time_zone, dry_run=dry_run)
    if json_out:
        print_json(doc)
        return
    verb = "would set" if dry_run else "set"
    what = f"{doc['to']} (its region's default)" if doc["default"] else doc["to"]
    stdout_console().print(f"{verb} {slug}'s time zone from {doc['from']} to {what}", markup=False)


def _set_status(slug: str, status: str, reason: str | None, dry_run: bool, json_out: bool) -> None:
    from bizosctl.tenancy.lifecycle import plan_status, set_status

    ctl = _ctl()
    if dry_run:
        plan = plan_status(ctl, slug, status=status)
        print_json(plan) if json_out else stdout_console().print(
            f"would set {slug} from {plan.from_} to {status}"
        )
        return
    t = set_status(ctl, slug, status=status, reason=reason)
    if json_out:
        print_json(t)
    else:
        stdout_console().print(f"{slug} is now [bold]{t.status}[/]")


@app.command("lock")
@handle_errors
def lock(
    slug: str = Slug,
    mode: str = typer.Option("read_only", "--mode", help="read_only | suspended"),
    reason: str | None = typer.Option(None, "--reason", help="Recorded with the status."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Refuse a tenant's writes (read_only) or all access (suspended), in its database.

    Example: bizosctl tenant lock acme --mode read_only --reason "payment failed 3 times"
    """
    from bizosctl.errors import InvalidInput

    if mode not in ("read_only", "suspended"):
        raise InvalidInput(f"unknown lock mode {mode!r}: choose read_only or suspended")
    _set_status(slug, mode, reason, dry_run, json_out)


@app.command("unlock")
@handle_errors
def unlock(slug: str = Slug, dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Make a locked tenant active again.

    Example: bizosctl tenant unlock acme
    """
    _set_status(slug, "active", None, dry_run, json_out)


@app.command("delete")
@handle_errors
def delete(
    slug: str = Slug,
    yes: bool = YesOpt,
    background: bool = BackgroundOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Drop a tenant's data (rows, schema, or database and role). The catalog keeps a record.

    Example: bizosctl tenant delete acme --dry-run
    """
    from bizosctl.tenancy.names import check_slug
    from bizosctl.tenancy.provision import delete_tenant, plan_delete, submit_delete

    check_slug(slug)
    ctl = _ctl()
    if dry_run:
        plan = plan_delete(ctl, slug)
        if json_out:
            print_json(plan)
        else:
            for p in plan.steps:
                stdout_console().print(f"[bold]{p.step}[/]")
                for stmt in p.sql:
                    stdout_console().print(f"  {stmt};", markup=False)
        return
    confirm_destructive(yes, f"deleting tenant {slug!r}")
    if background:
        from bizosctl.cli.output import print_submitted

        print_submitted(submit_delete(ctl, slug), json_out=json_out)
        return
    result = delete_tenant(ctl, slug)
    if json_out:
        print_json(result)
    else:
        stdout_console().print(f"deleted {slug} (operation {result['operation']})")


@app.command("query")
@handle_errors
def query(
    slug: str = Slug,
    sql: str = typer.Argument(..., help="One SQL statement."),
    write: bool = typer.Option(
        False, "--write", help="Allow writes (default: read-only transaction)."
    ),
    limit: int = typer.Option(
        1000, "--limit", min=1, help="At most this many rows (stderr says when more were cut)."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Show the plan; change nothing. Runs the statement in a transaction that is "
        "rolled back.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Run SQL as the application role inside the tenant's context: the operator's safe psql.

    Row-level security applies: you see and change only this tenant's rows. Exactly one
    statement, in a read-only transaction unless --write. Refused (exit 2): transaction
    control, SET/RESET/DISCARD, set_config(), pg_settings, DO/CALL, PREPARE/EXECUTE/DECLARE,
    functions that run SQL text (ts_stat, query_to_xml, ...) and U& escapes. A statement that
    changes the tenant context anyway is rolled back and returns nothing. A suspended tenant
    is refused (exit 1).
    With --write --dry-run the statement runs and is rolled back: you see what it would
    change.

    Example: bizosctl tenant query acme "select status, count(*) from tasks group by 1"
    """
    from bizosctl.tenancy.lifecycle import run_query

    result = run_query(_ctl(), slug, sql, write=write, limit=limit, rollback=dry_run)
    if result.truncated:
        stderr_console().print(
            f"truncated: showing the first {limit} row(s); raise --limit to see more",
            markup=False,
        )
    if json_out:
        print_json({"dry_run": True, **to_jsonable(result)} if dry_run else result)
    elif result.columns:
        stdout_console().print(table(None, result.columns, result.rows))
    elif dry_run:
        stdout_console().print(f"would affect {result.rowcount} row(s) (rolled back)")
    else:
        stdout_console().print(f"{result.rowcount} row(s) affected")


app.command("move")(move_command)
