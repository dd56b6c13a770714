"""Rotated database credentials stop working: held sessions end, old passwords fail, the shared
role rotates too, an interrupted grace is finished by the next run, a move retires the source's
login roles. Every check is a real login over a real connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from bizosctl.db.engines import get_engine
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data


def login(ctl, route, *, database=None, role=None, password=None):
    """A real connection with the given credentials (default: the route's)."""
    handle = ctl.server(route.server)
    url = handle.login_url(
        database or route.database, role or route.role, password or route.password
    )
    return get_engine(url, pooled=False).connect()


def can_login(ctl, route, **kw) -> bool:
    try:
        with login(ctl, route, **kw) as c:
            c.execute(text("select 1"))
    except OperationalError:
        return False
    return True


def held_connection_is_dead(conn) -> bool:
    try:
        conn.execute(text("select count(*) from members")).scalar_one()
    except DBAPIError:
        return True
    finally:
        conn.close()
    return False


def rotation_ops(ctl):
    with ctl.catalog_engine.connect() as c:
        return c.execute(
            text(
                "select o.id, o.status, o.params, coalesce((select jsonb_agg(jsonb_build_object("
                "'name', s.name) order by s.at) from operation_steps as s where s.op_id = o.id "
                "and s.status = 'done'), '[]') as steps from operations as o "
                "where o.kind = 'secrets.db-password' order by o.started_at"
            )
        ).all()


def test_rotation_ends_sessions_of_the_previous_role_and_its_password_fails(ctl, make_tenant, cli):
    slug = make_tenant(tier="isolated")
    load_sample_data(ctl, slug)
    old = ctl.route(slug)
    held = login(ctl, old)  # an attacker's (or a forgotten pool's) connection as the old role
    assert held.execute(text("select current_user")).scalar_one() == old.role
    held.commit()
    r = cli(
        "secrets", "rotate", "db-password", "--tenant", slug, "--grace", "100ms", "--json"
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert held_connection_is_dead(held)
    assert not can_login(ctl, old)
    doc = json.loads(r.stdout)
    assert doc["retired"] == [old.role]
    assert doc["sessions_terminated"] >= 1
    new = ctl.route(slug)
    assert new.role == old.role + "__b"
    with tenant_session(ctl, slug, actor="t", read_only=True) as s:
        assert s.execute(text("select count(*) from members")).scalar_one() > 0


def test_shared_login_role_rotates_for_every_shared_and_schema_tenant(ctl, make_tenant, cli):
    shared = make_tenant(tier="shared", region="id")
    schema = make_tenant(tier="schema", region="id")
    before = ctl.route(shared)
    assert before.role in ("bizos_app_shared", "bizos_app_shared__b")
    held = login(ctl, before)
    held.execute(text("select 1"))
    held.commit()
    r = cli(
        "secrets", "rotate", "db-password", "--server", before.server, "--grace", "0s", "--json"
    )
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["rotated"] == [
        {
            "shared": before.server,
            "server": before.server,
            "role": _other(before.role),
            "previous": before.role,
        }
    ]
    assert doc["sessions_terminated"] >= 1
    assert held_connection_is_dead(held)
    assert not can_login(ctl, before)  # the old shared password is worthless
    for slug in (shared, schema):
        after = ctl.route(slug)
        assert after.role == _other(before.role)
        assert after.password != before.password
        with tenant_session(ctl, slug, actor="t") as s:
            s.execute(text("select count(*) from members")).scalar_one()
    # a tenant created after the rotation uses the new role
    late = make_tenant(tier="schema", region="id")
    assert ctl.route(late).role == _other(before.role)
    # --shared REGION rotates it back, and --all includes it
    r = cli("secrets", "rotate", "db-password", "--shared", "id", "--grace", "0s", "--json")
    assert r.exit_code == 0, r.stderr
    assert ctl.route(shared).role == before.role
    r = cli("secrets", "rotate", "db-password", "--all", "--grace", "0s", "--dry-run", "--json")
    planned = json.loads(r.stdout)["would_rotate"]
    assert {"shared": before.server, "server": before.server} in [
        {k: p[k] for k in ("shared", "server")} for p in planned if "shared" in p
    ]


def _other(role):
    return role.removesuffix("__b") if role.endswith("__b") else role + "__b"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "pass one of --tenant SLUG, --shared REGION, --server NAME or --all"),
        (("--tenant", "x1y", "--all"), "pass one of --tenant SLUG"),
        (("--server", "nowhere-1"), "no server named 'nowhere-1'"),
        (("--shared", "mars"), "no region named 'mars'"),
        (("--all", "--grace", "2h"), "--grace must be at most 1h"),
        (("--all", "--finish"), "--finish takes no --tenant"),
    ],
)
def test_db_password_rotation_bad_input(cli, args, message):
    r = cli("secrets", "rotate", "db-password", *args)
    assert r.exit_code in (2, 3), r.stdout
    assert message in r.stderr


