"""``bizosctl``: the root command. Sub-apps are imported here, their heavy imports are lazy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperOption

from bizosctl import __version__
from bizosctl.cli import (
    ai,
    apikey,
    digest,
    email,
    gdpr,
    mask,
    ops,
    provider,
    region,
    scheduler,
    schema,
    secrets,
    serve,
    system,
    tenant,
    webhook,
    worker,
)


def _tidy_help() -> None:
    """Help as operators read it, for every command at once (this Typer's own rendering shows
    ``--debug <bool>``, as if flags took a value, and ``{slug}`` for arguments): flags show
    no value, arguments show as ``SLUG`` (``[SLUG]`` when optional)."""
    type_of = TyperOption.display_type_rich

    def option_type(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and self.metavar is None else type_of(self, ctx)

    def argument_name(self: TyperArgument) -> str:
        return self.metavar if self.metavar is not None else str(self.name).upper()

    def argument_usage(self: TyperArgument) -> str:
        name = argument_name(self) if self.required else f"[{argument_name(self)}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    TyperArgument.display_name_raw = property(argument_name)  # type: ignore[assignment,method-assign]
    TyperArgument._usage_display_name = argument_usage  # type: ignore[method-assign]


_tidy_help()

app = typer.Typer(
    name="bizosctl",
    help=(
        "Operator control plane of the Enterprise Business OS: regions, tenants in three "
        "tiers, schema sync, secrets.\n\nExample: bizosctl quickstart"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bizosctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    home: Path | None = typer.Option(
        None, "--home", help="Use this BIZOS_HOME instead of the environment's.", show_default=False
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Operator control plane of the Enterprise Business OS.

    Example: bizosctl tenant list --json
    """
    if home is not None:
        os.environ["BIZOS_HOME"] = str(home)
        from bizosctl.config import reset_settings

        reset_settings()
    if debug:
        os.environ["BIZOS_DEBUG"] = "1"


system.register(app)
app.add_typer(region.app, name="region")
app.add_typer(tenant.app, name="tenant")
app.add_typer(schema.app, name="schema")
app.add_typer(secrets.app, name="secrets")
app.add_typer(apikey.app, name="api-key")
app.add_typer(webhook.app, name="webhook")
app.add_typer(webhook.secret_app, name="webhook-secret")
app.add_typer(ops.app, name="ops")
app.add_typer(provider.app, name="provider")
app.add_typer(ai.app, name="ai")
app.add_typer(gdpr.app, name="gdpr")
ai.register(app)
worker.register(app)
scheduler.register(app)
serve.register(app)
mask.register(app)
app.add_typer(digest.app, name="digest")
email.register(app, tenant.app)


def main() -> None:
    from bizosctl import signals
    from bizosctl.faults import crash_point

    signals.defer_sigint()
    crash_point("cli.start")
    app()
