"""``bizosctl region add|list|show``."""

from __future__ import annotations

from pathlib import Path

import typer

from bizosctl.cli.output import DryRunOpt, JsonOpt, handle_errors, print_json, stdout_console, table

app = typer.Typer(
    help="Regions and their database servers.\n\nExample: bizosctl region list",
    no_args_is_help=True,
)


def _render(regions: list) -> None:  # type: ignore[type-arg]
    rows = [[r.name, s.name, s.provider, s.url] for r in regions for s in r.servers]
    stdout_console().print(table("Regions", ["region", "server", "provider", "url"], rows))


def _read_password(password_file: Path | None, password_stdin: bool) -> str | None:
    """The superuser password from exactly one place; never from argv."""
    import os
    import sys

    from bizosctl.errors import InvalidInput

    from_env = os.environ.get("BIZOS_SERVER_PASSWORD") or None
    given = [
        n
        for n, v in (("--password-file", password_file), ("--password-stdin", password_stdin))
        if v
    ]
    if len(given) > 1:
        raise InvalidInput("give the password one way: --password-file or --password-stdin")
    if password_file is not None:
        try:
            text = password_file.read_text()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read --password-file {password_file}: {exc.strerror}"
            ) from exc
    elif password_stdin:
        text = sys.stdin.readline()
    elif from_env is not None:
        return from_env
    else:
        return None
    password = text.rstrip("\r\n")
    if not password:
        raise InvalidInput(f"the password from {given[0]} is empty")
    return password


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Region name, e.g. 'id' or 'eu-central'."),
    url: str | None = typer.Option(
        None,
        "--url",
        help="Use this PostgreSQL (>= 15, with pgvector) instead of an embedded one; "
        "no password in it (see --password-file).",
    ),
    port: int | None = typer.Option(
        None, "--port", help="Embedded server: also listen on 127.0.0.1:PORT."
    ),
    password_file: Path | None = typer.Option(
        None, "--password-file", help="Read the --url superuser's password from this file."
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the --url superuser's password from stdin."
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Labs only: do not require TLS from the --url server (SCRAM is still required).",
    ),
    allow_url_password: bool = typer.Option(
        False, "--allow-url-password", help="Accept a password inside --url (visible in ps)."
    ),
    provider: str | None = typer.Option(
        None,
        "--provider",
        help="neon | supabase: each isolated tenant of the region gets a project there "
        "(token in BIZOS_NEON_API_KEY / BIZOS_SUPABASE_TOKEN).",
    ),
    provider_region: str | None = typer.Option(
        None, "--provider-region", help="The provider's region, e.g. aws-ap-southeast-1."
    ),
    org: str | None = typer.Option(
        None, "--org", help="The provider organisation (required by supabase)."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Add a region with an embedded server, one that points at an existing server, or one
    whose isolated tenants live on Neon or Supabase.

    A --url server is reached with TLS (verify-full), SCRAM and channel binding.

    Its password comes from --password-file, --password-stdin or BIZOS_SERVER_PASSWORD.

    With --provider the token is checked and the provider region must exist; nothing is
    recorded otherwise.

    Example: bizosctl region add id
    Example: bizosctl region add eu --url postgresql://admin@db.example/postgres --password-file pw
    Example: bizosctl region add jkt --provider neon --provider-region aws-ap-southeast-1
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.tenancy.regions import add_region, plan_add_region

    if provider is not None or provider_region is not None or org is not None:
        _add_cloud(name, provider, provider_region, org, url=url, port=port, dry_run=dry_run,
                   json_out=json_out)  # fmt: skip
        return
    password = _read_password(password_file, password_stdin) if url is not None else None
    ctl = get_control()
    if dry_run:
        plan = plan_add_region(
            ctl, name, url=url, port=port, password=password, insecure=insecure,
            allow_url_password=allow_url_password,
        )  # fmt: skip
        if json_out:
            print_json(plan)
            return
        where = "an existing PostgreSQL server (--url)" if url else "a new embedded server"
        listen = f", also listening on 127.0.0.1:{port}" if port else ""
        stdout_console().print(
            f"would add region {name} with server {name}-1: {where}{listen}", markup=False
        )
        return
    region = add_region(
        ctl,
        name,
        url=url,
        port=port,
        password=password,
        insecure=insecure,
        allow_url_password=allow_url_password,
    )
    if json_out:
        print_json(region)
    else:
        _render([region])


def _add_cloud(
    name: str,
    provider: str | None,
    provider_region: str | None,
    org: str | None,
    *,
    url: str | None,
    port: int | None,
    dry_run: bool,
    json_out: bool,
) -> None:
    from bizosctl.catalog.control import get_control
    from bizosctl.errors import InvalidInput
    from bizosctl.providers.cloud import add_cloud_region, plan_cloud_region

    if provider is None or provider_region is None:
        raise InvalidInput("a cloud region needs both --provider and --provider-region")
    if url is not None or port is not None:
        raise InvalidInput("--url and --port are for local servers, not --provider")
    ctl = get_control()
    if dry_run:
        plan = plan_cloud_region(
            ctl, name, provider=provider, provider_region=provider_region, org=org
        )
        if json_out:
            print_json(plan)
        else:
            stdout_console().print(
                f"would add region {name}: isolated tenants get a {provider} project in "
                f"{provider_region}",
                markup=False,
            )
        return
    region = add_cloud_region(
        ctl, name, provider=provider, provider_region=provider_region, org=org
    )
    if json_out:
        print_json(region)
    else:
        _render([region])


@app.command("list")
@handle_errors
def list_(json_out: bool = JsonOpt) -> None:
    """List regions and their servers (URLs never show a password).

    Example: bizosctl region list --json
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.tenancy.regions import list_regions

    regions = list_regions(get_control())
    if json_out:
        print_json({"regions": regions})
    else:
        _render(regions)


@app.command("show")
@handle_errors
def show(name: str = typer.Argument(..., help="Region name."), json_out: bool = JsonOpt) -> None:
    """Show one region and its servers.

    Example: bizosctl region show id
    """
    from bizosctl.catalog.control import get_control
    from bizosctl.tenancy.regions import get_region

    region = get_region(get_control(), name)
    if json_out:
        print_json(region)
    else:
        _render([region])
