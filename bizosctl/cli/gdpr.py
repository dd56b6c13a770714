"""``bizosctl gdpr find|export|delete|requests|extend|reconcile|consent``: data-subject requests.

The e-mail is an argument, or ``-`` to read it from stdin (it then stays out of the process
list and the shell history). It is never printed back, except inside the export itself.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bizosctl.cli.output import (
    BackgroundOpt,
    DryRunOpt,
    JsonOpt,
    YesOpt,
    clean,
    confirm_destructive,
    handle_errors,
    print_json,
    stdout_console,
    table,
)

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control

app = typer.Typer(
    help="Data-subject requests (GDPR): find, export and erase one person's data across every "
    "tenant, tier and region, with a request log and consent records.\n\n"
    "Example: echo ani@example.com | bizosctl gdpr find - --json",
    no_args_is_help=True,
)
consent_app = typer.Typer(
    help="Consents of a tenant's members: record, list, withdraw.\n\n"
    "Example: bizosctl gdpr consent list --tenant acme --json",
    no_args_is_help=True,
)
app.add_typer(consent_app, name="consent")

Email = typer.Argument(
    ...,
    help="The person's e-mail, or - to read it from stdin (keeps it out of argv).",
    show_default=False,
    metavar="EMAIL",
)
TenantOpt = typer.Option(None, "--tenant", help="Only this tenant (its slug).")


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


def _email(value: str) -> str:
    if value != "-":
        return value
    from bizosctl.errors import InvalidInput

    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line.strip():
        raise InvalidInput("no e-mail on stdin")
    return line.strip()


def _actor() -> str:
    from bizosctl.privacy.requests import default_actor

    return default_actor()


@app.command("find")
@handle_errors
def find(
    email: str = Email,
    tenant: str | None = TenantOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Where this person has data: tenants, tables and rows, through the blind index only.

    Exit 3 when nothing is found (the request is logged all the same).

    Example: echo ani@example.com | bizosctl gdpr find - --json
    """
    from bizosctl.privacy.find import find_person

    result = find_person(_ctl(), _email(email), tenant=tenant, actor=_actor())
    if json_out:
        print_json(result)
    else:
        rows = [
            [t.tenant, t.region, t.tier, t.rows, ", ".join(f"{k} {v}" for k, v in t.tables.items())]
            for t in result.tenants
        ]
        stdout_console().print(
            table(f"request {result.request}", ["tenant", "region", "tier", "rows", "tables"], rows)
        )
        for e in result.errors:
            stdout_console().print(f"[red]{clean(e.tenant)}[/]: {clean(e.error)}", markup=True)
    if result.errors:
        raise typer.Exit(1)


