"""One rule per kind of answer, the same in every command (issue 12, item 13): an unknown named
thing (region, server, tenant, operation) exits 3; errors show URLs as the operator wrote them
(``postgresql://``, not the driver's scheme); an empty value is bad input, not a crash."""

from __future__ import annotations

import json

import pytest

UNKNOWN_REGION = [
    ("tenant", "list", "--region", "mars"),
    ("tenant", "list", "--region", "mars", "--json"),
    ("schema", "status", "--region", "mars"),
    ("schema", "sync", "--region", "mars", "--dry-run"),
    ("schema", "drift", "--region", "mars"),
    ("region", "show", "mars"),
    ("tenant", "create", "zeta-unknown", "--name", "Z", "--tier", "schema", "--region", "mars"),
]


@pytest.mark.parametrize("args", UNKNOWN_REGION, ids=[" ".join(a) for a in UNKNOWN_REGION])
def test_unknown_region_exits_3(cli, args):
    r = cli(*args)
    assert r.exit_code == 3, (r.stdout, r.stderr)
    assert "'mars'" in r.stderr and "region" in r.stderr
    if "--json" in args:
        assert json.loads(r.stdout)["error"]["type"] == "not-found"


def test_unknown_region_of_a_move_exits_3(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "move", slug, "--to-tier", "shared", "--to-region", "mars", "--dry-run")
    assert r.exit_code == 3, r.stderr
    assert "unknown region 'mars' (known: " in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("tenant", "show", "ghost-co"),
        ("tenant", "move", "ghost-co", "--status"),
        ("schema", "status", "--tenant", "ghost-co"),
    ],
    ids=lambda a: " ".join(a),
)
def test_unknown_tenant_exits_3(cli, args):
    assert cli(*args).exit_code == 3


def test_unknown_server_exits_3(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "move", slug, "--to-tier", "shared", "--to-server", "nope-1", "--dry-run")
    assert r.exit_code == 3 and "no server named 'nope-1'" in r.stderr


def test_connection_errors_show_the_url_scheme_the_operator_wrote(cli):
    r = cli(
        "region", "add", "byo-x", "--url", "postgresql://nobody@127.0.0.1:1/x", "--insecure",
        "--json", env={"BIZOS_SERVER_PASSWORD": "pw"},
    )  # fmt: skip
    assert r.exit_code == 2, r.stderr
    message = json.loads(r.stdout)["error"]["message"]
    assert message.startswith("cannot connect to postgresql://nobody@127.0.0.1:1/x"), message
    assert "+psycopg" not in r.stderr + r.stdout and "pw" not in message


@pytest.mark.parametrize("to", ["", " "])
def test_sync_to_empty_revision_is_bad_input(cli, to):
    r = cli("schema", "sync", "--to", to, "--json")
    assert r.exit_code == 2, r.stdout
    assert json.loads(r.stdout)["error"]["message"] == "--to needs a revision id (or 'head')"
