"""doctor sees what went wrong in the fleet: stuck moves, dead operations, expired kept
sources, stored credentials that no longer log in, idle login roles that still do.

The session fleet is shared by the tests of a worker, so each test looks for its own tenant in
a check's detail rather than for the whole check to be ok."""

from __future__ import annotations

import json

from sqlalchemy import text

from bizosctl.db.engines import get_engine


def doctor(cli) -> dict[str, dict]:
    r = cli("doctor", "--json")
    assert r.exit_code in (0, 1), r.output
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_doctor_finds_a_tenant_stuck_moving_and_says_how_to_fix_it(
    ctl, make_tenant, run_bizosctl, cli
):
    slug = make_tenant(tier="schema")
    killed = run_bizosctl(
        "tenant", "move", slug, "--to-tier", "isolated", env={"BIZOS_CRASH_AT": "move.capture"}
    )
    assert killed.returncode == -9
    check = doctor(cli)["stuck tenants"]
    assert not check["ok"]
    assert f"tenant '{slug}' is moving but no process runs its move" in check["detail"]
    assert f"`bizosctl tenant move {slug} --resume`" in check["detail"]
    assert cli("tenant", "move", slug, "--abort", "--json").exit_code == 0
    assert f"'{slug}'" not in doctor(cli)["stuck tenants"]["detail"]


def test_doctor_finds_an_operation_whose_process_died(ctl, run_bizosctl, cli):
    import uuid

    slug = f"d{uuid.uuid4().hex[:10]}"  # (importing conftest again would make a new home)
    args = ("tenant", "create", slug, "--name", "D", "--region", "global", "--tier", "schema")
    assert run_bizosctl(*args, env={"BIZOS_CRASH_AT": "tenant.create.registered"}).returncode == -9
    check = doctor(cli)["unfinished operations"]
    assert not check["ok"]
    assert f"(tenant.create {slug}) stopped after" in check["detail"]
    assert "(or the same command again) resumes it" in check["detail"]
    assert "`bizosctl ops resume " in check["detail"]
    assert run_bizosctl(*args).returncode == 0
    assert f"tenant.create {slug})" not in doctor(cli)["unfinished operations"]["detail"]


def test_doctor_finds_kept_sources_past_their_time(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "move", slug, "--to-tier", "isolated", "--keep-source", "0s", "--json")
    assert r.exit_code == 0, r.output
    check = doctor(cli)["kept sources"]
    assert not check["ok"]
    assert f"{slug}: schema copy (bizos_shared/t_{slug} on global-1)" in check["detail"]
    assert cli("tenant", "move", slug, "--purge-source", "--yes").exit_code == 0
    assert f"{slug}: " not in doctor(cli)["kept sources"]["detail"]


def test_doctor_finds_stored_credentials_that_do_not_log_in(ctl, make_tenant, cli):
    slug = make_tenant(tier="isolated")
    route = ctl.route(slug)
    admin = get_engine(ctl.server(route.server).admin_url("postgres"), pooled=False)
    with admin.begin() as c:
        c.execute(text(f"alter role \"{route.role}\" password 'changed-behind-our-back'"))
    check = doctor(cli)["stored credentials"]
    assert not check["ok"]
    assert f"{slug}: stored credentials do not log in" in check["detail"]
    with admin.begin() as c:  # the fleet is shared: leave the tenant reachable again
        literal = "'" + route.password.replace("'", "''") + "'"
        c.execute(text(f'alter role "{route.role}" password {literal}'))
    assert f"{slug}: " not in doctor(cli)["stored credentials"]["detail"]


def test_doctor_finds_an_idle_login_role_that_can_still_log_in(ctl, make_tenant, cli):
    from bizosctl.tenancy.names import login_roles

    slug = make_tenant(tier="isolated")
    r = cli("secrets", "rotate", "db-password", "--tenant", slug, "--grace", "0s", "--json")
    assert r.exit_code == 0, r.output
    route = ctl.route(slug)
    [idle] = [r for r in login_roles(route.database) if r != route.role]
    assert f"idle role {idle} " not in doctor(cli)["idle login roles"]["detail"]
    admin = get_engine(ctl.server(route.server).admin_url("postgres"), pooled=False)
    with admin.begin() as c:
        c.execute(text(f"alter role \"{idle}\" login password 'left-over-password'"))
    check = doctor(cli)["idle login roles"]
    assert not check["ok"]
    assert f"idle role {idle} on global-1 can still log in" in check["detail"]
    with admin.begin() as c:
        c.execute(text(f'alter role "{idle}" nologin password null'))


def test_doctor_finds_key_material_kept_past_its_grace(initialised_home, cli):
    r = cli("secrets", "rotate", "pii", "--json")
    assert r.exit_code == 0, r.output  # v1 retired, its material kept for the grace period
    now = {"BIZOS_KEY_DESTROY_AFTER": "0s"}
    r = cli("doctor", "--json", env=now)
    check = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["key lifetimes"]
    assert not check["ok"]
    assert "retired pii v1 still holds its key material" in check["detail"]
    assert cli("secrets", "retire-due", "--json", env=now).exit_code == 0
    r = cli("doctor", "--json", env=now)
    assert {c["name"]: c for c in json.loads(r.stdout)["checks"]}["key lifetimes"]["ok"]
