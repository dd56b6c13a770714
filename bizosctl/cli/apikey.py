"""``bizosctl api-key create|list|revoke|rotate``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.security.apikeys import ApiKeyPublic

app = typer.Typer(
    help="API keys of tenants: create (shown once), list, revoke, rotate with a grace period.\n\n"
    "Example: bizosctl api-key create --tenant acme --name ci --scopes invoices:read",
    no_args_is_help=True,
)
Key = typer.Argument(..., help="The key's id or prefix (see `api-key list`).", show_default=False)


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


def _fmt(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _when(value: Any) -> str:
    return "never" if value is None else value.isoformat(timespec="seconds")


def _render(keys: list[ApiKeyPublic], title: str = "API keys") -> None:
    from rich.markup import escape

    # table() renders cells as Rich markup: a name is text, not markup.
    rows = [
        [
            k.prefix,
            k.tenant,
            escape(k.name),
            ",".join(k.scopes),
            k.status,
            _fmt(k.expires_at),
            _fmt(k.last_used_at),
        ]
        for k in keys
    ]
    cols = ["prefix", "tenant", "name", "scopes", "status", "expires", "last used"]
    t = table(title, cols, rows)
    t.columns[0].no_wrap = True  # the prefix is what `revoke` and `rotate` take
    for col in t.columns[1:4]:
        col.overflow = "fold"  # slugs, names and scopes: wrapped whole, never cut
    stdout_console().print(t)


def _show_token(token: str) -> None:
    out = stdout_console()
    out.print(token, markup=False, soft_wrap=True)
    out.print("[yellow]This token will not be shown again: store it now.[/]")


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@app.command("create")
@handle_errors
def create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant's slug."),
    name: str = typer.Option(..., "--name", help="What the key is for (at most 100 characters)."),
    scopes: str = typer.Option(
        ..., "--scopes", help="Comma-separated: <resource>:read, <resource>:write or *."
    ),
    expires: str | None = typer.Option(
        None, "--expires", help="Lifetime, e.g. 90d or 12h (default: never expires)."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create an API key for a tenant and print its token once: only a hash is stored.

    Example: bizosctl api-key create --tenant acme --name ci --scopes invoices:read --expires 90d
    """
    from bizosctl.durations import parse_ms
    from bizosctl.security.apikeys import create_api_key, plan_api_key

    expires_ms = None if expires is None else parse_ms(expires, what="--expires", allow_zero=False)
    ctl = _ctl()
    if dry_run:
        plan = plan_api_key(
            ctl, tenant=tenant, name=name, scopes=_split(scopes), expires_ms=expires_ms
        )
        if json_out:
            print_json({"dry_run": True, "key": plan})
        else:
            stdout_console().print(
                f"would create API key {plan.name!r} for {plan.tenant} "
                f"with scopes {','.join(plan.scopes)}",
                markup=False,
            )
        return
    key, token = create_api_key(
        ctl, tenant=tenant, name=name, scopes=_split(scopes), expires_ms=expires_ms
    )
    if json_out:
        print_json({"key": key, "token": token})
        return
    _render([key], title="Created")
    _show_token(token)


@app.command("list")
@handle_errors
def list_(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's keys."),
    json_out: bool = JsonOpt,
) -> None:
    """List API keys with their scopes, status and last use (never their tokens).

    Example: bizosctl api-key list --tenant acme --json
    """
    from bizosctl.security.apikeys import list_api_keys

    keys = list_api_keys(_ctl(), tenant=tenant)
    if json_out:
        print_json({"keys": keys})
    else:
        _render(keys)


@app.command("revoke")
@handle_errors
def revoke(
    key: str = Key, yes: bool = YesOpt, dry_run: bool = DryRunOpt, json_out: bool = JsonOpt
) -> None:
    """Revoke an API key now: requests with it fail from this moment.

    Example: bizosctl api-key revoke k3x9q2m7ab --yes
    """
    from bizosctl.security.apikeys import get_api_key, revoke_api_key, shown_key

    ctl = _ctl()
    if dry_run:
        current = get_api_key(ctl, key)
        if json_out:
            print_json({"dry_run": True, "key": current})
        else:
            stdout_console().print(
                f"would revoke API key {current.prefix} ({current.name!r} of {current.tenant}, "
                f"now {current.status})",
                markup=False,
            )
        return
    confirm_destructive(yes, f"revoking API key {shown_key(key)!r}")
    revoked = revoke_api_key(ctl, key)
    if json_out:
        print_json({"key": revoked})
    else:
        stdout_console().print(f"revoked API key {revoked.prefix} ({revoked.name!r})", markup=False)


@app.command("rotate")
@handle_errors
def rotate(
    key: str = Key,
    grace: str = typer.Option(
        "24h", "--grace", help="How long the old key keeps working, e.g. 1h or 0."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Replace an API key by a new one (same tenant, name, scopes, lifetime); print it once.

    The old key keeps working for the grace period, so its clients can switch.

    Example: bizosctl api-key rotate k3x9q2m7ab --grace 24h --json
    """
    from bizosctl.durations import parse_ms
    from bizosctl.security.apikeys import get_api_key, plan_rotation, rotate_api_key

    grace_ms = parse_ms(grace, what="--grace")
    ctl = _ctl()
    if dry_run:
        plan = plan_rotation(ctl, key, grace_ms=grace_ms)
        if json_out:
            print_json({"dry_run": True, "plan": plan})
        else:
            stdout_console().print(
                f"would replace API key {plan.key.prefix} ({plan.key.name!r} of "
                f"{plan.key.tenant}); it would stay valid until {_when(plan.old_valid_until)}",
                markup=False,
            )
        return
    new, token = rotate_api_key(ctl, key, grace_ms=grace_ms)
    old = get_api_key(ctl, key)
    if json_out:
        print_json({"key": new, "token": token, "replaces": old})
        return
    _render([new], title="New key")
    stdout_console().print(
        f"the old key {old.prefix} stays valid until {_when(old.expires_at)}", markup=False
    )
    _show_token(token)
