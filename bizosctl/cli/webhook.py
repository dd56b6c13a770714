"""``bizosctl webhook add|list`` and ``bizosctl webhook-secret rotate``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    from bizosctl.notify.webhooks import EndpointPublic

app = typer.Typer(
    help="Webhook endpoints of tenants, signed after the Standard Webhooks spec.\n\n"
    "Example: bizosctl webhook add --tenant acme --url https://acme.example/hooks "
    "--events invoice.paid",
    no_args_is_help=True,
)
secret_app = typer.Typer(
    help="Signing secrets of webhook endpoints: rotate with a grace period.\n\n"
    "Example: bizosctl webhook-secret rotate --endpoint 3f0c9a52 --grace 24h",
    no_args_is_help=True,
)


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


def _fmt(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "never"


def _render(endpoints: list[EndpointPublic], title: str = "Webhook endpoints") -> None:
    from rich.markup import escape

    rows = []
    for e in endpoints:
        ending = min((s.expires_at for s in e.secrets if s.expires_at), default=None)
        secrets = str(len(e.secrets)) + (f" (one ends {_fmt(ending)})" if ending else "")
        # table() renders cells as Rich markup: a URL is text, not markup.
        rows.append([str(e.id), e.tenant, escape(e.url), ",".join(e.events), secrets])
    t = table(title, ["id", "tenant", "url", "events", "secrets"], rows)
    t.columns[0].no_wrap = True  # the id is what `webhook-secret rotate` takes
    for col in t.columns[1:4]:
        col.overflow = "fold"  # slugs, URLs and event names: wrapped whole, never cut
    stdout_console().print(t)


def _show_secret(secret: str) -> None:
    out = stdout_console()
    out.print(secret, markup=False, soft_wrap=True)
    out.print("[yellow]This signing secret will not be shown again: store it now.[/]")


@app.command("add")
@handle_errors
def add(
    tenant: str = typer.Option(..., "--tenant", help="The tenant's slug."),
    url: str = typer.Option(..., "--url", help="https URL (http only for localhost)."),
    events: str = typer.Option(..., "--events", help="Comma-separated, e.g. invoice.paid."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Add a webhook endpoint for a tenant and print its signing secret once.

    Example: bizosctl webhook add --tenant acme --url https://acme.example/h --events invoice.paid
    """
    from bizosctl.notify.webhooks import add_endpoint, plan_endpoint

    names = [part.strip() for part in events.split(",") if part.strip()]
    ctl = _ctl()
    if dry_run:
        plan = plan_endpoint(ctl, tenant=tenant, url=url, events=names)
        if json_out:
            print_json({"dry_run": True, "endpoint": plan})
        else:
            stdout_console().print(
                f"would add a webhook endpoint for {plan.tenant}: {plan.url} "
                f"({','.join(plan.events)})",
                markup=False,
            )
        return
    endpoint, secret = add_endpoint(ctl, tenant=tenant, url=url, events=names)
    if json_out:
        print_json({"endpoint": endpoint, "secret": secret})
        return
    _render([endpoint], title="Added")
    _show_secret(secret)


@app.command("list")
@handle_errors
def list_(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's endpoints."),
    json_out: bool = JsonOpt,
) -> None:
    """List webhook endpoints with their events and live secrets' dates (never the secrets).

    Example: bizosctl webhook list --tenant acme --json
    """
    from bizosctl.notify.webhooks import list_endpoints

    endpoints = list_endpoints(_ctl(), tenant=tenant)
    if json_out:
        print_json({"endpoints": endpoints})
    else:
        _render(endpoints)


@secret_app.command("rotate")
@handle_errors
def rotate(
    endpoint: str = typer.Option(
        ..., "--endpoint", help="The endpoint's id, or a unique prefix of it (see `webhook list`)."
    ),
    grace: str = typer.Option(
        "24h", "--grace", help="How long the previous secrets keep signing, e.g. 24h."
    ),
    overlap: str | None = typer.Option(
        None, "--overlap", hidden=True, help="Deprecated name of --grace."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Give a webhook endpoint a new signing secret and print it once.

    Deliveries are signed with the new and the previous secrets until the grace period ends, so
    the receiver can switch without rejecting any.

    Example: bizosctl webhook-secret rotate --endpoint 3f0c9a52 --grace 24h
    """
    from bizosctl.durations import parse_ms
    from bizosctl.notify.webhooks import (
        plan_secret_rotation,
        resolve_endpoint_id,
        rotate_secret,
    )

    if overlap is not None:
        stderr_console().print("warning: --overlap is deprecated, use --grace", markup=False)
    flag, value = ("--grace", grace) if overlap is None else ("--overlap", overlap)
    grace_ms = parse_ms(value, what=flag)
    ctl = _ctl()
    endpoint_id = resolve_endpoint_id(ctl, endpoint)
    if dry_run:
        plan = plan_secret_rotation(ctl, endpoint_id, overlap_ms=grace_ms)
        if json_out:
            print_json({"dry_run": True, "plan": plan})
        else:
            stdout_console().print(
                f"would add a new secret to {plan.endpoint.id}; its {len(plan.endpoint.secrets)} "
                f"current secret(s) would sign until {_when(plan.previous_valid_until)}"
            )
        return
    updated, secret = rotate_secret(ctl, endpoint_id, overlap_ms=grace_ms)
    if json_out:
        print_json({"endpoint": updated, "secret": secret})
        return
    _render([updated], title="Rotated")
    _show_secret(secret)
