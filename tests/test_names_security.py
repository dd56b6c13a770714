"""Names cannot be shared between tenants, template1 is no channel, inputs are matched whole.

Issue 11, items 0, 8 and 10 (full matches, tenant display names). Each attack is run the way
an attacker would: with a tenant's own login role over a real connection.
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest
from conftest import unique_slug
from sqlalchemy import text

from bizosctl.db.engines import dispose_all, get_engine, psycopg_conninfo
from bizosctl.doctor import run_doctor
from bizosctl.errors import InvalidInput, Unauthorized
from bizosctl.security.apikeys import create_api_key, verify_api_key
from bizosctl.security.dbpasswords import rotate_db_password
from bizosctl.tenancy.sample import load_sample_data


def create(cli, slug: str, tier: str = "isolated", *extra: str, name: str = "Col"):
    return cli(
        "tenant", "create", slug, "--name", name, "--region", "global", "--tier", tier, *extra
    )


def login(ctl, slug: str, database: str | None = None) -> dict[str, str]:
    """psycopg connect arguments with the tenant's application credentials from its route."""
    route = ctl.route(slug)
    handle = ctl.server(route.server)
    url = handle.login_url(database or route.database, route.role, route.password)
    return psycopg_conninfo(url)


def admin(ctl, database: str = "postgres", server: str = "global-1"):
    engine = get_engine(ctl.server(server).admin_url(database), pooled=False)
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def check(report, name: str):
    found = [c for c in report.checks if c.name == name]
    assert found, [c.name for c in report.checks]
    return found[0]


# -- item 0: one login role, one tenant --------------------------------------------------------
def test_slug_cannot_take_over_another_tenants_rotation_role(cli, ctl):
    """The attack: `col`, then `col--b`, then rotating col's password hands col the login role
    of `col--b`, whose database it then reads."""
    col = unique_slug("c")
    other = f"{col}--b"
    assert create(cli, col).exit_code == 0
    second = create(cli, other)
    if second.exit_code == 0:  # today's code: the look-alike exists, give it rows to steal
        load_sample_data(ctl, other)
    rotated = cli("secrets", "rotate", "db-password", "--tenant", col, "--grace", "0s")
    assert rotated.exit_code == 0, rotated.stderr
    # the attacker holds col's credentials and tries the other tenant's database
    read = None
    try:
        with psycopg.connect(**login(ctl, col, database=f"t_{col}__b"), autocommit=True) as c:
            read = c.execute("select count(*) from pg_class").fetchone()
    except psycopg.OperationalError:
        pass
    assert read is None, "col's credentials opened another tenant's database"
    assert second.exit_code == 2
    assert f"invalid tenant slug '{other}'" in second.stderr
    assert "consecutive" in second.stderr
    # col still works with its rotated role
    with psycopg.connect(**login(ctl, col)) as c:
        assert c.execute("select current_user").fetchone() == (f"t_{col}__b",)


@pytest.mark.parametrize(
    "slug", ["ab--cd", "abc-", "abc--", "a--b--b", "x-y--b"], ids=lambda s: s.replace("-", "h")
)
def test_create_refuses_double_or_trailing_hyphen(cli, slug):
    r = create(cli, slug, "shared", "--json")
    assert r.exit_code == 2
    assert f"invalid tenant slug '{slug}'" in r.stderr
    assert json.loads(r.stdout)["error"]["type"] == "invalid-input"


def test_names_of_two_slugs_never_meet():
    from bizosctl.tenancy.names import check_new_slug, tenant_names

    slugs = ["col", "col-b", "co-l", "colb", "col-b-b", "c-o-l", "col9", "col-9"]
    seen: dict[str, str] = {}
    for slug in slugs:
        check_new_slug(slug)
        for name in tenant_names(slug).all():
            assert seen.setdefault(name, slug) == slug, f"{name} is {seen[name]}'s and {slug}'s"


