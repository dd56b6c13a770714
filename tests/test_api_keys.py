"""api-key create/list/revoke/rotate and verification, against real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time

import pytest
from sqlalchemy import text

from bizosctl.errors import Forbidden, Unauthorized
from bizosctl.security.apikeys import verify_api_key

TOKEN = re.compile(r"^bz_([a-z0-9]{10})_([A-Za-z0-9_-]{43})$")
SCOPE_HELP = "use <resource>:read, <resource>:write or *, e.g. invoices:read"


def wait_for(condition, *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def create(cli, tenant: str, *extra: str, name: str = "ci", scopes: str = "invoices:read"):
    r = cli(
        "api-key",
        "create",
        "--tenant",
        tenant,
        "--name",
        name,
        "--scopes",
        scopes,
        *extra,
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def rejected(ctl, token: str, tenant: str) -> bool:
    """True if the token is refused with the one generic message."""
    try:
        verify_api_key(ctl, token, tenant=tenant)
    except Unauthorized as exc:
        assert exc.message == "invalid API key"
        return True
    return False


def api_key_rows(ctl) -> list[str]:
    with ctl.catalog() as s:
        return list(s.execute(text("select k::text from api_keys k")).scalars())


# -- create -----------------------------------------------------------------------------------
def test_create_prints_token_once_and_it_verifies(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    doc = create(cli, slug, "--expires", "90d", scopes="invoices:read,tasks:write")
    token, key = doc["token"], doc["key"]
    m = TOKEN.match(token)
    assert m is not None and m.group(1) == key["prefix"]
    assert set(key) == {
        "id",
        "tenant",
        "name",
        "prefix",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "replaced_by",
        "status",
    }
    assert key["tenant"] == slug and key["name"] == "ci" and key["status"] == "active"
    assert key["scopes"] == ["invoices:read", "tasks:write"]
    lifetime = dt.datetime.fromisoformat(key["expires_at"]) - dt.datetime.fromisoformat(
        key["created_at"]
    )
    assert lifetime == dt.timedelta(days=90)

    used = verify_api_key(ctl, token, tenant=slug)
    assert str(used.id) == key["id"] and used.last_used_at is not None


def test_create_human_output_says_token_is_not_shown_again(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("api-key", "create", "--tenant", slug, "--name", "ops", "--scopes", "*")
    assert r.exit_code == 0, r.stderr
    tokens = [line for line in r.stdout.split() if TOKEN.match(line)]
    assert len(tokens) == 1
    assert "This token will not be shown again" in r.stdout


def test_catalog_holds_only_the_hash(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    token = create(cli, slug)["token"]
    secret = TOKEN.match(token).group(2)
    rows = api_key_rows(ctl)
    assert not any(secret in row for row in rows)
    assert any(hashlib.sha256(secret.encode()).hexdigest() in row for row in rows)


def test_list_never_shows_token(cli, make_tenant):
    slug = make_tenant(tier="shared")
    doc = create(cli, slug)
    secret = TOKEN.match(doc["token"]).group(2)
    r = cli("api-key", "list", "--tenant", slug, "--json")
    assert r.exit_code == 0, r.stderr
    keys = json.loads(r.stdout)["keys"]
    assert [k["id"] for k in keys] == [doc["key"]["id"]]
    assert secret not in r.stdout and "token" not in keys[0] and "secret_hash" not in keys[0]
    r = cli("api-key", "list", "--tenant", slug)
    assert r.exit_code == 0 and doc["key"]["prefix"] in r.stdout and secret not in r.stdout


def test_name_with_brackets_is_shown_as_text(cli, make_tenant):
    slug = make_tenant(tier="shared")
    name = "[/x] [bold]deploy[/bold]"
    assert create(cli, slug, name=name)["key"]["name"] == name
    r = cli("api-key", "list", "--tenant", slug)
    assert r.exit_code == 0, r.stderr
    assert "[/x]" in r.stdout and "[bold]" in r.stdout


def test_create_rejects_bad_scope(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes", "invoices:delete")
    assert r.exit_code == 2
    assert f"invalid scope 'invoices:delete': {SCOPE_HELP}" in r.stderr


def test_create_rejects_scope_without_access(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes", "read,Invoices:read")
    assert r.exit_code == 2
    assert f"invalid scope 'read': {SCOPE_HELP}" in r.stderr


def test_create_rejects_no_scopes(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes", " , ")
    assert r.exit_code == 2
    assert "give at least one scope, e.g. invoices:read" in r.stderr


def test_create_rejects_empty_name(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("api-key", "create", "--tenant", slug, "--name", "  ", "--scopes", "tasks:read")
    assert r.exit_code == 2
    assert "API key name must not be empty" in r.stderr


def test_create_rejects_long_name(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("api-key", "create", "--tenant", slug, "--name", "n" * 101, "--scopes", "tasks:read")
    assert r.exit_code == 2
    assert "API key name is too long (101 characters; at most 100)" in r.stderr


def test_create_rejects_bad_expiry(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli(
        "api-key", "create", "--tenant", slug, "--name", "x", "--scopes", "*", "--expires", "soon"
    )
    assert r.exit_code == 2
    assert "invalid --expires 'soon': use e.g. 500ms, 5s, 2m, 1h or 7d" in r.stderr


def test_create_rejects_zero_expiry(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes", "*", "--expires", "0")
    assert r.exit_code == 2
    assert "--expires must be more than zero" in r.stderr


def test_create_rejects_expiry_beyond_ten_years(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli(
        "api-key", "create", "--tenant", slug, "--name", "x", "--scopes", "*", "--expires", "3651d"
    )
    assert r.exit_code == 2
    assert "API key expiry must be at most 3650d" in r.stderr


def test_create_rejects_unknown_tenant(cli):
    r = cli(
        "api-key", "create", "--tenant", "nobody-here", "--name", "x", "--scopes", "*", "--json"
    )
    assert r.exit_code == 3
    assert "no tenant named 'nobody-here'" in r.stderr
    assert json.loads(r.stdout)["error"]["type"] == "not-found"


def test_create_dry_run_creates_nothing(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli(
        "api-key", "create", "--tenant", slug, "--name", "x", "--scopes", "*", "--dry-run", "--json"
    )
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan == {
        "dry_run": True,
        "key": {"tenant": slug, "name": "x", "scopes": ["*"], "expires_in_ms": None},
    }
    assert json.loads(cli("api-key", "list", "--tenant", slug, "--json").stdout)["keys"] == []


def test_list_rejects_unknown_tenant(cli):
    r = cli("api-key", "list", "--tenant", "nobody-here")
    assert r.exit_code == 3
    assert "no tenant named 'nobody-here'" in r.stderr


# -- revoke -----------------------------------------------------------------------------------
def test_revoke_requires_yes(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    doc = create(cli, slug)
    r = cli("api-key", "revoke", doc["key"]["prefix"])
    assert r.exit_code == 2
    assert (
        f"revoking API key '{doc['key']['prefix']}' is destructive: pass --yes to confirm"
        in r.stderr
    )
    assert not rejected(ctl, doc["token"], slug)


def test_revoke_dry_run_changes_nothing(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    doc = create(cli, slug)
    r = cli("api-key", "revoke", doc["key"]["id"], "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["key"]["status"] == "active"
    assert not rejected(ctl, doc["token"], slug)


def test_revoke_unknown_key(cli):
    r = cli("api-key", "revoke", "zzzzzzzzzz", "--yes")
    assert r.exit_code == 3
    assert "no API key with id or prefix 'zzzzzzzzzz'" in r.stderr


def test_revoke_unknown_token_does_not_echo_its_secret(cli):
    r = cli("api-key", "revoke", "bz_0000000000_" + "s" * 43, "--yes")
    assert r.exit_code == 3
    assert "no API key with id or prefix 'bz_0000000000…'" in r.stderr
    assert "s" * 43 not in r.stderr + r.stdout


def test_revoke_by_pasted_token_asks_for_yes_without_echoing_it(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    doc = create(cli, slug)
    secret = TOKEN.match(doc["token"]).group(2)
    r = cli("api-key", "revoke", doc["token"])
    assert r.exit_code == 2
    assert f"revoking API key 'bz_{doc['key']['prefix']}…' is destructive" in r.stderr
    assert secret not in r.stderr + r.stdout
    r = cli("api-key", "revoke", doc["token"], "--yes", "--json")
    assert r.exit_code == 0, r.stderr
    assert secret not in r.stderr + r.stdout
    assert rejected(ctl, doc["token"], slug)


def test_revoked_key_is_rejected(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    doc = create(cli, slug)
    r = cli("api-key", "revoke", doc["key"]["prefix"], "--yes", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["key"]["status"] == "revoked"
    assert rejected(ctl, doc["token"], slug)


# -- verify -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "token",
    ["", "bz_", "Bearer bz_abc", "bz_ABCDEFGHIJ_" + "x" * 43, "bz_short_" + "x" * 43, "x" * 60],
    ids=["empty", "bare-prefix", "bearer", "upper-prefix", "short-prefix", "no-format"],
)
def test_malformed_token_is_rejected(ctl, make_tenant, token):
    slug = make_tenant(tier="shared")
    with pytest.raises(Unauthorized) as info:
        verify_api_key(ctl, token, tenant=slug)
    assert info.value.message == "invalid API key"
    assert info.value.http_status == 401 and info.value.exit_code == 1


def test_unknown_key_is_rejected(ctl, make_tenant):
    slug = make_tenant(tier="shared")
    assert rejected(ctl, "bz_0000000000_" + "a" * 43, slug)


def test_wrong_secret_is_rejected(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    prefix = create(cli, slug)["key"]["prefix"]
    assert rejected(ctl, f"bz_{prefix}_" + "a" * 43, slug)


def test_expired_key_is_rejected(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    token = create(cli, slug, "--expires", "2s")["token"]
    assert not rejected(ctl, token, slug)
    wait_for(lambda: rejected(ctl, token, slug), what="expiry")
    r = cli("api-key", "list", "--tenant", slug, "--json")
    assert json.loads(r.stdout)["keys"][0]["status"] == "expired"


def test_key_of_another_tenant_is_forbidden(cli, ctl, make_tenant):
    a = make_tenant(tier="shared")
    b = make_tenant(tier="shared")
    token = create(cli, a)["token"]
    with pytest.raises(Forbidden) as info:
        verify_api_key(ctl, token, tenant=b)
    assert info.value.message == f"this API key does not belong to tenant '{b}'"
    assert info.value.http_status == 403
    # a refused use is not a use
    keys = json.loads(cli("api-key", "list", "--tenant", a, "--json").stdout)["keys"]
    assert keys[0]["last_used_at"] is None


def test_verify_records_last_use(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    token = create(cli, slug)["token"]
    first = verify_api_key(ctl, token, tenant=slug).last_used_at
    keys = json.loads(cli("api-key", "list", "--tenant", slug, "--json").stdout)["keys"]
    assert first is not None
    assert dt.datetime.fromisoformat(keys[0]["last_used_at"]) == first


# -- rotate -----------------------------------------------------------------------------------
def test_rotate_keeps_old_key_during_grace_then_not(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    old = create(cli, slug, name="sync", scopes="invoices:read,tasks:write")
    r = cli("api-key", "rotate", old["key"]["prefix"], "--grace", "2s", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    new_token, new = doc["token"], doc["key"]
    assert new["name"] == "sync" and new["scopes"] == ["invoices:read", "tasks:write"]
    assert new["prefix"] != old["key"]["prefix"] and new["expires_at"] is None
    assert doc["replaces"]["id"] == old["key"]["id"]
    assert doc["replaces"]["replaced_by"] == new["id"]
    # during the grace both keys work
    assert not rejected(ctl, old["token"], slug)
    assert not rejected(ctl, new_token, slug)
    wait_for(lambda: rejected(ctl, old["token"], slug), what="end of grace")
    assert not rejected(ctl, new_token, slug)


def test_rotate_hands_on_the_lifetime(cli, make_tenant):
    slug = make_tenant(tier="shared")
    old = create(cli, slug, "--expires", "30d")
    r = cli("api-key", "rotate", old["key"]["id"], "--json")
    assert r.exit_code == 0, r.stderr
    new = json.loads(r.stdout)["key"]
    lifetime = dt.datetime.fromisoformat(new["expires_at"]) - dt.datetime.fromisoformat(
        new["created_at"]
    )
    assert lifetime == dt.timedelta(days=30)


def test_rotate_grace_never_extends_the_old_expiry(cli, make_tenant):
    slug = make_tenant(tier="shared")
    old = create(cli, slug, "--expires", "1h")
    r = cli("api-key", "rotate", old["key"]["prefix"], "--grace", "48h", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["replaces"]["expires_at"] == old["key"]["expires_at"]


def test_rotate_dry_run_changes_nothing(cli, make_tenant):
    slug = make_tenant(tier="shared")
    old = create(cli, slug)
    r = cli("api-key", "rotate", old["key"]["prefix"], "--grace", "1h", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["key"]["id"] == old["key"]["id"] and plan["new_scopes"] == ["invoices:read"]
    keys = json.loads(cli("api-key", "list", "--tenant", slug, "--json").stdout)["keys"]
    assert len(keys) == 1 and keys[0]["expires_at"] is None and keys[0]["replaced_by"] is None


def test_rotate_rejects_bad_grace(cli, make_tenant):
    slug = make_tenant(tier="shared")
    old = create(cli, slug)
    r = cli("api-key", "rotate", old["key"]["prefix"], "--grace", "forever")
    assert r.exit_code == 2
    assert "invalid --grace 'forever': use e.g. 500ms, 5s, 2m, 1h or 7d" in r.stderr


def test_rotate_rejects_grace_beyond_thirty_days(cli, make_tenant):
    slug = make_tenant(tier="shared")
    old = create(cli, slug)
    r = cli("api-key", "rotate", old["key"]["prefix"], "--grace", "31d")
    assert r.exit_code == 2
    assert "grace period must be at most 30d" in r.stderr


def test_rotate_unknown_key(cli):
    r = cli("api-key", "rotate", "00000000-0000-0000-0000-000000000000")
    assert r.exit_code == 3
    assert "no API key with id or prefix '00000000-0000-0000-0000-000000000000'" in r.stderr


def test_rotate_revoked_key_is_refused(cli, make_tenant):
    slug = make_tenant(tier="shared")
    prefix = create(cli, slug)["key"]["prefix"]
    assert cli("api-key", "revoke", prefix, "--yes").exit_code == 0
    r = cli("api-key", "rotate", prefix)
    assert r.exit_code == 2
    assert f"API key '{prefix}' is revoked: create a new key instead" in r.stderr


def test_rotate_a_rotated_key_is_refused(cli, make_tenant):
    slug = make_tenant(tier="shared")
    prefix = create(cli, slug)["key"]["prefix"]
    new_id = json.loads(cli("api-key", "rotate", prefix, "--json").stdout)["key"]["id"]
    r = cli("api-key", "rotate", prefix)
    assert r.exit_code == 2
    assert f"API key '{prefix}' was already rotated (replaced by {new_id})" in r.stderr


# -- the token is shown once ------------------------------------------------------------------
def test_tokens_appear_only_where_they_are_shown(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    outputs: list[tuple[str, str]] = []

    def run(label: str, *args: str):
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        outputs.append((label, r.stdout + r.stderr))
        return r

    run("create", "api-key", "create", "--tenant", slug, "--name", "a", "--scopes", "*")
    r = run(
        "create-json",
        "api-key",
        "create",
        "--tenant",
        slug,
        "--name",
        "b",
        "--scopes",
        "*",
        "--json",
    )
    first = json.loads(r.stdout)
    human_token = next(t for t in outputs[0][1].split() if TOKEN.match(t))
    r = run("rotate-json", "api-key", "rotate", first["key"]["prefix"], "--json")
    rotated = json.loads(r.stdout)["token"]
    r = run("rotate", "api-key", "rotate", rotated.split("_")[1])
    rotated_human = next(t for t in r.stdout.split() if TOKEN.match(t))
    run("list-json", "api-key", "list", "--tenant", slug, "--json")
    run("list", "api-key", "list")
    run("revoke", "api-key", "revoke", first["key"]["prefix"], "--yes", "--json")

    shown_in = {
        human_token: "create",
        first["token"]: "create-json",
        rotated: "rotate-json",
        rotated_human: "rotate",
    }
    assert len(set(shown_in)) == 4
    rows = api_key_rows(ctl)
    for token, where in shown_in.items():
        secret = TOKEN.match(token).group(2)
        seen = [label for label, out in outputs for _ in range(out.count(secret))]
        assert seen == [where], (where, seen)
        assert not any(secret in row for row in rows)
