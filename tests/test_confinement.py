"""Attacks on the tenant context, as an operator's SQL or a leaked application credential would
make them (issue 11: `tenant query` confinement, audit ciphertexts, suspended tenants, actors
of status changes, timeouts of the application roles)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bizosctl.db.engines import get_engine
from bizosctl.tenancy.lifecycle import set_status
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data


def pair(ctl, make_tenant, tier):
    a, b = make_tenant(tier=tier), make_tenant(tier=tier)
    load_sample_data(ctl, a)
    load_sample_data(ctl, b)
    return a, b


def titles(ctl, slug):
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        return sorted(s.execute(text("select title from tasks")).scalars())


def tasks_of(ctl, slug):
    """The schema-qualified tasks table of ``slug`` (another tenant's, seen from the attacker)."""
    return f'"{ctl.route(slug).schema}".tasks'


def app_connection(ctl, slug):
    """A real connection as the tenant's application login role, no tenant context set."""
    route = ctl.route(slug)
    handle = ctl.server(route.server)
    engine = get_engine(handle.login_url(route.database, route.role, route.password), pooled=False)
    return engine.connect(), route


def refused(r, message):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- 1. tenant query stays in its tenant and its mode --------------------------------------------


@pytest.mark.parametrize("tier", ["shared", "schema"])
def test_query_multi_statement_escape_is_refused(ctl, make_tenant, cli, tier):
    a, b = pair(ctl, make_tenant, tier)
    b_id = ctl.route(b).tenant_id
    before = titles(ctl, b)
    r = cli(
        "tenant",
        "query",
        a,
        f"COMMIT; select set_config('bizos.tenant_id', '{b_id}', false); "
        f"update {tasks_of(ctl, b)} set title = 'pwned'",
    )
    assert titles(ctl, b) == before  # today: b's tasks are all 'pwned'
    refused(r, "COMMIT is refused: tenant query runs in a transaction of its own")


@pytest.mark.parametrize("tier", ["shared", "schema"])
def test_query_set_config_in_where_cannot_read_another_tenant(ctl, make_tenant, cli, tier):
    a, b = pair(ctl, make_tenant, tier)
    b_id = ctl.route(b).tenant_id
    with tenant_session(ctl, b, actor="t", read_only=True) as s:
        b_ids = [str(i) for i in s.execute(text("select id from tasks")).scalars()]
    r = cli(
        "tenant",
        "query",
        a,
        f"select id from {tasks_of(ctl, b)} "
        f"where set_config('bizos.tenant_id', '{b_id}', true) is not null",
        "--json",
    )
    assert not any(i in r.stdout for i in b_ids)  # today: b's task ids come back
    assert r.exit_code == 2, r.stdout
    assert "set_config() is refused: tenant query cannot change its context" in r.stdout


def test_query_dynamic_sql_cannot_read_another_tenant(ctl, make_tenant, cli):
    """ts_stat() runs the SQL text it is given: the name set_config is not in the statement."""
    a, b = pair(ctl, make_tenant, "shared")
    b_id = ctl.route(b).tenant_id
    inner = (
        "select to_tsvector(''simple'', id::text) from shared.tasks where set_'||'config("
        f"''bizos.tenant_id'', ''{b_id}'', true) is not null"
    )
    with tenant_session(ctl, b, actor="t", read_only=True) as s:
        b_ids = [str(i) for i in s.execute(text("select id from tasks")).scalars()]
    r = cli("tenant", "query", a, f"select word from ts_stat('{inner}')", "--json")
    assert not any(i in r.stdout for i in b_ids)  # today: b's task ids come back
    assert r.exit_code == 2, r.stdout
    assert "ts_stat() is refused: it runs SQL that tenant query cannot check" in r.stdout


def test_query_write_in_read_only_mode_is_refused(ctl, make_tenant, cli):
    a, _ = pair(ctl, make_tenant, "shared")
    a_id = ctl.route(a).tenant_id
    before = titles(ctl, a)
    r = cli(
        "tenant",
        "query",
        a,
        f"COMMIT; select set_config('bizos.tenant_id', '{a_id}', false); "
        "update shared.tasks set title = 'rw'",
    )
    assert titles(ctl, a) == before  # today: the "read-only" query rewrote every title
    refused(r, "COMMIT is refused")
    r = cli("tenant", "query", a, "update tasks set title = 'rw'")
    assert r.exit_code == 2 and "read-only transaction" in r.stderr
    assert titles(ctl, a) == before


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SET bizos.tenant_id = '{b}'", "SET is refused: tenant query cannot change settings"),
        ("set local bizos.tenant_id to '{b}'", "SET is refused"),
        ("RESET ALL", "RESET is refused: tenant query cannot change settings"),
        ("reset bizos.tenant_id", "RESET is refused"),
        ("select set_config('bizos.actor', 'mallory', true)", "set_config() is refused"),
        ("select \"set_config\"('bizos.actor', 'm', true)", "set_config() is refused"),
        ("begin", "BEGIN is refused"),
        ("/* hi */ rollback", "ROLLBACK is refused"),
        ("do $$ begin perform 1; end $$", "DO is refused"),
        ("select 1; select 2", "tenant query runs exactly one statement"),
        (
            "update pg_settings set setting = '{b}' where name = 'bizos.tenant_id'",
            "pg_settings is refused: tenant query cannot change settings",
        ),
        ("select U&\"\\0073et_config\"('bizos.actor', 'm', true)", "U& is refused"),
    ],
)
def test_query_refuses_context_changes(ctl, make_tenant, cli, sql, message):
    a, b = pair(ctl, make_tenant, "shared")
    r = cli("tenant", "query", a, sql.format(b=ctl.route(b).tenant_id), "--write")
    refused(r, message)