def _wait_for_switch(ctl, proc, slug, deadline_s=60.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for op in rotation_ops(ctl):
            if op.status == "running" and slug in json.dumps(op.params):
                if any(st["name"] == "switched" for st in op.steps):
                    return op
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail("the rotation did not switch in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_grace_is_finished_by_the_next_run(ctl, make_tenant, run_bizosctl, sig):
    slug = make_tenant(tier="isolated")
    old = ctl.route(slug)
    held = login(ctl, old)
    held.execute(text("select 1"))
    held.commit()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "secrets", "rotate", "db-password", "--tenant", slug,
         "--grace", "1h"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_for_switch(ctl, proc, slug)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "secrets rotate db-password --finish" in " ".join(err.split())
    new = ctl.route(slug)
    assert new.role != old.role
    # interrupted in its grace: both roles log in for now (today: forever), doctor says so
    assert can_login(ctl, old)
    assert can_login(ctl, new)
    assert old.role in _login_roles_check(run_bizosctl, old.server)["detail"]
    r = run_bizosctl("secrets", "rotate", "db-password", "--finish", "--json")
    assert r.returncode == 0, r.stderr
    finished = json.loads(r.stdout)["finished"]
    assert [f["retired"] for f in finished] == [[old.role]]
    assert finished[0]["sessions_terminated"] >= 1
    assert held_connection_is_dead(held)
    assert not can_login(ctl, old)
    assert can_login(ctl, new)
    assert rotation_ops(ctl)[-1].status == "done"
    assert _login_roles_check(run_bizosctl, old.server)["ok"]


def _login_roles_check(run_bizosctl, server):
    r = run_bizosctl("doctor", "--json")
    [check] = [c for c in json.loads(r.stdout)["checks"] if c["name"] == f"login roles {server}"]
    return check


def test_next_rotation_finishes_an_interrupted_one_first(ctl, make_tenant, run_bizosctl):
    slug = make_tenant(tier="isolated")
    old = ctl.route(slug)
    r = run_bizosctl(
        "secrets", "rotate", "db-password", "--tenant", slug, "--grace", "1h",
        env={"BIZOS_CRASH_AT": "rotate.db-password.switched"},
    )  # fmt: skip
    assert r.returncode == -signal.SIGKILL
    mid = ctl.route(slug)
    assert can_login(ctl, old) and can_login(ctl, mid)
    r = run_bizosctl(
        "secrets", "rotate", "db-password", "--tenant", slug, "--grace", "0s", "--json"
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [f["retired"] for f in doc["finished_earlier"]] == [[old.role]]
    assert doc["retired"] == [mid.role]
    now = ctl.route(slug)
    assert now.role == old.role and now.password != old.password
    assert not can_login(ctl, old)  # the old password of that role
    assert not can_login(ctl, mid)
    assert can_login(ctl, now)


def test_crash_before_the_catalog_switch_leaves_no_second_login(ctl, make_tenant, run_bizosctl):
    slug = make_tenant(tier="isolated")
    old = ctl.route(slug)
    r = run_bizosctl(
        "secrets", "rotate", "db-password", "--tenant", slug,
        env={"BIZOS_CRASH_AT": "rotate.db-password.switch"},
    )  # fmt: skip
    assert r.returncode == -signal.SIGKILL
    r = run_bizosctl("secrets", "rotate", "db-password", "--finish", "--json")
    assert r.returncode == 0, r.stderr
    now = ctl.route(slug)
    assert not can_login(ctl, old)
    assert can_login(ctl, now)
    with get_engine(ctl.server(now.server).admin_url("postgres"), pooled=False).connect() as c:
        logins = c.execute(
            text("select rolname from pg_roles where rolname in (:a, :b) and rolcanlogin"),
            {"a": old.role, "b": _other(old.role)},
        ).scalars()
        assert list(logins) == [now.role]


@pytest.mark.parametrize("dst", ["schema", "shared"])
def test_a_move_out_of_isolated_retires_the_source_logins(ctl, make_tenant, cli, dst):
    slug = make_tenant(tier="isolated")
    load_sample_data(ctl, slug)
    old = ctl.route(slug)
    held = login(ctl, old)
    held.execute(text("select 1"))
    held.commit()
    r = cli("tenant", "move", slug, "--to-tier", dst, "--json")
    assert r.exit_code == 0, r.stderr
    assert held_connection_is_dead(held)
    # the kept source is still there, but no application credential opens it
    assert not can_login(ctl, old)
    with get_engine(ctl.server(old.server).admin_url("postgres"), pooled=False).connect() as c:
        assert c.execute(
            text("select 1 from pg_database where datname = :d"), {"d": old.database}
        ).first()
        assert not c.execute(
            text("select rolname from pg_roles where rolname like :p and rolcanlogin"),
            {"p": old.database + "%"},
        ).all()
    with tenant_session(ctl, slug, actor="t", read_only=True) as s:
        assert s.execute(text("select count(*) from members")).scalar_one() > 0


def test_a_move_into_isolated_keeps_the_shared_role_for_the_others(ctl, make_tenant, cli):
    mover = make_tenant(tier="shared")
    stays = make_tenant(tier="shared")
    r = cli("tenant", "move", mover, "--to-tier", "isolated", "--json")
    assert r.exit_code == 0, r.stderr
    assert can_login(ctl, ctl.route(stays))
    assert can_login(ctl, ctl.route(mover))