@pytest.mark.parametrize(
    ("kind", "tier"),
    [("role-b", "isolated"), ("role", "schema"), ("database", "shared"), ("schema", "schema")],
)
def test_create_refuses_slug_whose_objects_exist(cli, ctl, kind, tier):
    slug = unique_slug("o")
    ident = f"t_{slug}"
    if kind == "schema":
        with admin(ctl, "bizos_shared") as c:
            c.execute(text(f'create schema "{ident}"'))
        drop, what = (f'drop schema "{ident}"', "bizos_shared"), f"schema {ident}"
    elif kind == "database":
        with admin(ctl) as c:
            c.execute(text(f'create database "{ident}"'))
        drop, what = (f'drop database "{ident}"', "postgres"), f"database {ident}"
    else:
        role = ident + ("__b" if kind == "role-b" else "")
        with admin(ctl) as c:
            c.execute(text(f'create role "{role}" nologin'))
        drop, what = (f'drop role "{role}"', "postgres"), f"role {role}"
    try:
        r = create(cli, slug, tier)
        assert r.exit_code == 2, r.stderr
        assert f"{what} already exists on global-1" in r.stderr
        dry = create(cli, slug, tier, "--dry-run")
        assert dry.exit_code == 2
        assert f"{what} already exists on global-1" in dry.stderr
        assert cli("tenant", "show", slug).exit_code == 3  # nothing registered
    finally:
        with admin(ctl, drop[1]) as c:
            c.execute(text(drop[0]))


def _legacy_pair(ctl, make_tenant):
    """Two isolated tenants `a` and `a--b` as the old naming made them (database and role
    `t_a__b` for the second), built from two real tenants by renaming the second."""
    from bizosctl.catalog.models import Route, Tenant

    a = make_tenant(tier="isolated")
    b = make_tenant(tier="isolated")
    legacy, ident = f"{a}--b", f"t_{a}__b"
    route = ctl.route(b)
    load_sample_data(ctl, b)
    dispose_all(host_contains=f"/{route.database}?")
    with admin(ctl) as c:
        c.execute(text(f'alter database "{route.database}" rename to "{ident}"'))
        c.execute(text(f'alter role "{route.role}" rename to "{ident}"'))
    with ctl.catalog() as s:
        s.get(Tenant, route.tenant_id).slug = legacy
        r = s.get(Route, route.tenant_id)
        r.database = r.schema = r.role = ident
        r.password_enc = ctl.seal(route.password, context=f"role:{ident}")
    # the renamed database keeps its schema name; the route names its own schema again
    with admin(ctl, ident) as c:
        c.execute(text(f'alter schema "{route.schema}" rename to "{ident}"'))
    return a, legacy


def test_rotation_refuses_a_role_that_serves_another_tenant(cli, ctl, make_tenant):
    a, legacy = _legacy_pair(ctl, make_tenant)
    r = cli("secrets", "rotate", "db-password", "--tenant", a, "--grace", "0s")
    assert r.exit_code == 2, r.stdout
    assert f"role t_{a}__b already serves tenant '{legacy}'" in r.stderr
    # a keeps its role; the legacy tenant keeps its own login
    with psycopg.connect(**login(ctl, a)) as c:
        assert c.execute("select current_user").fetchone() == (f"t_{a}",)
    with psycopg.connect(**login(ctl, legacy)) as c:
        assert c.execute("select current_user").fetchone() == (f"t_{a}__b",)
    with pytest.raises(InvalidInput):
        rotate_db_password(ctl, tenant=a, grace_ms=0)
    assert cli("tenant", "delete", legacy, "--yes").exit_code == 0
    assert cli("tenant", "delete", a, "--yes").exit_code == 0