def test_query_single_statement_with_semicolon_and_comments_still_runs(ctl, make_tenant, cli):
    a, _ = pair(ctl, make_tenant, "shared")
    r = cli(
        "tenant",
        "query",
        a,
        "select count(*) as n, 'a;b' as s from tasks where title like '%' ; -- all of them",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == [[8, "a;b"]]


def test_query_write_mode_still_writes_own_tenant(ctl, make_tenant, cli):
    a, b = pair(ctl, make_tenant, "shared")
    before_b = titles(ctl, b)
    r = cli("tenant", "query", a, "update tasks set title = 'mine'", "--write", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["rowcount"] == 8
    assert set(titles(ctl, a)) == {"mine"} and titles(ctl, b) == before_b


# -- 3. the audit trail keeps no ciphertexts or blind indexes -------------------------------------


def test_audit_json_never_holds_ciphertexts(ctl, make_tenant):
    from bizosctl.security.fields import blind_index, encrypt

    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)
    tid = ctl.route(slug).tenant_id
    with tenant_session(ctl, slug, actor="ops") as s:
        member = s.execute(text("select id, email_enc, email_bidx from members limit 1")).one()
        enc = encrypt(
            ctl.keyring,
            "new@x.example",
            tenant_id=tid,
            table="members",
            column="email",
            row=member.id,
        )
        s.execute(
            text("update members set email_enc = :e, email_bidx = :b where id = :id"),
            {"e": enc, "b": blind_index(ctl.keyring, "new@x.example"), "id": member.id},
        )
    conn, route = app_connection(ctl, slug)
    with conn:
        conn.execute(text("select set_config('bizos.tenant_id', :t, false)"), {"t": str(tid)})
        conn.execute(text(f'set search_path to "{route.schema}"'))
        rows = conn.execute(
            text(
                "select table_name, action, old, new, old::text || new::text as raw from audit_logs"
            )
        ).all()
    assert rows
    secrets = {member.email_enc, member.email_bidx, enc}
    for row in rows:
        for doc in (row.old, row.new):
            for col, value in (doc or {}).items():
                if col.endswith(("_enc", "_bidx")):
                    assert value in (None, "<redacted>", "<changed>"), (col, value)
        assert not any(v in (row.raw or "") for v in secrets)
    upd = [r for r in rows if r.table_name == "members" and r.action == "update"]
    assert len(upd) == 1
    assert upd[0].new["email_enc"] == "<changed>" and upd[0].new["name_enc"] == "<redacted>"
    assert upd[0].old["email_enc"] == "<redacted>"


def test_revision_0002_scrubs_existing_audit_rows(ctl):
    """A target at 0001 with an audit row holding a ciphertext (as the old trigger wrote it),
    then upgraded: the row is scrubbed, the other values kept."""
    from bizosctl.db.migrate import migrate
    from bizosctl.tenancy.names import SHARED_DB
    from bizosctl.tenancy.regions import default_server
    from bizosctl.tenancy.servers import prepare_schema
    from tenant_schema.ddl import OWNER_ROLE

    home = ctl.server(default_server(ctl, ctl.settings.home_region))
    schema = f"t_scrub_{uuid.uuid4().hex[:8]}"
    tid = uuid.uuid4()
    old = {"id": "m1", "tenant_id": str(tid), "email_enc": "v1:secret", "email_bidx": "bi1",
           "status": "active"}  # fmt: skip
    new = {**old, "email_enc": "v1:other", "status": "left"}
    with get_engine(home.admin_url(SHARED_DB), pooled=False).connect() as conn:
        trans = conn.begin()
        try:
            prepare_schema(conn, schema)
            migrate(conn, "tenant", schema=schema, owner_role=OWNER_ROLE, revision="0001")
            conn.execute(text("RESET ROLE"))
            conn.execute(
                text(
                    f'insert into "{schema}".audit_logs (tenant_id, action, table_name, old, new) '
                    "values (:t, 'update', 'members', cast(:o as jsonb), cast(:n as jsonb))"
                ),
                {"t": tid, "o": json.dumps(old), "n": json.dumps(new)},
            )
            migrate(conn, "tenant", schema=schema, owner_role=OWNER_ROLE, revision="0002")
            conn.execute(text("RESET ROLE"))
            got = conn.execute(text(f'select old, new from "{schema}".audit_logs')).one()
            forced = conn.execute(
                text("select relforcerowsecurity from pg_class where oid = cast(:r as regclass)"),
                {"r": f'"{schema}".audit_logs'},
            ).scalar_one()
        finally:
            trans.rollback()
    assert got.old == {**old, "email_enc": "<redacted>", "email_bidx": "<redacted>"}
    assert got.new == {**new, "email_enc": "<changed>", "email_bidx": "<redacted>"}
    assert forced


def test_revision_0002_online_through_alembic_command_line(ctl):
    """The same upgrade run online (``alembic upgrade``, one revision at a time), in another
    process: the audit row is scrubbed and the target has the 0002 functions and policies."""
    import subprocess
    import sys
    from pathlib import Path

    from bizosctl.tenancy.names import SHARED_DB
    from bizosctl.tenancy.regions import default_server
    from bizosctl.tenancy.servers import prepare_schema

    root = Path(__file__).resolve().parent.parent
    home = ctl.server(default_server(ctl, ctl.settings.home_region))
    url = home.admin_url(SHARED_DB)
    schema = f"t_online_{uuid.uuid4().hex[:8]}"
    engine = get_engine(url, pooled=False)

    def alembic(revision):
        subprocess.run(
            [sys.executable, "-m", "alembic", "-c", "migrations/tenant/alembic.ini",
             "-x", f"url={url.render_as_string(hide_password=False)}", "-x", f"schema={schema}",
             "upgrade", revision],
            cwd=root, check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    with engine.begin() as conn:
        prepare_schema(conn, schema, extension=False)
    try:
        alembic("0001")
        with engine.begin() as conn:
            conn.execute(
                text(
                    f'insert into "{schema}".audit_logs (tenant_id, action, table_name, new) '
                    "values (:t, 'insert', 'customers', cast(:n as jsonb))"
                ),
                {"t": uuid.uuid4(), "n": json.dumps({"email_enc": "v1:x", "name": "n"})},
            )
        alembic("0002")
        with engine.connect() as conn:
            got = conn.execute(text(f'select new from "{schema}".audit_logs')).scalar_one()
            policy = conn.execute(
                text("select qual from pg_policies where schemaname = :s and tablename = 'tasks'"),
                {"s": schema},
            ).scalar_one()
            rev = conn.execute(text(f'select version_num from "{schema}".alembic_version'))
            assert rev.scalar_one() == "0002"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'drop schema "{schema}" cascade'))
    assert got == {"email_enc": "<redacted>", "name": "n"}
    assert "bizos_tenant()" in policy


