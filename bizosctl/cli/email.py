"""``bizosctl email`` (status, smtp-password, list) and ``bizosctl tenant email-sender``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from bizosctl.cli.output import DryRunOpt, JsonOpt, handle_errors, print_json, stdout_console, table

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control

app = typer.Typer(
    help="E-mail: the SMTP server, its sealed password, what was sent and every attempt.\n\n"
    "Example: bizosctl email status --json",
    no_args_is_help=True,
)


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


@app.command("status")
@handle_errors
def status(json_out: bool = JsonOpt) -> None:
    """The SMTP settings in use (never the password: only whether one is sealed).

    Example: bizosctl email status --json
    """
    from bizosctl.notify.email import smtp_status

    doc = smtp_status(_ctl())
    if json_out:
        print_json(doc)
        return
    out = stdout_console()
    if not doc["configured"]:
        out.print(
            "e-mail is off: set BIZOS_SMTP_HOST (digests are delivered as cards only)", markup=False
        )
        return
    out.print(
        f"{doc['host']}:{doc['port']} ({doc['security']}), login "
        f"{'set' if doc['username_set'] else 'none'}, password "
        f"{'sealed' if doc['password_set'] else 'not set'}",
        markup=False,
    )


@app.command("smtp-password")
@handle_errors
def smtp_password(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Seal the SMTP password in the keyring: read from stdin (one line) or a hidden prompt,
    never from argv or the environment.

    Example: printf '%s\\n' "$PASS" | bizosctl email smtp-password
    """
    from bizosctl.errors import InvalidInput
    from bizosctl.notify.email import set_smtp_password

    if not dry_run:  # a dry run reads no password (it would seal nothing)
        if sys.stdin is not None and sys.stdin.isatty():
            value = typer.prompt("SMTP password", hide_input=True, err=True)
        else:
            value = (sys.stdin.readline() if sys.stdin else "").rstrip("\r\n")
        if not value:
            raise InvalidInput("no password on stdin")
        set_smtp_password(_ctl(), value)
    doc = {"sealed": not dry_run, "dry_run": dry_run}
    if json_out:
        print_json(doc)
    else:
        stdout_console().print(
            "would seal the SMTP password" if dry_run else "SMTP password sealed", markup=False
        )


@app.command("list")
@handle_errors
def list_(
    tenant: str = typer.Argument(..., help="The tenant's slug."),
    limit: int = typer.Option(50, "--limit", help="At most this many (1-500)."),
    json_out: bool = JsonOpt,
) -> None:
    """A tenant's e-mails, newest first, with every attempt (addresses are never shown).

    Example: bizosctl email list acme --json
    """
    from bizosctl.errors import InvalidInput
    from bizosctl.notify.email import list_messages

    if not 1 <= limit <= 500:
        raise InvalidInput(f"--limit {limit}: between 1 and 500")
    rows = list_messages(_ctl(), tenant, limit=limit)
    if json_out:
        print_json({"messages": rows})
        return
    table(
        f"e-mails of {tenant}",
        ["created", "template", "status", "attempts", "last error"],
        [
            [
                m.created_at.isoformat(timespec="seconds"),
                m.template,
                m.status,
                m.attempts,
                (m.tries[-1].error or "") if m.tries else "",
            ]
            for m in rows
        ],
    )


@handle_errors
def email_sender(
    tenant: str = typer.Argument(..., help="The tenant's slug."),
    from_address: str | None = typer.Option(
        None, "--from", help="The sender address (the business's, e.g. digest@acme.example)."
    ),
    from_name: str | None = typer.Option(None, "--from-name", help="The sender's name."),
    reply_to: str | None = typer.Option(None, "--reply-to", help="Where replies go."),
    logo_url: str | None = typer.Option(None, "--logo-url", help="An https:// logo URL."),
    primary_color: str | None = typer.Option(None, "--primary-color", help="#rrggbb header."),
    accent_color: str | None = typer.Option(None, "--accent-color", help="#rrggbb accents."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Show or set the tenant's white-label e-mail sender ("" clears a field).

    Example: bizosctl tenant email-sender acme --from-name "Acme" --primary-color "#0f766e"
    """
    from bizosctl.notify.email import get_sender, set_sender

    fields = {
        "from_address": from_address,
        "from_name": from_name,
        "reply_to": reply_to,
        "logo_url": logo_url,
        "primary_color": primary_color,
        "accent_color": accent_color,
    }
    ctl = _ctl()
    if all(v is None for v in fields.values()):
        sender = get_sender(ctl, tenant)
    else:
        sender = set_sender(ctl, tenant, dry_run=dry_run, **fields)
    if json_out:
        print_json({"dry_run": True, "sender": sender} if dry_run else {"sender": sender})
        return
    prefix = "would set: " if dry_run else ""
    stdout_console().print(
        f"{prefix}{tenant}: from {sender.from_name or '-'} ({'own' if sender.own else 'default'} "
        f"sender), colours {sender.primary_color}/{sender.accent_color}, logo "
        f"{sender.logo_url or '-'}",
        markup=False,
    )


def register(root: typer.Typer, tenant_app: typer.Typer) -> None:
    root.add_typer(app, name="email")
    tenant_app.command("email-sender")(email_sender)