@app.command("reconcile")
@handle_errors
def reconcile_cmd(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Rebuild the catalog's routing keys from every tenant's members and customers.

    Example: bizosctl gdpr reconcile --dry-run --json
    """
    from bizosctl.privacy.find import reconcile

    result = reconcile(_ctl(), dry_run=dry_run)
    if json_out:
        print_json(result)
    else:
        verb = "would add" if dry_run else "added"
        stdout_console().print(
            f"{result.tenants} tenants, {result.keys} routing keys: {verb} {result.added}, "
            f"removed {result.removed}; {len(result.errors)} tenants failed",
            markup=False,
        )
    if result.errors:
        raise typer.Exit(1)


@app.command("requests")
@handle_errors
def requests_cmd(
    status: str | None = typer.Option(
        None, "--status", help="received, in_progress, partially_done, done or failed."
    ),
    overdue: bool = typer.Option(
        False, "--overdue", help="Only open requests past their due date."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """The request log: kind, subject reference (a keyed hash), due date, status, receipt.

    Example: bizosctl gdpr requests --overdue --json
    """
    from bizosctl.privacy.requests import list_requests

    found = list_requests(_ctl(), status=status, overdue=overdue)
    if json_out:
        print_json({"requests": found})
        return
    rows = [
        [
            r.id,
            r.kind,
            r.subject_ref[:14],
            r.tenant or "all",
            r.received_at.strftime("%Y-%m-%d"),
            (r.extended_to or r.due_at).strftime("%Y-%m-%d"),
            f"[red]{r.status} (overdue)[/]" if r.overdue else r.status,
        ]
        for r in found
    ]
    cols = ["id", "kind", "subject", "tenant", "received", "due", "status"]
    stdout_console().print(table("GDPR requests", cols, rows, markup_cols=(6,)))


@app.command("extend")
@handle_errors
def extend(
    request: str = typer.Argument(..., help="The request's id.", show_default=False),
    months: int = typer.Option(3, "--months", help="Due 2 or 3 months after receipt."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded; Art. 12(3))."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Extend a request's due date (up to three months after receipt) with a recorded reason.

    Example: bizosctl gdpr extend 6f1c... --months 3 --reason "12 tenants, archived backups"
    """
    from bizosctl.privacy.requests import extend_request, parse_request_id

    r = extend_request(
        _ctl(), parse_request_id(request), months=months, reason=reason, dry_run=dry_run
    )
    if json_out:
        print_json(r)
    else:
        due = (r.extended_to or r.due_at).strftime("%Y-%m-%d")
        what = "would extend" if dry_run else "extended"
        stdout_console().print(f"{what} request {r.id}: due {due}", markup=False)


@app.command("export")
@handle_errors
def export(
    email: str = Email,
    out: Path = typer.Option(..., "--out", help="The zip to write (new file, mode 0600)."),
    tenant: str | None = TenantOpt,
    fmt: str = typer.Option("json", "--format", help="json or csv (one file per table)."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Export the person's data from every tenant to a zip with a manifest (SHA-256 per file).

    Rows are decrypted; the audit trail and consents are included. Never overwrites a file.
    Re-running the same command resumes an export that stopped half way.

    Example: echo ani@example.com | bizosctl gdpr export - --out ani.zip --json
    """
    from bizosctl.privacy.export import check_out, export_person
    from bizosctl.privacy.find import find_person

    ctl = _ctl()
    if dry_run:
        check_out(out)
        found = find_person(ctl, _email(email), tenant=tenant, actor=_actor(), log=False)
        if json_out:
            print_json({"dry_run": True, "out": str(out), "would_export": found})
        else:
            stdout_console().print(
                f"would export {sum(t.rows for t in found.tenants)} rows from "
                f"{len(found.tenants)} tenants to {out}",
                markup=False,
            )
        return
    result = export_person(ctl, _email(email), out=out, tenant=tenant, fmt=fmt, actor=_actor())
    if json_out:
        print_json(result)
    else:
        stdout_console().print(
            f"exported {result.rows} rows from {len(result.tenants)} tenants to {result.out} "
            f"(request {result.request})",
            markup=False,
        )


@app.command("delete")
@handle_errors
def delete(
    email: str = Email,
    tenant: str | None = TenantOpt,
    transfer_to: str | None = typer.Option(
        None,
        "--transfer-ownership-to",
        help="Where the person is the only Admin: this member (e-mail) becomes Admin.",
    ),
    background: bool = BackgroundOpt,
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Erase the person's data by each table's policy, then verify nothing is left.

    Tax records are kept anonymised (GDPR Art. 17(3)(b)); the receipt (rows per table) is
    stored with the request. Re-running the same command resumes; once done it is harmless.

    Example: echo ani@example.com | bizosctl gdpr delete - --yes --json
    """
    from bizosctl.privacy.erase import erase_person

    if not dry_run:
        confirm_destructive(yes, "erasing a person's data")
    result = erase_person(
        _ctl(),
        _email(email),
        tenant=tenant,
        transfer_to=transfer_to,
        dry_run=dry_run,
        actor=_actor(),
        background=background,
    )
    if background:
        from bizosctl.cli.output import print_submitted

        print_submitted(result, json_out=json_out)
        return
    if json_out:
        print_json(result)
        return
    rows = [
        [
            t["tenant"],
            t["region"],
            ", ".join(f"{k} {v['action']} {v['rows']}" for k, v in t["tables"].items()),
        ]
        for t in result.tenants
    ]
    title = "would erase (dry run)" if dry_run else f"erased, verified (request {result.request})"
    stdout_console().print(table(title, ["tenant", "region", "tables"], rows))
    for e in result.errors:
        stdout_console().print(f"{clean(e['tenant'])}: {clean(e['error'])}", markup=False)


def _print_consents(found: list[Any], json_out: bool, title: str) -> None:
    if json_out:
        print_json({"consents": found})
        return
    rows = [
        [
            c.purpose,
            c.version,
            "granted" if c.granted else "withdrawn",
            c.source or "",
            c.recorded_at.strftime("%Y-%m-%d %H:%M"),
            c.withdrawn_at.strftime("%Y-%m-%d %H:%M") if c.withdrawn_at else "",
        ]
        for c in found
    ]
    cols = ["purpose", "version", "state", "source", "recorded", "withdrawn"]
    stdout_console().print(table(title, cols, rows))


TenantReq = typer.Option(..., "--tenant", help="The tenant's slug.")
PurposeOpt = typer.Option(..., "--purpose", help="What it is for, e.g. marketing.")


@consent_app.command("record")
@handle_errors
def consent_record(
    email: str = Email,
    tenant: str = TenantReq,
    purpose: str = PurposeOpt,
    version: str = typer.Option("1", "--version", help="The version of the text agreed to."),
    source: str | None = typer.Option(None, "--source", help="Where it was given (web, app)."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Record a member's consent to a purpose.

    Example: bizosctl gdpr consent record - --tenant acme --purpose marketing < ani.txt
    """
    from bizosctl.privacy.consent import record_consent

    c = record_consent(
        _ctl(), tenant, _email(email), purpose=purpose, version=version, source=source,
        actor=_actor(), dry_run=dry_run,
    )  # fmt: skip
    _print_consents([c], json_out, "would record" if dry_run else "recorded")


@consent_app.command("list")
@handle_errors
def consent_list(
    email: str | None = typer.Argument(
        None, help="Only this member's (or - for stdin).", metavar="EMAIL"
    ),
    tenant: str = TenantReq,
    json_out: bool = JsonOpt,
) -> None:
    """A tenant's consents, or one member's.

    Example: bizosctl gdpr consent list --tenant acme --json
    """
    from bizosctl.privacy.consent import list_consents

    found = list_consents(
        _ctl(), tenant, _email(email) if email is not None else None, actor=_actor()
    )
    _print_consents(found, json_out, f"consents in {tenant}")


@consent_app.command("withdraw")
@handle_errors
def consent_withdraw(
    email: str = Email,
    tenant: str = TenantReq,
    purpose: str = PurposeOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Withdraw a member's consent to a purpose (the record that it was given stays).

    Example: bizosctl gdpr consent withdraw - --tenant acme --purpose marketing < ani.txt
    """
    from bizosctl.privacy.consent import withdraw_consent

    found = withdraw_consent(
        _ctl(), tenant, _email(email), purpose=purpose, actor=_actor(), dry_run=dry_run
    )
    _print_consents(found, json_out, "would withdraw" if dry_run else "withdrawn")