# -- 11. suspended tenants, actors of status changes, timeouts -----------------------------------


@pytest.mark.parametrize("tier", ["shared", "schema"])
def test_suspended_tenant_reads_nothing_over_a_raw_app_connection(ctl, make_tenant, tier):
    """psycopg straight to the server as the tenant's login role, the context set by hand."""
    import psycopg

    from bizosctl.db.engines import psycopg_conninfo

    slug = make_tenant(tier=tier)
    load_sample_data(ctl, slug)
    route = ctl.route(slug)
    url = ctl.server(route.server).login_url(route.database, route.role, route.password)

    def counts():
        with psycopg.connect(**psycopg_conninfo(url)) as conn:
            conn.execute("select set_config('bizos.tenant_id', %s, false)", (str(route.tenant_id),))
            return {
                t: conn.execute(f'select count(*) from "{route.schema}".{t}').fetchone()[0]
                for t in ("tasks", "members", "audit_logs", "invoices")
            }

    assert counts()["tasks"] == 8
    set_status(ctl, slug, status="suspended", reason="fraud")
    assert counts() == {"tasks": 0, "members": 0, "audit_logs": 0, "invoices": 0}
    set_status(ctl, slug, status="active")
    assert counts()["tasks"] == 8


def test_suspended_tenant_query_is_refused(ctl, make_tenant, cli):
    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)
    assert cli("tenant", "lock", slug, "--mode", "suspended", "--reason", "fraud").exit_code == 0
    r = cli("tenant", "query", slug, "select count(*) from tasks")
    assert r.exit_code == 1, r.stdout
    assert f"tenant {slug!r} is suspended: reads and writes are refused" in r.stderr
    r = cli("tenant", "show", slug, "--json")  # the catalog still shows it (no row counts)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "suspended"


