"""Preparing a server for tenants: roles, the shared database, the shared schema at head.

Every step is idempotent, so a bootstrap killed half-way is finished by running it again.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sqlalchemy import text

from bizosctl.config import Settings, get_settings
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.db.migrate import upgrade
from bizosctl.faults import crash_point
from bizosctl.tenancy.names import SHARED_DB, SHARED_LOGIN, SHARED_SCHEMA, q
from tenant_schema.ddl import APP_GROUP, OWNER_ROLE

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from bizosctl.providers.local import ServerHandle


def new_password() -> str:
    return secrets.token_urlsafe(24)


def scram_verifier(conn: Connection, role: str, password: str) -> str:
    """The SCRAM verifier, computed by libpq: the clear password never reaches the server."""
    raw = conn.connection.driver_connection
    assert raw is not None
    verifier: bytes = raw.pgconn.encrypt_password(
        password.encode(), role.encode(), b"scram-sha-256"
    )
    return verifier.decode()


def role_timeouts(settings: Settings) -> dict[str, str]:
    """The session settings every application login role gets (``ALTER ROLE ... SET``)."""
    return {
        "lock_timeout": settings.app_lock_timeout,
        "statement_timeout": settings.app_statement_timeout,
        "idle_in_transaction_session_timeout": settings.app_idle_in_transaction_timeout,
    }


def apply_role_timeouts(conn: Connection, role: str, settings: Settings | None = None) -> None:
    """Set the timeouts on one login role (cluster-wide: roles are not per database). They
    apply to its new sessions; a role cannot take them off (ALTER ROLE needs CREATEROLE)."""
    for name, value in role_timeouts(settings or get_settings()).items():
        # values are checked by Settings (digits and a unit): safe to inline, as SET needs
        conn.execute(text(f"ALTER ROLE {q(role)} SET {name} = '{value}'"))


def app_roles_without_timeouts(conn: Connection, settings: Settings) -> list[str]:
    """Login roles of the application group whose timeouts differ from the settings."""
    want = sorted(f"{k}={v}" for k, v in role_timeouts(settings).items())
    rows = conn.execute(
        text(
            "SELECT r.rolname, COALESCE(s.setconfig, '{}') FROM pg_roles r "
            "JOIN pg_auth_members m ON m.member = r.oid "
            "JOIN pg_roles g ON g.oid = m.roleid AND g.rolname = :g "
            "LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0 "
            "WHERE r.rolcanlogin ORDER BY 1"
        ),
        {"g": APP_GROUP},
    ).all()
    return [role for role, config in rows if not set(want) <= set(config)]


def set_login_role(
    conn: Connection,
    role: str,
    password: str,
    *,
    member_of: str,
    settings: Settings | None = None,
) -> None:
    verifier = scram_verifier(conn, role, password).replace("'", "''")
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    verb = "ALTER" if exists else "CREATE"
    # exec_driver_sql: the verifier contains ':' which text() would read as a bind parameter
    conn.exec_driver_sql(
        f"{verb} ROLE {q(role)} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE "
        f"PASSWORD '{verifier}'"
    )
    conn.execute(text(f"GRANT {q(member_of)} TO {q(role)}"))
    if member_of == APP_GROUP:
        apply_role_timeouts(conn, role, settings)


def ensure_group_roles(conn: Connection) -> None:
    for role in (OWNER_ROLE, APP_GROUP):
        conn.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '"
                + role
                + f"') THEN CREATE ROLE {q(role)} NOLOGIN NOBYPASSRLS; END IF; END $$"
            )
        )


def ensure_database(conn: Connection, database: str, *, owner_login: str) -> bool:
    """Create the database (autocommit connection) and restrict CONNECT to one login role.

    Built from ``template0``: ``template1`` is writable by whoever could ever connect to it
    (large objects, tables), and what it holds would appear in every new database. Created
    with ALLOW_CONNECTIONS false, opened only once PUBLIC has lost CONNECT and TEMPORARY, so
    no other login role gets in between (issue 11, item 8).
    """
    created = False
    if not conn.execute(
        text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
    ).first():
        conn.execute(
            text(f"CREATE DATABASE {q(database)} TEMPLATE template0 ALLOW_CONNECTIONS false")
        )
        created = True
        crash_point("database.created")
    conn.execute(text(f"REVOKE CONNECT, TEMPORARY ON DATABASE {q(database)} FROM PUBLIC"))
    conn.execute(text(f"GRANT CONNECT ON DATABASE {q(database)} TO {q(owner_login)}"))
    conn.execute(text(f"ALTER DATABASE {q(database)} ALLOW_CONNECTIONS true"))
    return created


def close_template1(conn: Connection) -> None:
    """No login role may connect to ``template1``: it is a channel between tenants (NOTIFY,
    large objects, temporary tables) and the seed of databases others create."""
    conn.execute(text("REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC"))


def prepare_schema(conn: Connection, schema: str, *, extension: bool = True) -> None:
    """In the target database: pgvector (unless known present), and the schema owned by the
    owner role."""
    if extension:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {q(schema)} AUTHORIZATION {q(OWNER_ROLE)}"))


def bootstrap_server(handle: ServerHandle, *, app_password: str) -> None:
    """Roles, the shared database and its schema at head, on one server."""
    handle.ensure_ready()
    with translate_errors(f"server {handle.name}"):
        admin = get_engine(handle.admin_url("postgres"), pooled=False)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            ensure_group_roles(conn)
            set_login_role(conn, SHARED_LOGIN, app_password, member_of=APP_GROUP)
            ensure_database(conn, SHARED_DB, owner_login=SHARED_LOGIN)
            conn.execute(text("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC"))
            close_template1(conn)
        shared = get_engine(handle.admin_url(SHARED_DB), pooled=False)
        with shared.begin() as conn:
            prepare_schema(conn, SHARED_SCHEMA)
            upgrade(conn, "tenant", schema=SHARED_SCHEMA, owner_role=OWNER_ROLE)
