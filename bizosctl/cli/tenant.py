"""``bizosctl tenant create|list|show|lock|unlock|delete|query``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from bizosctl.cli.output import (
    DryRunOpt,
    JsonOpt,
    YesOpt,
    confirm_destructive,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
    table,
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
            t.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for t in tenants
    ]
    cols = ["slug", "name", "tier", "region", "status", "server", "database", "schema", "created"]
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
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create a tenant in a tier and region. Running it again after a crash finishes it.

    Example: bizosctl tenant create globex --name "Globex" --region id --tier isolated
    """
    from bizosctl.tenancy.lifecycle import get_tenant
    from bizosctl.tenancy.provision import _validate, create_tenant, placement_for

    ctl = _ctl()
    if dry_run:
        _validate(ctl, slug=slug, tier=tier, region=region)
        place = placement_for(ctl, slug=slug, tier=tier, region=region)
        plan = {
            "dry_run": True,
            "slug": slug,
            "tier": tier,
            "region": region,
            "server": place.server,
            "database": place.database,
            "schema": place.schema,
            "role": place.role,
        }
        if json_out:
            print_json(plan)
        else:
            stdout_console().print(
                f"would create {slug} ({tier}) in {place.server}: "
                f"database {place.database}, schema {place.schema}"
            )
        return
    if json_out:
        create_tenant(ctl, slug=slug, name=name, tier=tier, region=region, owner_email=owner_email)
    else:
        with stderr_console().status(f"Creating {slug} ({tier}, {region})..."):
            create_tenant(
                ctl, slug=slug, name=name, tier=tier, region=region, owner_email=owner_email
            )
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


def _set_status(slug: str, status: str, reason: str | None, dry_run: bool, json_out: bool) -> None:
    from bizosctl.tenancy.lifecycle import get_tenant, set_status

    ctl = _ctl()
    if dry_run:
        current = get_tenant(ctl, slug, row_counts=False)
        plan = {"dry_run": True, "slug": slug, "from": current.status, "to": status}
        print_json(plan) if json_out else stdout_console().print(
            f"would set {slug} from {current.status} to {status}"
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
    slug: str = Slug, yes: bool = YesOpt, dry_run: bool = DryRunOpt, json_out: bool = JsonOpt
) -> None:
    """Drop a tenant's data (rows, schema, or database and role). The catalog keeps a record.

    Example: bizosctl tenant delete acme --dry-run
    """
    from bizosctl.tenancy.names import check_slug
    from bizosctl.tenancy.provision import delete_plan, delete_tenant

    check_slug(slug)
    ctl = _ctl()
    if dry_run:
        plan = delete_plan(ctl, slug)
        if json_out:
            print_json(
                {
                    "dry_run": True,
                    "slug": slug,
                    "steps": [{"step": p.name, "sql": p.sql} for p in plan],
                }
            )
        else:
            for p in plan:
                stdout_console().print(f"[bold]{p.name}[/]")
                for stmt in p.sql:
                    stdout_console().print(f"  {stmt};", markup=False)
        return
    confirm_destructive(yes, f"deleting tenant {slug!r}")
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
    limit: int = typer.Option(1000, "--limit", min=1, help="At most this many rows."),
    json_out: bool = JsonOpt,
) -> None:
    """Run SQL as the application role inside the tenant's context: the operator's safe psql.

    Row-level security applies: you see and change only this tenant's rows.

    Example: bizosctl tenant query acme "select status, count(*) from tasks group by 1"
    """
    from bizosctl.tenancy.lifecycle import run_query

    result = run_query(_ctl(), slug, sql, write=write, limit=limit)
    if json_out:
        print_json(result)
    elif result.columns:
        stdout_console().print(table(None, result.columns, result.rows))
    else:
        stdout_console().print(f"{result.rowcount} row(s) affected")


@app.command("move")
@handle_errors
def move(
    slug: str = Slug,
    to_tier: str | None = typer.Option(None, "--to-tier", help="shared | schema | isolated"),
    to_region: str | None = typer.Option(None, "--to-region", help="Default: the current region."),
    to_server: str | None = typer.Option(None, "--to-server", help="Default: the region's server."),
    keep_source: str = typer.Option("7d", "--keep-source", help="Keep the source data this long."),
    max_freeze: str = typer.Option("2s", "--max-freeze", help="Longest pause of writes allowed."),
    residency_change: str | None = typer.Option(
        None, "--residency-change", help="Reason, required to leave the tenant's region."
    ),
    parallel: int = typer.Option(4, "--parallel", help="Tables copied at once."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted move."),
    status: bool = typer.Option(False, "--status", help="Show the tenant's last move."),
    abort: bool = typer.Option(False, "--abort", help="Undo a move that has not switched yet."),
    purge_source: bool = typer.Option(False, "--purge-source", help="Drop the kept source."),
    force: bool = typer.Option(False, "--force", help="With --purge-source: before it expires."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Move a tenant to another tier, server or region, online: copy, catch up, verify, switch.

    Writes pause only for the final catch-up and verification (at most --max-freeze). Running
    the same command again after a crash continues from the last checkpoint.

    Example: bizosctl tenant move acme --to-tier isolated --max-freeze 1s
    """
    from bizosctl.durations import parse_ms
    from bizosctl.errors import InvalidInput
    from bizosctl.moves import engine
    from bizosctl.moves.plan import MoveRequest, make_plan

    ctl = _ctl()
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
    doc: object
    if status:
        doc = engine.move_status(ctl, slug)
    elif abort:
        doc = engine.abort_move(ctl, slug)
    elif purge_source:
        doc = engine.purge_source(ctl, slug, force=force)
    else:
        progress = None if json_out else (lambda msg: stderr_console().print(f"[dim]{msg}[/]"))
        if resume or (engine.unfinished_move(ctl, slug) is not None and not dry_run):
            doc = engine.resume_move(ctl, slug, progress=progress).public()
        else:
            if to_tier is None:
                raise InvalidInput("--to-tier is required (shared, schema or isolated)")
            req = MoveRequest(
                slug=slug,
                to_tier=to_tier,
                to_region=to_region,
                to_server=to_server,
                keep_source_ms=parse_ms(keep_source, what="--keep-source"),
                max_freeze_ms=parse_ms(max_freeze, what="--max-freeze", allow_zero=False),
                residency_change=residency_change,
                parallel=parallel,
            )
            if dry_run:
                doc = {"dry_run": True, "plan": make_plan(ctl, req).public()}
            else:
                doc = engine.move_tenant(ctl, req, progress=progress).public()
    if json_out:
        print_json(doc)
        return
    import json as _json

    stdout_console().print_json(_json.dumps(doc, default=str))
