"""Isolation is enforced by the database: RLS, grants, CONNECT, the write guard, the audit trail."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from bizosctl.db.engines import get_engine
from bizosctl.errors import TenantNotWritable
from bizosctl.tenancy.lifecycle import set_status
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data


def app_connection(ctl, slug):
    """A raw connection as the tenant's application login role, with no tenant context set."""
    route = ctl.route(slug)
    handle = ctl.server(route.server)
    engine = get_engine(handle.login_url(route.database, route.role, route.password), pooled=False)
    return engine.connect(), route


@pytest.mark.parametrize("tier", ["shared", "schema"])
def test_tenant_a_sees_only_its_rows_and_cannot_write_b(ctl, make_tenant, tier):
    a = make_tenant(tier=tier)
    b = make_tenant(tier=tier)
    load_sample_data(ctl, a)
    load_sample_data(ctl, b)
    b_id = ctl.route(b).tenant_id
    with tenant_session(ctl, a, actor="test") as s:
        tenants = set(s.execute(text("select distinct tenant_id from members")).scalars())
        assert tenants == {ctl.route(a).tenant_id}
        assert s.execute(text("select count(*) from invoices")).scalar_one() == 5
    with (
        pytest.raises(Exception, match="row-level security"),
        tenant_session(ctl, a, actor="test") as s,
    ):
        s.execute(text("insert into roles (tenant_id, name) values (:t, 'intruder')"), {"t": b_id})
    # and an UPDATE aimed at B's rows touches nothing
    with tenant_session(ctl, a, actor="test") as s:
        n = s.execute(
            text("update members set status = 'x' where tenant_id = :t"), {"t": b_id}
        ).rowcount
        assert n == 0


def test_schema_tier_cannot_read_other_schema_through_rls(ctl, make_tenant):
    a = make_tenant(tier="schema")
    b = make_tenant(tier="schema")
    load_sample_data(ctl, b)
    with tenant_session(ctl, a, actor="test") as s:
        # B's schema is reachable by name, but RLS hides every row of B from A's context
        n = s.execute(text(f'select count(*) from "t_{b}".members')).scalar_one()
    assert n == 0


@pytest.mark.parametrize("tier", ["shared", "schema", "isolated"])
def test_no_context_sees_nothing_and_writes_nothing(ctl, make_tenant, tier):
    slug = make_tenant(tier=tier, region="id")
    load_sample_data(ctl, slug)
    conn, route = app_connection(ctl, slug)
    with conn:
        conn.execute(text(f'set search_path to "{route.schema}", public'))
        assert conn.execute(text("select count(*) from members")).scalar_one() == 0
        assert conn.execute(text("select count(*) from audit_logs")).scalar_one() == 0
        with pytest.raises(ProgrammingError, match="row-level security"):
            conn.execute(
                text("insert into roles (tenant_id, name) values (:t, 'x')"), {"t": route.tenant_id}
            )


def test_app_role_cannot_bypass_rls_or_disable_it(ctl, make_tenant):
    slug = make_tenant(tier="isolated")
    conn, route = app_connection(ctl, slug)
    with conn:
        row = conn.execute(
            text("select rolsuper, rolbypassrls from pg_roles where rolname = current_user")
        ).one()
        assert tuple(row) == (False, False)
        with pytest.raises(ProgrammingError, match="must be owner"):
            conn.execute(text(f'alter table "{route.schema}".members disable row level security'))


def test_isolated_role_cannot_connect_to_another_tenant_database(ctl, make_tenant):
    a = make_tenant(tier="isolated")
    b = make_tenant(tier="isolated")
    ra, rb = ctl.route(a), ctl.route(b)
    handle = ctl.server(ra.server)
    url = handle.login_url(rb.database, ra.role, ra.password)
    with pytest.raises(OperationalError, match="permission denied for database"):
        get_engine(url, pooled=False).connect()
    shared = handle.login_url("bizos_shared", ra.role, ra.password)
    with pytest.raises(OperationalError, match="permission denied for database"):
        get_engine(shared, pooled=False).connect()


def test_wrong_password_is_rejected(ctl, make_tenant):
    slug = make_tenant(tier="isolated")
    route = ctl.route(slug)
    url = ctl.server(route.server).login_url(route.database, route.role, "wrong-password")
    with pytest.raises(OperationalError, match="password authentication failed"):
        get_engine(url, pooled=False).connect()


