"""Every command has help text with an example (sqlite-utils' test_docs, in spirit)."""

from __future__ import annotations

import pytest
import typer

from bizosctl.cli.main import app


def all_commands():
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out.append((" ".join(path), cmd))

    walk(root, [])
    return out


COMMANDS = all_commands()


def test_the_tree_has_the_foundation_commands():
    names = {name for name, _ in COMMANDS}
    assert {
        "init",
        "quickstart",
        "doctor",
        "down",
        "region add",
        "region list",
        "region show",
        "tenant create",
        "tenant list",
        "tenant show",
        "tenant lock",
        "tenant unlock",
        "tenant delete",
        "tenant query",
    } <= names


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_help_with_an_example_and_json(name, cmd):
    assert cmd.help and "Example:" in cmd.help, name
    assert "bizosctl " + name in cmd.help.split("Example:", 1)[1], name
    options = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
    assert "--json" in options, name


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_state_changing_commands_have_dry_run(name, cmd):
    changing = {
        "tenant create",
        "tenant delete",
        "tenant lock",
        "tenant unlock",
        "region add",
        "tenant move",
        "schema sync",
        "secrets rotate pii",
        "secrets rotate jwt",
        "secrets rotate db-credentials",
        "secrets rotate db-password",
        "secrets rotate master-key",
        "api-key create",
        "api-key revoke",
        "api-key rotate",
        "webhook add",
        "webhook-secret rotate",
    }
    options = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
    if name in changing:
        assert "--dry-run" in options, name
    if name in ("tenant delete", "api-key revoke"):
        assert "--yes" in options


def test_help_runs(cli):
    r = cli("tenant", "create", "--help")
    assert r.exit_code == 0 and "Example: bizosctl tenant create" in r.stdout


def _help(name: str) -> str:
    from typer.testing import CliRunner

    args = [*name.split(), "--help"] if name else ["--help"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return r.output


def _option_row(text: str, opt: str) -> str:
    """The row of the options panel for ``opt`` (not the example, which may use it too)."""
    return next(line for line in text.splitlines() if line.lstrip("│ *").startswith(opt + " "))


@pytest.mark.parametrize(
    "name", ["", *[n for n, _ in COMMANDS]], ids=["root", *[n for n, _ in COMMANDS]]
)
def test_help_shows_flags_without_a_value_and_arguments_in_capitals(name):
    text = _help(name)
    assert "<bool>" not in text, name
    cmd = dict(COMMANDS).get(name)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    for p in cmd.params if cmd is not None else []:
        if isinstance(p, typer.core.TyperArgument):
            assert "{" not in usage and p.name.upper() in usage, (name, usage)


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_tier_options_list_their_values(name, cmd):
    text = _help(name)
    for p in cmd.params:
        if {"--tier", "--to-tier"} & set(getattr(p, "opts", [])):
            line = _option_row(text, p.opts[0])
            assert all(t in line for t in ("shared", "schema", "isolated")), (name, line)


def test_tenant_list_status_lists_its_values():
    from bizosctl.tenancy.lifecycle import STATUSES

    line = _option_row(_help("tenant list"), "--status")
    assert all(s in line for s in (*STATUSES, "deleted")), line
