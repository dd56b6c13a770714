"""tenant create/list/show/lock/unlock/delete/query through the CLI, against real PostgreSQL."""

from __future__ import annotations

import json

import pytest
from conftest import unique_slug

from tenant_schema import TENANT_TABLES


@pytest.mark.parametrize(
    ("tier", "region"), [("shared", "global"), ("schema", "id"), ("isolated", "id")]
)
def test_create_each_tier_then_show_json(cli, tier, region):
    slug = unique_slug("c")
    r = cli(
        "tenant",
        "create",
        slug,
        "--name",
        "Create Test",
        "--region",
        region,
        "--tier",
        tier,
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["slug"] == slug and created["tier"] == tier and created["status"] == "active"

    r = cli("tenant", "show", slug, "--json")
    assert r.exit_code == 0, r.stderr
    shown = json.loads(r.stdout)
    assert set(shown) >= {
        "slug",
        "tier",
        "region",
        "status",
        "server",
        "database",
        "schema",
        "created_at",
        "row_counts",
    }
    assert set(shown["row_counts"]) == set(TENANT_TABLES)
    # a new tenant has exactly its state row and its settings row
    assert shown["row_counts"]["tenant_state"] == 1
    assert shown["row_counts"]["settings"] == 1
    assert shown["row_counts"]["members"] == 0
    expected_schema = {"shared": "shared"}.get(tier, "t_" + slug)
    assert shown["schema"] == expected_schema
    assert shown["database"] == ("t_" + slug if tier == "isolated" else "bizos_shared")
    assert shown["server"] == f"{region}-1"


def test_list_json_contract(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("tenant", "list", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    mine = [t for t in doc["tenants"] if t["slug"] == slug]
    assert len(mine) == 1
    assert set(mine[0]) == {
        "id",
        "slug",
        "name",
        "tier",
        "region",
        "status",
        "server",
        "database",
        "schema",
        "created_at",
        "time_zone",
        "time_zone_is_default",
    }


def test_list_filters_by_tier(cli, make_tenant):
    iso = make_tenant(tier="isolated")
    r = cli("tenant", "list", "--tier", "isolated", "--json")
    tiers = {t["tier"] for t in json.loads(r.stdout)["tenants"]}
    assert tiers == {"isolated"}
    assert iso in {t["slug"] for t in json.loads(r.stdout)["tenants"]}


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("Bad_Slug", "invalid tenant slug 'Bad_Slug'"),
        ("ab", "invalid tenant slug 'ab'"),
        ("9lives", "invalid tenant slug '9lives'"),
        ("a" * 41, "invalid tenant slug"),
        ("admin", "tenant slug 'admin' is reserved"),
        ("public", "tenant slug 'public' is reserved"),
        ("shared", "tenant slug 'shared' is reserved"),
    ],
)
def test_create_rejects_bad_slug(cli, slug, message):
    r = cli("tenant", "create", slug, "--name", "X", "--region", "global", "--tier", "shared")
    assert r.exit_code == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_create_rejects_unknown_region(cli):
    r = cli(
        "tenant", "create", unique_slug(), "--name", "X", "--region", "mars", "--tier", "shared"
    )
    assert r.exit_code == 3  # an unknown named thing, as everywhere
    assert "unknown region 'mars' (known: " in r.stderr
    assert "global, id" in r.stderr and "add it with `region add`" in r.stderr


def test_create_rejects_unknown_tier(cli):
    r = cli(
        "tenant", "create", unique_slug(), "--name", "X", "--region", "global", "--tier", "gold"
    )
    assert r.exit_code == 2
    assert "unknown tier 'gold': choose one of shared, schema, isolated" in r.stderr


def test_create_rejects_duplicate_slug(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli(
        "tenant",
        "create",
        slug,
        "--name",
        "Again",
        "--region",
        "global",
        "--tier",
        "schema",
        "--json",
    )
    assert r.exit_code == 2
    assert f"tenant '{slug}' already exists" in r.stderr
    assert json.loads(r.stdout)["error"]["type"] == "already-exists"


def test_create_dry_run_changes_nothing(cli, ctl):
    from bizosctl.tenancy.lifecycle import list_tenants

    slug = unique_slug()
    r = cli(
        "tenant",
        "create",
        slug,
        "--name",
        "X",
        "--region",
        "id",
        "--tier",
        "isolated",
        "--dry-run",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True and plan["database"] == "t_" + slug
    assert slug not in {t.slug for t in list_tenants(ctl)}


def test_show_unknown_tenant_exits_3(cli):
    r = cli("tenant", "show", "nobody-here")
    assert r.exit_code == 3
    assert "no tenant named 'nobody-here'" in r.stderr


def test_query_reads_in_tenant_context(cli, make_tenant, ctl):
    from bizosctl.tenancy.sample import load_sample_data

    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)
    r = cli("tenant", "query", slug, "select count(*) as n from members", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == [[5]]


def test_query_invalid_sql_is_bad_input(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "query", slug, "selec 1")
    assert r.exit_code == 2
    assert 'syntax error at or near "selec"' in r.stderr


def test_query_empty_sql_is_bad_input(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "query", slug, "   ")
    assert r.exit_code == 2
    assert "the SQL statement is empty" in r.stderr


def test_query_is_read_only_without_write(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli(
        "tenant",
        "query",
        slug,
        "insert into roles (tenant_id, name) select tenant_id, 'x' from tenant_state",
    )
    assert r.exit_code == 2
    assert "read-only transaction" in r.stderr


def test_query_write_and_colons_in_sql(cli, make_tenant):
    slug = make_tenant(tier="isolated", region="id")
    r = cli(
        "tenant",
        "query",
        slug,
        "insert into roles (tenant_id, name) select tenant_id, 'a:b' from tenant_state",
        "--write",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["rowcount"] == 1
    r = cli("tenant", "query", slug, "select name, '{}'::jsonb as j from roles", "--json")
    assert json.loads(r.stdout)["rows"] == [["a:b", {}]]


def test_lock_makes_writes_fail_in_database_then_unlock(cli, make_tenant):
    slug = make_tenant(tier="schema")
    write = (
        "tenant",
        "query",
        slug,
        "insert into roles (tenant_id, name) select tenant_id, 'r' from tenant_state",
        "--write",
    )
    r = cli("tenant", "lock", slug, "--reason", "dunning", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "read_only"
    r = cli(*write)
    assert r.exit_code == 1
    assert "tenant is read_only: writes are refused" in r.stderr
    r = cli("tenant", "unlock", slug)
    assert r.exit_code == 0
    assert cli(*write).exit_code == 0


def test_lock_rejects_unknown_mode(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("tenant", "lock", slug, "--mode", "frozen")
    assert r.exit_code == 2
    assert "unknown lock mode 'frozen'" in r.stderr


def test_delete_requires_yes(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "delete", slug)
    assert r.exit_code == 2
    assert "pass --yes to confirm" in r.stderr
    assert cli("tenant", "show", slug).exit_code == 0


def test_delete_dry_run_prints_plan(cli, make_tenant):
    slug = make_tenant(tier="isolated", region="id")
    r = cli("tenant", "delete", slug, "--dry-run", "--json")
    assert r.exit_code == 0
    sql = [s for step in json.loads(r.stdout)["steps"] for s in step["sql"]]
    assert f'DROP DATABASE IF EXISTS "t_{slug}" WITH (FORCE)' in sql
    assert cli("tenant", "show", slug).exit_code == 0


@pytest.mark.parametrize("tier", ["shared", "schema", "isolated"])
def test_delete_drops_data_keeps_record_and_frees_slug(cli, make_tenant, ctl, tier):
    from sqlalchemy import text

    from bizosctl.db.engines import get_engine
    from bizosctl.tenancy.sample import load_sample_data

    slug = make_tenant(tier=tier, region="id")
    other = make_tenant(tier="shared", region="id")
    load_sample_data(ctl, slug)
    load_sample_data(ctl, other)
    route = ctl.route(slug)
    r = cli("tenant", "delete", slug, "--yes", "--json")
    assert r.exit_code == 0, r.stderr
    admin = ctl.server("id-1")
    with get_engine(admin.admin_url("postgres"), pooled=False).connect() as conn:
        dbs = set(conn.execute(text("select datname from pg_database")).scalars())
        roles = set(conn.execute(text("select rolname from pg_roles")).scalars())
    with get_engine(admin.admin_url("bizos_shared"), pooled=False).connect() as conn:
        schemas = set(conn.execute(text("select nspname from pg_namespace")).scalars())
        left = conn.execute(
            text("select count(*) from shared.members where tenant_id = :t"), {"t": route.tenant_id}
        ).scalar_one()
    assert left == 0
    assert "t_" + slug not in dbs and "t_" + slug not in roles and "t_" + slug not in schemas
    # the other tenant in the shared tables is untouched
    r = cli("tenant", "show", other, "--json")
    assert json.loads(r.stdout)["row_counts"]["members"] == 5
    # the record stays, the slug is free again
    r = cli("tenant", "list", "--status", "deleted", "--json")
    assert slug in {t["slug"] for t in json.loads(r.stdout)["tenants"]}
    assert cli("tenant", "show", slug).exit_code == 3
    make_tenant(tier="schema", slug=slug)


def test_create_that_cannot_log_in_as_the_app_is_not_left_active(initialised_home, cli):
    """The shared login role's password changed behind bizosctl's back (a second registration
    of the server used to do that): create fails, and the tenant is not recorded active."""
    from sqlalchemy import text

    from bizosctl.catalog.control import get_control
    from bizosctl.db.engines import get_engine

    ctl = get_control()
    handle = ctl.server("global-1")
    from bizosctl.security.dbpasswords import shared_login

    role = shared_login(ctl, "global-1")
    with get_engine(handle.admin_url("postgres"), pooled=False).begin() as c:
        c.execute(text(f"alter role \"{role}\" password 'reset-by-someone-else'"))
    r = cli(
        "tenant", "create", "lockedout", "--name", "L", "--region", "global", "--tier", "shared"
    )
    assert r.exit_code == 1, r.output
    listed = json.loads(cli("tenant", "list", "--json").stdout)["tenants"]
    assert [t["status"] for t in listed if t["slug"] == "lockedout"] in ([], ["provisioning"])
