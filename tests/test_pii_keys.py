"""PII keys: destroyed after a grace period, rotation past values that do not decrypt, and the
rotations after a master-key compromise (issue 11, items 3, 4 and 11)."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
from sqlalchemy import text

from bizosctl.db.engines import get_engine
from bizosctl.security.fields import decrypt, key_version
from bizosctl.tenancy.sample import load_sample_data


@pytest.fixture
def home(initialised_home):
    """An initialised home of this test's own (a copy of the worker's template)."""
    from bizosctl.catalog.control import get_control

    return get_control()


def app_connection(ctl, slug):
    """The tenant's real application login role (credentials from the catalog's route), over
    its own connection, in the tenant's context as the application sets it."""
    route = ctl.route(slug)
    handle = ctl.server(route.server)
    engine = get_engine(handle.login_url(route.database, route.role, route.password), pooled=False)
    return engine, route


def app_exec(ctl, slug, sql, **params):
    engine, route = app_connection(ctl, slug)
    with engine.begin() as c:
        c.execute(
            text(
                "select set_config('bizos.tenant_id', :t, true), "
                "set_config('search_path', :p, true)"
            ),
            {"t": str(route.tenant_id), "p": f'"{route.schema}", public'},
        )
        rows = c.execute(text(sql), params)
        return rows.all() if rows.returns_rows else rows.rowcount


def catalog_keyring(ctl, purpose="pii"):
    """Keyring rows read over a plain connection to the catalog database."""
    with get_engine(ctl.home_cluster.url("bizos_control"), pooled=False).connect() as c:
        return {
            r.version: r
            for r in c.execute(
                text(
                    "select version, retired_at, wrapped_key, "
                    "to_jsonb(keyring) ->> 'destroyed_at' as destroyed_at "
                    "from keyring where purpose = :p order by version"
                ),
                {"p": purpose},
            )
        }


def states(cli, purpose="pii"):
    doc = json.loads(cli("secrets", "list", "--json").stdout)
    return {
        v["version"]: v["state"]
        for p in doc["purposes"]
        if p["purpose"] == purpose
        for v in p["versions"]
    }


def garbage(version=1):
    """Looks like a value under ``version`` but is random bytes."""
    return f"bz1.{version}." + base64.urlsafe_b64encode(os.urandom(40)).decode()


# -- item 3: retired key material is destroyed after a grace period -----------------------------
def test_retired_pii_key_material_is_destroyed_after_the_grace_period(home, cli):
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings
    from bizosctl.errors import KeyDestroyed
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="shred-co", name="S", tier="schema", region="global")
    load_sample_data(home, "shred-co")
    [(old_token, tid)] = app_exec(
        home, "shred-co", "select email_enc, tenant_id::text from members order by id limit 1"
    )
    assert key_version(old_token) == 1
    grace = {"BIZOS_KEY_DESTROY_AFTER": "1s"}
    r = cli("secrets", "rotate", "pii", "--json", env=grace)
    assert r.exit_code == 0, r.stderr
    rows = catalog_keyring(home)
    assert rows[1].retired_at is not None and rows[1].wrapped_key is not None  # in its grace
    # wait on the catalog's clock (deadline) until v1's grace has passed
    deadline = time.monotonic() + 30
    with get_engine(home.home_cluster.url("bizos_control"), pooled=False).connect() as c:
        while not c.execute(
            text(
                "select now() > retired_at + interval '1 second' from keyring "
                "where purpose = 'pii' and version = 1"
            )
        ).scalar_one():
            c.rollback()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    r = cli("secrets", "rotate", "pii", "--json", env=grace)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["destroyed"] == [1]
    rows = catalog_keyring(home)
    assert rows[1].wrapped_key is None and rows[1].destroyed_at is not None
    assert rows[2].retired_at is not None and rows[2].wrapped_key is not None  # v2 in its grace
    assert states(cli) == {1: "destroyed", 2: "retired", 3: "primary", 4: "staged"}
    other = Control(Settings())  # a new process: the master key opens nothing for v1
    with pytest.raises(KeyDestroyed, match="'pii' key version 1 was destroyed"):
        decrypt(other.keyring, old_token, tenant_id=tid, table="members", column="email")


def test_key_destroy_after_bad_value_is_one_line(home, cli):
    r = cli("secrets", "list", env={"BIZOS_KEY_DESTROY_AFTER": "soon"})
    assert r.exit_code == 2
    assert "key_destroy_after" in r.stderr and "use e.g. 500ms, 5s, 2m, 1h or 7d" in r.stderr


