"""The README's command conventions, checked on the whole Typer command tree.

Every command and sub-command: ``--help`` has an example, ``--json`` is accepted, a command
that changes state has ``--dry-run``, a destructive one has ``--yes``. Every command is
classified below, in one place: a new command fails ``test_every_command_is_classified``
until someone decides what it is.
"""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from bizosctl.cli.main import app

READS = "reads"  # changes nothing
CHANGES = "changes"  # changes state: needs --dry-run
DESTROYS = "destroys"  # can drop data or lock someone out for good: --dry-run and --yes

CLASSIFICATION = {
    "init": CHANGES,
    "quickstart": CHANGES,
    "doctor": READS,
    "down": CHANGES,
    "region add": CHANGES,
    "region list": READS,
    "region show": READS,
    "tenant create": CHANGES,
    "tenant list": READS,
    "tenant show": READS,
    "tenant lock": CHANGES,
    "tenant unlock": CHANGES,
    "tenant delete": DESTROYS,
    "tenant query": CHANGES,  # with --write; --dry-run runs it and rolls back
    "tenant move": DESTROYS,  # --purge-source drops the kept source
    "tenant purge-sources": DESTROYS,  # every expired kept move source
    "tenant set-zone": CHANGES,
    "schema status": READS,
    "schema sync": DESTROYS,  # --to below the current revision drops what later ones added
    "schema drift": READS,
    "secrets list": READS,
    # retires keys past retire-after and destroys material past BIZOS_KEY_DESTROY_AFTER: the
    # policy the operator configured, run from cron (no --yes, as a cron job cannot answer)
    "secrets retire-due": CHANGES,
    "secrets check": READS,
    "secrets rotate pii": CHANGES,
    "secrets rotate jwt": CHANGES,
    "secrets rotate db-credentials": CHANGES,
    "secrets rotate db-password": CHANGES,
    "secrets rotate master-key": DESTROYS,  # the old key file is gone afterwards
    "api-key create": CHANGES,
    "api-key list": READS,
    "api-key revoke": DESTROYS,
    "api-key rotate": CHANGES,
    "webhook add": CHANGES,
    "webhook list": READS,
    "webhook deliveries": READS,
    "webhook replay": CHANGES,
    "webhook enable": CHANGES,
    "webhook test": CHANGES,
    "webhook deliver": CHANGES,
    "webhook-secret rotate": CHANGES,
    "ops list": READS,
    "ops show": READS,
    "ops resume": CHANGES,
    "ops cancel": CHANGES,
    "ops ping": CHANGES,
    "provider orphans": DESTROYS,  # --delete removes projects at the provider
    "ai check": READS,
    "ai budget": CHANGES,
    "usage": READS,
    "worker": CHANGES,  # runs queued operations; --dry-run shows what it would run
    "scheduler": CHANGES,  # enqueues due runs; --dry-run shows what it would enqueue
    "schedule list": READS,
    "mask": READS,  # stdin to stdout; --tenant reads the tenant's names
    "gdpr find": READS,  # logs the request it answers, changes no data
    "gdpr reconcile": CHANGES,
    "gdpr requests": READS,
    "gdpr extend": CHANGES,
    "gdpr export": CHANGES,  # writes the zip
    "gdpr delete": DESTROYS,
    "gdpr consent record": CHANGES,
    "gdpr consent list": READS,
    "gdpr consent withdraw": CHANGES,
    "serve": CHANGES,  # serves the API (its requests change data); --dry-run checks settings
    "digest run": CHANGES,
    "digest list": READS,
    "digest show": READS,
    "email status": READS,
    "email smtp-password": CHANGES,
    "email list": READS,
    "tenant email-sender": CHANGES,
}

#: Commands exempt from --json, each with its reason. Keep it short: today it is empty.
JSON_EXEMPT: dict[str, str] = {}


def walk() -> list[tuple[str, click.Command]]:
    out = []

    def visit(cmd: click.Command, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                visit(sub, [*path, name])
        else:
            out.append((" ".join(path), cmd))

    visit(typer.main.get_command(app), [])
    return sorted(out, key=lambda item: item[0])


COMMANDS = walk()
IDS = [name for name, _ in COMMANDS]


def options(cmd: click.Command) -> set[str]:
    return {opt for p in cmd.params for opt in getattr(p, "opts", [])}


def test_every_command_is_classified():
    assert {name for name, _ in COMMANDS} == set(CLASSIFICATION)
    assert set(JSON_EXEMPT) <= set(CLASSIFICATION)


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_help_has_an_example_of_the_command(name, cmd):
    r = CliRunner().invoke(app, [*name.split(), "--help"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    examples = [line.strip() for line in r.output.splitlines() if "Example:" in line]
    assert examples, f"{name}: no Example line in --help"
    assert any(f"bizosctl {name}" in line for line in examples), (name, examples)


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_every_command_accepts_json(name, cmd):
    if name in JSON_EXEMPT:
        pytest.skip(JSON_EXEMPT[name])
    assert "--json" in options(cmd), name


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_state_changing_commands_have_dry_run(name, cmd):
    if CLASSIFICATION.get(name) in (CHANGES, DESTROYS):
        assert "--dry-run" in options(cmd), name


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_destructive_commands_have_yes(name, cmd):
    if CLASSIFICATION.get(name) == DESTROYS:
        assert "--yes" in options(cmd), name


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_boolean_flags_and_dry_run_are_the_shared_options(name, cmd):
    """--dry-run, --json and --yes mean the same everywhere (one definition in cli/output)."""
    for p in cmd.params:
        opts = set(getattr(p, "opts", []))
        if "--dry-run" in opts:
            assert p.help.startswith("Show the plan; change nothing."), name
        if "--json" in opts:
            assert p.help == "Print one JSON document on stdout, nothing else.", name


def test_every_command_handles_errors_and_ctrl_c():
    """Each command runs inside ``handle_errors``: it prints one line for an error, and it is
    where the Ctrl-C handling of start-up ends (a command outside it would ignore Ctrl-C)."""
    missing = [name for name, cmd in walk() if getattr(cmd.callback, "__wrapped__", None) is None]
    assert missing == []
