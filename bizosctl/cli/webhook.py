"""``bizosctl webhook`` (endpoints, deliveries, replay, enable, test, deliver) and
``bizosctl webhook-secret rotate``."""

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


def _render_deliveries(rows: list[Any]) -> None:
    from rich.markup import escape

    t = table(
        "Webhook deliveries",
        ["id", "event", "type", "tenant", "status", "tries", "next / done", "last"],
        [
            [
                str(d.id),
                d.event_id,
                escape(d.event_type),
                d.tenant,
                d.status,
                str(d.attempts),
                _fmt(d.next_attempt_at if d.status == "pending" else d.delivered_at),
                escape(d.last_error or (str(d.last_status) if d.last_status else "")),
            ]
            for d in rows
        ],
    )
    t.columns[0].no_wrap = True  # what `webhook replay` takes
    stdout_console().print(t)


@app.command("deliveries")
@handle_errors
def deliveries(
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="Only this endpoint's (its id or a unique prefix)."
    ),
    status: str | None = typer.Option(
        None, "--status", help="Only deliveries in this status: pending, delivered or failed."
    ),
    limit: int = typer.Option(100, "--limit", help="At most this many, newest first."),
    json_out: bool = JsonOpt,
) -> None:
    """List webhook deliveries, newest first: status, attempts, next retry, last error.

    Example: bizosctl webhook deliveries --endpoint 3f0c9a52 --status failed --json
    """
    from bizosctl.notify.deliveries import list_deliveries

    rows = list_deliveries(_ctl(), endpoint=endpoint, status=status, limit=limit)
    if json_out:
        print_json({"deliveries": rows})
    else:
        _render_deliveries(rows)


@app.command("replay")
@handle_errors
def replay(
    delivery: str | None = typer.Argument(None, help="The delivery's id (see `deliveries`)."),
    since: str | None = typer.Option(
        None, "--since", help="Every failed delivery since then: 2026-12-01T09:00, or 24h ago."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Send deliveries again from their first attempt, with the same webhook-id.

    Example: bizosctl webhook replay --since 24h
    """
    from bizosctl.notify.deliveries import parse_since, plan_replay
    from bizosctl.notify.deliveries import replay as do_replay

    when = parse_since(since) if since is not None else None
    ctl = _ctl()
    if dry_run:
        plan = plan_replay(ctl, delivery_id=delivery, since=when)
    else:
        plan = do_replay(ctl, delivery_id=delivery, since=when)
    if json_out:
        print_json({"dry_run": dry_run, **plan.model_dump(mode="json")})
        return
    verb = "would replay" if dry_run else "replaying"
    out = stdout_console()
    out.print(f"{verb} {len(plan.deliveries)} delivery(ies)", markup=False)
    if plan.waiting_for_enable:
        out.print(
            f"{len(plan.waiting_for_enable)} more wait for their endpoint to be enabled "
            "(bizosctl webhook enable)",
            markup=False,
        )


@app.command("enable")
@handle_errors
def enable(
    endpoint: str = typer.Argument(..., help="The endpoint's id, or a unique prefix of it."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Re-enable a webhook endpoint disabled by a 410 or by 5 days of failures.

    Example: bizosctl webhook enable 3f0c9a52
    """
    from bizosctl.notify.deliveries import enable_endpoint

    before = enable_endpoint(_ctl(), endpoint, dry_run=True)
    after = before if dry_run else enable_endpoint(_ctl(), endpoint)
    was_disabled = before.disabled_at is not None
    if json_out:
        print_json({"dry_run": dry_run, "was_disabled": was_disabled, "endpoint": after})
        return
    if not was_disabled:
        msg = f"webhook endpoint {after.id} is enabled already"
    else:
        msg = f"{'would enable' if dry_run else 'enabled'} webhook endpoint {after.id}"
    stdout_console().print(msg, markup=False)


@app.command("test")
@handle_errors
def test(
    endpoint: str = typer.Argument(..., help="The endpoint's id, or a unique prefix of it."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Send a webhook.test event to one endpoint, through the outbox like every event.

    A worker (bizosctl worker) delivers it, or run `bizosctl webhook deliver`.

    Example: bizosctl webhook test 3f0c9a52
    """
    from bizosctl.notify.deliveries import send_test

    event_id = send_test(_ctl(), endpoint, dry_run=dry_run)
    if json_out:
        print_json({"dry_run": dry_run, "event_id": event_id})
        return
    if event_id is None:
        stdout_console().print("would emit a webhook.test event", markup=False)
    else:
        stdout_console().print(
            f"emitted {event_id}: a worker delivers it (or run `bizosctl webhook deliver`)",
            markup=False,
        )


@app.command("deliver")
@handle_errors
def deliver(
    limit: int = typer.Option(1000, "--limit", help="At most this many attempts."),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Relay every outbox once and send the due deliveries, in the foreground.

    What `bizosctl worker` does continuously; for a host without a worker (cron) or a check.

    Example: bizosctl webhook deliver --json
    """
    from bizosctl.notify.deliveries import deliver_once, list_deliveries

    if dry_run:
        due = [d for d in list_deliveries(_ctl(), status="pending", limit=1000)]
        if json_out:
            print_json({"dry_run": True, "pending": len(due)})
        else:
            stdout_console().print(f"{len(due)} delivery(ies) pending", markup=False)
        return
    report = deliver_once(_ctl(), limit=limit)
    if json_out:
        print_json(report)
    else:
        stdout_console().print(
            f"relayed {report.events} event(s) into {report.deliveries} delivery(ies); "
            f"{report.attempted} attempt(s)",
            markup=False,
        )