def test_api_key_and_jwt_of_suspended_tenant_are_refused(ctl, make_tenant):
    from bizosctl.errors import BizosError
    from bizosctl.security.apikeys import create_api_key, verify_api_key
    from bizosctl.security.jwt import issue_token, verify_token

    slug = make_tenant(tier="shared")
    _, key = create_api_key(ctl, tenant=slug, name="ci", scopes=["*"], expires_ms=None)
    token = issue_token(ctl, subject="u1", tenant=slug)
    assert verify_api_key(ctl, key, tenant=slug).tenant == slug
    assert verify_token(ctl, token)["tenant"] == slug
    set_status(ctl, slug, status="suspended", reason="fraud")
    with pytest.raises(BizosError, match="is suspended") as exc:
        verify_api_key(ctl, key, tenant=slug)
    assert exc.value.http_status in (403, 423)
    with pytest.raises(BizosError, match="is suspended") as exc:
        verify_token(ctl, token)
    assert exc.value.http_status in (401, 403, 423)
    set_status(ctl, slug, status="active")
    assert verify_api_key(ctl, key, tenant=slug).tenant == slug
    assert verify_token(ctl, token)["tenant"] == slug


def _status_audit(ctl, route, tenant_id):
    handle = ctl.server(route.server)
    with get_engine(handle.admin_url(route.database), pooled=False).connect() as c:
        return c.execute(
            text(
                f"select actor, new ->> 'status' as status from \"{route.schema}\".audit_logs "
                "where tenant_id = :t and table_name = 'tenant_state' and action = 'update' "
                "order by at"
            ),
            {"t": tenant_id},
        ).all()