def test_doctor_flags_shared_login_role_and_invalid_slug(cli, ctl, make_tenant):
    a, legacy = _legacy_pair(ctl, make_tenant)
    # what the old rotation did: a's database let the other tenant's login role in
    with admin(ctl) as c:
        c.execute(text(f'grant connect on database "t_{a}" to "t_{a}__b"'))
    try:
        report = run_doctor(ctl)
        assert not report.ok
        names = check(report, "tenant names")
        assert not names.ok
        assert f"role t_{a}__b on global-1 serves tenants {a}, {legacy}" in names.detail
        slugs = check(report, "tenant slugs")
        assert not slugs.ok
        assert f"{legacy!r}" in slugs.detail
        grants = check(report, "connect global-1")
        assert not grants.ok
        assert f"role t_{a}__b can connect to t_{a}, t_{a}__b" in grants.detail
    finally:
        # deleting `a` must not drop the login role the legacy tenant lives on
        assert cli("tenant", "delete", a, "--yes").exit_code == 0
        with psycopg.connect(**login(ctl, legacy)) as c:
            assert c.execute("select current_user").fetchone() == (f"t_{a}__b",)
        assert cli("tenant", "delete", legacy, "--yes").exit_code == 0
    report = run_doctor(ctl)
    assert check(report, "tenant names").ok, check(report, "tenant names").detail
    assert check(report, "tenant slugs").ok
    assert check(report, "connect global-1").ok, check(report, "connect global-1").detail


def test_doctor_finds_template1_closed_on_every_server(ctl, make_tenant):
    make_tenant(tier="isolated")
    make_tenant(tier="schema")
    report = run_doctor(ctl)
    # other tests of this worker may have left legacy pairs; only ours must not be flagged
    assert check(report, "template1 global-1").ok
    assert check(report, "template1 id-1").ok


# -- item 8: template1 ---------------------------------------------------------------------------
def test_app_role_cannot_plant_large_objects_for_new_tenants(ctl, make_tenant):
    a = make_tenant(tier="isolated")
    planted = None
    try:
        with psycopg.connect(**login(ctl, a, database="template1"), autocommit=True) as c:
            planted = c.execute("select lo_from_bytea(0, 'from tenant a')").fetchone()[0]
    except psycopg.OperationalError as exc:
        assert "permission denied for database" in str(exc)
    try:
        b = make_tenant(tier="isolated")
        with admin(ctl, ctl.route(b).database) as c:
            seen = c.execute(text("select count(*) from pg_largeobject_metadata")).scalar_one()
        assert seen == 0, "tenant a's large object appeared in tenant b's new database"
        assert planted is None, "an app role connected to template1"
    finally:
        if planted is not None:
            with admin(ctl, "template1") as c:
                c.execute(text("select lo_unlink(:o)"), {"o": planted})


def test_new_tenant_database_is_built_from_template0(ctl, make_tenant):
    """Whatever template1 holds (an operator's table, a leftover) stays out of tenants."""
    with admin(ctl, "template1") as c:
        c.execute(text("create table if not exists planted_by_someone (x int)"))
    try:
        b = make_tenant(tier="isolated")
        with admin(ctl, ctl.route(b).database) as c:
            assert (
                c.execute(text("select to_regclass('public.planted_by_someone')")).scalar() is None
            )
            assert (
                c.execute(
                    text("select extname from pg_extension where extname = 'vector'")
                ).scalar()
                == "vector"
            )
            allow = c.execute(
                text("select datallowconn from pg_database where datname = current_database()")
            ).scalar()
            assert allow is True
    finally:
        with admin(ctl, "template1") as c:
            c.execute(text("drop table if exists planted_by_someone"))


def test_half_created_database_admits_no_login_role(ctl, make_tenant, run_bizosctl):
    """Killed between CREATE DATABASE and its grants: nobody gets into the new database."""
    other = make_tenant(tier="isolated")  # the attacker holds this tenant's credentials
    slug = unique_slug("w")
    args = ("tenant", "create", slug, "--name", "W", "--region", "global", "--tier", "isolated")
    assert run_bizosctl(*args, env={"BIZOS_CRASH_AT": "database.created"}).returncode == -9
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(**login(ctl, other, database=f"t_{slug}")).close()
    finished = run_bizosctl(*args)
    assert finished.returncode == 0, finished.stderr
    with psycopg.connect(**login(ctl, slug)) as c:
        assert c.execute("select current_database()").fetchone() == (f"t_{slug}",)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(**login(ctl, other, database=f"t_{slug}")).close()