# -- item 4: values that do not decrypt are quarantined, not fatal -----------------------------
def test_a_garbage_value_written_by_the_app_role_does_not_stop_the_rotation(home, cli):
    from bizosctl.tenancy.provision import create_tenant

    for slug in ("bad-co", "good-co"):
        create_tenant(home, slug=slug, name=slug, tier="schema", region="global")
        load_sample_data(home, slug)
    [(victim,)] = app_exec(home, "bad-co", "select id::text from members order by id limit 1")
    bad = garbage(1)
    assert app_exec(
        home, "bad-co", "update members set email_enc = :b where id = :i", b=bad, i=victim
    )
    r = cli("secrets", "rotate", "pii", "--json")
    assert r.exit_code == 1, r.stdout
    doc = json.loads(r.stdout)  # one JSON document: the report, saying which value
    assert doc["retired"] == [1]  # only the quarantined value is left under v1
    [q] = doc["quarantined"]
    tenant_id = str(home.route("bad-co").tenant_id)
    assert (q["table"], q["key"], q["column"], q["tenant_id"], q["action"]) == (
        "members",
        victim,
        "email_enc",
        tenant_id,
        "kept",
    )
    assert q["target"].count("/") == 2  # server/database/schema
    assert bad not in r.stdout + r.stderr  # the value itself is not echoed
    # everyone else is done: every other value is under v2
    for slug in ("bad-co", "good-co"):
        for (token,) in app_exec(
            home, slug, "select email_enc from members where email_enc <> :b", b=bad
        ):
            assert key_version(token) == 2
    assert app_exec(home, "bad-co", "select email_enc from members where id = :i", i=victim) == [
        (bad,)
    ]
    # the operation records it
    with home.catalog() as s:
        values = s.execute(
            text(
                "select s.data->'values' from operation_steps as s join operations as o "
                "on o.id = s.op_id where o.kind = 'secrets.rotate' and o.target = 'pii' "
                "and s.name = 'quarantine' order by o.started_at desc limit 1"
            )
        ).scalar_one()
    recorded = list(values)
    assert [(v["table"], v["key"], v["column"]) for v in recorded] == [
        ("members", victim, "email_enc")
    ]
    # the human output says it too, and the exit code is 1 again
    r = cli("secrets", "rotate", "pii")
    assert r.exit_code == 1
    assert "quarantined" in r.stdout + r.stderr and victim in r.stdout + r.stderr


def test_quarantine_action_null_clears_nullable_columns(home, cli):
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="null-co", name="N", tier="isolated", region="global")
    load_sample_data(home, "null-co")
    ids = [
        i
        for (i,) in app_exec(
            home, "null-co", "select id::text from members where phone_enc is not null order by id"
        )
    ]
    a, b = ids[:2]
    app_exec(home, "null-co", "update members set phone_enc = :g where id = :i", g=garbage(1), i=a)
    app_exec(home, "null-co", "update members set name_enc = 'not even a token' where id = :i", i=b)
    r = cli("secrets", "rotate", "pii", "--quarantine-action", "null", "--json")
    assert r.exit_code == 1, r.stdout
    doc = json.loads(r.stdout)
    found = {(q["key"], q["column"]): q["action"] for q in doc["quarantined"]}
    assert found == {(a, "phone_enc"): "nulled", (b, "name_enc"): "kept (column is required)"}
    assert app_exec(home, "null-co", "select phone_enc from members where id = :i", i=a) == [
        (None,)
    ]
    assert doc["retired"] == [1]


def test_quarantine_action_bad_value(home, cli):
    r = cli("secrets", "rotate", "pii", "--quarantine-action", "drop")
    assert r.exit_code == 2


# -- item 11: after a master-key compromise the data keys rotate too ---------------------------
def test_rotate_master_key_compromised_rotates_every_data_key(home, cli):
    from bizosctl.catalog.control import get_control, reset_controls
    from bizosctl.errors import InvalidToken
    from bizosctl.security.jwt import issue_token, verify_token
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="leak-co", name="L", tier="isolated", region="global")
    load_sample_data(home, "leak-co")
    token = issue_token(home, subject="u", tenant="leak-co")
    old_password = home.route("leak-co").password
    old_master = home.settings.key_file.read_text()
    before = sorted(
        decrypt(home.keyring, e, tenant_id=t, table="members", column="email", row=i)
        for e, t, i in app_exec(home, "leak-co", "select email_enc, tenant_id, id from members")
    )
    keyring_before = {p: catalog_keyring(home, p) for p in ("pii", "jwt", "db-credentials")}

    r = cli("secrets", "rotate", "master-key", "--compromised", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert [s["step"] for s in plan["plan"]] == [
        "master-key",
        "pii --fresh-key",
        "jwt --fresh-key",
        "db-credentials",
        "db-password --all",
    ]
    assert home.settings.key_file.read_text() == old_master
    assert {p: catalog_keyring(home, p) for p in keyring_before} == keyring_before
    r = cli("secrets", "rotate", "master-key", "--compromised", "--dry-run")
    assert r.exit_code == 0 and "pii --fresh-key" in r.stdout

    r = cli("secrets", "rotate", "master-key", "--compromised")
    assert r.exit_code == 2 and "--yes" in r.stderr

    r = cli("secrets", "rotate", "master-key", "--compromised", "--yes", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pii"]["version"] == 3  # a fresh key, not the staged (exposed) v2
    assert doc["jwt"]["kid"] == "jwt-v3"
    assert doc["db-credentials"]["version"] == 2
    rotated = doc["db-password"]["rotated"]
    assert [x["tenant"] for x in rotated if "tenant" in x] == ["leak-co"]
    assert {x["shared"] for x in rotated if "shared" in x} == {"global-1"}  # shared roles too
    assert home.settings.key_file.read_text() != old_master
    reset_controls()
    ctl = get_control()
    with pytest.raises(InvalidToken):
        verify_token(ctl, token)  # every token signed with the exposed keys is refused
    assert ctl.route("leak-co").password != old_password
    after = sorted(
        decrypt(ctl.keyring, e, tenant_id=t, table="members", column="email", row=i)
        for e, t, i in app_exec(ctl, "leak-co", "select email_enc, tenant_id, id from members")
    )
    assert after == before
    assert {
        key_version(e) for (e,) in app_exec(ctl, "leak-co", "select email_enc from members")
    } == {3}