def test_lock_and_unlock_name_their_actor(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema")
    assert cli("tenant", "lock", slug, "--reason", "dunning").exit_code == 0
    assert cli("tenant", "unlock", slug).exit_code == 0
    route = ctl.route(slug)
    rows = _status_audit(ctl, route, route.tenant_id)
    assert [(r.actor, r.status) for r in rows] == [
        ("bizosctl:tenant.lock", "read_only"),
        ("bizosctl:tenant.unlock", "active"),
    ]


def test_move_freeze_and_switch_name_the_operation(ctl, make_tenant, cli):
    slug = make_tenant(tier="shared", region="id")
    old = ctl.route(slug)
    r = cli("tenant", "move", slug, "--to-tier", "schema", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    op = json.loads(r.stdout)["operation"]
    src = _status_audit(ctl, old, old.tenant_id)
    assert ("moving" in {r.status for r in src}) and src
    assert {r.actor for r in src} == {f"bizosctl:tenant.move:{op}"}
    dst = _status_audit(ctl, ctl.route(slug), old.tenant_id)
    assert dst and dst[-1].actor == f"bizosctl:tenant.move:{op}" and dst[-1].status == "active"


def test_app_role_timeouts_are_set_and_idle_transaction_is_ended(ctl, cli):
    from bizosctl.catalog.control import get_control
    from bizosctl.config import reset_settings
    from bizosctl.tenancy.servers import apply_role_timeouts

    slug = f"tmo{uuid.uuid4().hex[:8]}"
    env = {
        "BIZOS_APP_LOCK_TIMEOUT": "3s",
        "BIZOS_APP_STATEMENT_TIMEOUT": "7s",
        "BIZOS_APP_IDLE_IN_TRANSACTION_TIMEOUT": "1s",
    }
    r = cli(
        "tenant", "create", slug, "--name", "T", "--tier", "isolated", "--region", "global", env=env
    )
    assert r.exit_code == 0, r.stderr
    reset_settings()
    ctl = get_control()
    conn, route = app_connection(ctl, slug)
    assert conn.execute(text("show statement_timeout")).scalar() == "7s"
    assert conn.execute(text("show lock_timeout")).scalar() == "3s"
    assert conn.execute(text("show idle_in_transaction_session_timeout")).scalar() == "1s"
    conn.execute(
        text("select set_config('bizos.tenant_id', :t, true)"), {"t": str(route.tenant_id)}
    )
    locked = conn.execute(text(f'select * from "{route.schema}".settings for update')).all()
    assert len(locked) == 1  # holds the row lock, then idles
    pid = conn.execute(text("select pg_backend_pid()")).scalar()
    admin = get_engine(ctl.server(route.server).admin_url("postgres"), pooled=False)
    deadline = time.monotonic() + 30
    with admin.connect() as a:
        while a.execute(
            text("select count(*) from pg_stat_activity where pid = :p"), {"p": pid}
        ).scalar():
            assert time.monotonic() < deadline, "the idle transaction was not ended"
            a.rollback()
            time.sleep(0.05)
    with pytest.raises(DBAPIError):
        conn.execute(text("select 1"))
    conn.invalidate()
    # back to the fleet's settings (doctor compares every app role with them)
    with admin.begin() as a:
        apply_role_timeouts(a, route.role, ctl.settings)


def test_doctor_flags_an_app_role_without_timeouts(ctl, make_tenant, cli):
    from bizosctl.tenancy.servers import apply_role_timeouts

    slug = make_tenant(tier="isolated")
    route = ctl.route(slug)
    name = f"role timeouts {route.server}"
    checks = {c["name"]: c for c in json.loads(cli("doctor", "--json").stdout)["checks"]}
    assert checks[name]["ok"], checks[name]
    admin = get_engine(ctl.server(route.server).admin_url("postgres"), pooled=False)
    with admin.begin() as conn:
        conn.execute(text(f'alter role "{route.role}" reset all'))
    try:
        checks = {c["name"]: c for c in json.loads(cli("doctor", "--json").stdout)["checks"]}
        assert not checks[name]["ok"] and route.role in checks[name]["detail"]
    finally:
        with admin.begin() as conn:
            apply_role_timeouts(conn, route.role, ctl.settings)


# -- 10. tenant data reaches the operator's terminal cleaned ------------------------------------


def test_terminal_escapes_in_tenant_data_never_reach_the_terminal(ctl, make_tenant, cli):
    """A tenant stores an OSC title change and colour codes in a task title; the operator's
    `tenant query` table shows them as escapes, not as raw ESC/BEL bytes."""
    slug = make_tenant(tier="schema")
    load_sample_data(ctl, slug)
    evil = "\x1b]0;owned\x07\x1b[31mred\x1b[0m\u202etxt"
    with tenant_session(ctl, slug, actor="tenant-user") as s:
        s.execute(text("update tasks set title = :t"), {"t": evil})
    r = cli("tenant", "query", slug, "select title from tasks limit 1")
    assert r.exit_code == 0, r.output
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in r.stdout
    assert "\\x1b]0;owned\\x07" in r.stdout
    doc = json.loads(
        cli("tenant", "query", slug, "select title from tasks limit 1", "--json").stdout
    )
    assert doc["rows"] == [[evil]]  # JSON keeps the data exact (and escapes it)


def test_error_messages_print_data_without_markup_or_escapes(make_tenant, cli):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "query", slug, 'select * from "[bold]x\x1b[2J"')
    assert r.exit_code != 0
    assert "\x1b[2J" not in r.stderr
    assert '"[bold]x\\x1b[2J"' in r.stderr  # shown literally: no markup applied