@pytest.mark.parametrize("status", ["read_only", "suspended"])
def test_locked_tenant_write_fails_in_database(ctl, make_tenant, status):
    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)
    set_status(ctl, slug, status=status)
    # straight through the app role, not through any Python check
    conn, route = app_connection(ctl, slug)
    with conn:
        conn.execute(
            text("select set_config('bizos.tenant_id', :t, false)"), {"t": str(route.tenant_id)}
        )
        conn.execute(text(f'set search_path to "{route.schema}", public'))
        with pytest.raises(DBAPIError, match=f"tenant is {status}: writes are refused"):
            conn.execute(text("update tasks set title = title || '!'"))
        conn.rollback()
        conn.execute(
            text("select set_config('bizos.tenant_id', :t, false)"), {"t": str(route.tenant_id)}
        )
        conn.execute(text(f'set search_path to "{route.schema}", public'))
        with pytest.raises(DBAPIError, match=f"tenant is {status}"):
            conn.execute(text("delete from tasks"))
    # reads still work for read_only
    if status == "read_only":
        with tenant_session(ctl, slug, actor="t", read_only=True) as s:
            assert s.execute(text("select count(*) from tasks")).scalar_one() == 8
    with pytest.raises(TenantNotWritable), tenant_session(ctl, slug, actor="t") as s:
        s.execute(text("update tasks set title = 'x'"))
    set_status(ctl, slug, status="active")
    with tenant_session(ctl, slug, actor="t") as s:
        assert s.execute(text("update tasks set title = 'x'")).rowcount == 8


def test_audit_trigger_records_actor_old_new(ctl, make_tenant):
    slug = make_tenant(tier="schema")
    with tenant_session(ctl, slug, actor="alice@ops") as s:
        rid = s.execute(
            text(
                "insert into roles (tenant_id, name) select tenant_id, 'auditor' "
                "from tenant_state returning id"
            )
        ).scalar_one()
        s.execute(text("update roles set description = 'reads logs' where id = :id"), {"id": rid})
        s.execute(text("delete from roles where id = :id"), {"id": rid})
    with tenant_session(ctl, slug, actor="bob", read_only=True) as s:
        rows = s.execute(
            text(
                "select actor, action, table_name, row_key, old, new, txid from audit_logs "
                "where table_name = 'roles' order by at"
            )
        ).all()
    assert [r.action for r in rows] == ["insert", "update", "delete"]
    assert {r.actor for r in rows} == {"alice@ops"}
    assert rows[0].row_key == {"id": str(rid)} and rows[0].old is None
    assert rows[1].old["description"] is None and rows[1].new["description"] == "reads logs"
    assert rows[2].new is None and rows[2].old["name"] == "auditor"
    assert len({r.txid for r in rows}) == 1


def test_app_role_cannot_write_audit_logs(ctl, make_tenant):
    slug = make_tenant(tier="shared")
    route = ctl.route(slug)
    for stmt in (
        "update audit_logs set actor = 'mallory'",
        "delete from audit_logs",
        "insert into audit_logs (tenant_id, action, table_name) values (:t, 'x', 'y')",
        "update tenant_state set status = 'active'",
    ):
        with (
            pytest.raises(Exception, match="permission denied"),
            tenant_session(ctl, slug, actor="m") as s,
        ):
            s.execute(text(stmt), {"t": route.tenant_id})


def test_context_does_not_leak_between_transactions(ctl, make_tenant):
    a = make_tenant(tier="shared")
    load_sample_data(ctl, a)
    with tenant_session(ctl, a, actor="x") as s:
        conn_id = s.execute(text("select pg_backend_pid()")).scalar_one()
    route = ctl.route(a)
    engine = get_engine(
        ctl.server(route.server).login_url(route.database, route.role, route.password)
    )
    with engine.connect() as conn:  # the same pool: very likely the same backend
        pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
        tid = conn.execute(text("select current_setting('bizos.tenant_id', true)")).scalar_one()
        assert tid in (None, "")
        assert conn.execute(text("select count(*) from shared.members")).scalar_one() == 0
    assert isinstance(conn_id, int) and isinstance(pid, int)