def test_byo_server_closes_template1(fresh_home, cli, tcp_cluster_factory):
    """A server bizosctl does not run gets template1 closed when it is registered."""
    from bizosctl.catalog.control import get_control

    assert cli("init").exit_code == 0
    port, _stop = tcp_cluster_factory()
    url = f"postgresql://byo_admin@127.0.0.1:{port}/postgres"
    r = cli(
        "region", "add", "far", "--url", url, "--insecure",
        env={"BIZOS_SERVER_PASSWORD": "byo-pass-123"},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    slug = unique_slug("f")
    r = cli("tenant", "create", slug, "--name", "F", "--region", "far", "--tier", "isolated")
    assert r.exit_code == 0, r.stderr
    ctl = get_control()
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(**login(ctl, slug, database="template1")).close()
    assert check(run_doctor(ctl), "template1 far-1").ok


def test_doctor_flags_template1_open_to_public(ctl):
    with admin(ctl) as c:
        c.execute(text("grant connect on database template1 to public"))
    try:
        t1 = check(run_doctor(ctl), "template1 global-1")
        assert not t1.ok
        assert "PUBLIC can connect to template1" in t1.detail
    finally:
        with admin(ctl) as c:
            c.execute(text("revoke connect, temporary on database template1 from public"))


# -- item 10: full matches, bounded names ------------------------------------------------------
def test_create_refuses_slug_with_trailing_newline(cli):
    slug = unique_slug("beta") + "\n"
    r = create(cli, slug, "shared")
    assert r.exit_code == 2
    assert "invalid tenant slug" in r.stderr


def test_reserved_slug_with_trailing_newline_is_refused(cli):
    r = create(cli, "admin\n", "shared")
    assert r.exit_code == 2
    assert "invalid tenant slug 'admin\\n'" in r.stderr


def test_scope_with_trailing_newline_is_refused(ctl, make_tenant):
    slug = make_tenant(tier="shared")
    with pytest.raises(InvalidInput, match="invalid scope 'tenants:read\\\\n'"):
        create_api_key(ctl, tenant=slug, name="x", scopes=["tenants:read\n"], expires_ms=None)


def test_event_with_trailing_newline_is_refused(ctl, make_tenant):
    from bizosctl.notify.webhooks import plan_endpoint

    slug = make_tenant(tier="shared")
    with pytest.raises(InvalidInput, match=re.escape("invalid event name 'invoice.paid\\n'")):
        plan_endpoint(ctl, tenant=slug, url="https://example.com/h", events=["invoice.paid\n"])


def test_api_token_with_trailing_newline_does_not_verify(ctl, make_tenant):
    slug = make_tenant(tier="shared")
    _key, token = create_api_key(ctl, tenant=slug, name="x", scopes=["*"], expires_ms=None)
    verify_api_key(ctl, token, tenant=slug)
    with pytest.raises(Unauthorized):
        verify_api_key(ctl, token + "\n", tenant=slug)


def test_home_region_setting_is_matched_whole():
    from pydantic import ValidationError

    from bizosctl.config import Settings

    with pytest.raises(ValidationError):
        Settings(home_region="global\n")


def test_region_name_with_trailing_newline_is_refused(cli):
    r = cli("tenant", "list", "--region", "global\n")
    assert r.exit_code == 2
    assert "invalid region name 'global\\n'" in r.stderr


def test_tenant_name_longer_than_200_is_refused(cli):
    r = create(cli, unique_slug(), "shared", name="n" * 201)
    assert r.exit_code == 2
    assert "tenant name is too long (201 characters; at most 200)" in r.stderr


def test_dry_run_refuses_long_name_too(cli):
    r = create(cli, unique_slug(), "shared", "--dry-run", name="n" * 201)
    assert r.exit_code == 2
    assert "tenant name is too long (201 characters; at most 200)" in r.stderr


def test_tenant_name_of_200_is_accepted(cli):
    slug = unique_slug()
    r = create(cli, slug, "shared", "--json", name="n" * 200)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "n" * 200


@pytest.mark.parametrize("name", ["Acme\x1b[31mRed", "Acme\nInc", "Acme\x00", "Acme\u202e"])
def test_tenant_name_with_control_characters_is_refused(cli, name):
    r = create(cli, unique_slug(), "shared", name=name)
    assert r.exit_code == 2
    assert "tenant name must not contain control characters" in r.stderr
