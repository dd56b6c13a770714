"""Member sessions: password hashes, login sessions with rotating refresh tokens, the login
throttle, OAuth identities, and task priority (the kanban board).

Also replaces, in an existing target, what ``tenant_schema.ddl`` now renders: ``bizos_redact``
keeps ``*_hash`` columns (password and token hashes) out of the audit trail, and the write
guard lets a ``read_only`` tenant (the dunning soft lock) still write its session tables, so
its members keep logging in to read. New tables get RLS, the guard and the audit trigger like
every tenant table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tenant_schema.ddl import functions_sql, table_security_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
offline_safe = True

NEW_TABLES = ("auth_sessions", "refresh_tokens", "login_throttle", "member_identities")


def _ts(name: str, *, default: bool = False, nullable: bool = True) -> sa.Column[sa.DateTime]:
    return sa.Column(
        name,
        sa.TIMESTAMP(timezone=True),
        server_default=sa.text("now()") if default else None,
        nullable=nullable,
    )


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    for stmt in functions_sql(schema):
        op.execute(stmt)
    op.add_column("members", sa.Column("password_hash", sa.Text(), nullable=True))
    op.add_column("tasks", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "auth_sessions",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column("method", sa.Text(), server_default="password", nullable=False),
        _ts("created_at", default=True, nullable=False),
        _ts("expires_at", nullable=False),
        _ts("revoked_at"),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id", "member_id"],
            ["members.tenant_id", "members.id"],
            name=op.f("fk_auth_sessions_tenant_id_member_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_auth_sessions")),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        _ts("created_at", default=True, nullable=False),
        _ts("used_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["auth_sessions.tenant_id", "auth_sessions.id"],
            name=op.f("fk_refresh_tokens_tenant_id_session_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint(
            "tenant_id", "token_hash", name=op.f("uq_refresh_tokens_tenant_id_token_hash")
        ),
    )
    op.create_table(
        "login_throttle",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("email_bidx", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        _ts("last_failed_at"),
        _ts("locked_until"),
        sa.PrimaryKeyConstraint("tenant_id", "email_bidx", name=op.f("pk_login_throttle")),
    )
    op.create_table(
        "member_identities",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("member_id", sa.UUID(), nullable=False),
        _ts("created_at", default=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "member_id"],
            ["members.tenant_id", "members.id"],
            name=op.f("fk_member_identities_tenant_id_member_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "provider", "subject", name=op.f("pk_member_identities")
        ),
    )
    for table in NEW_TABLES:
        for stmt in table_security_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    for table in reversed(NEW_TABLES):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.drop_column("tasks", "priority")
    op.drop_column("members", "password_hash")
