"""CEO digests and e-mail: the digests, the tenant's white-label sender, the e-mails and every
attempt at sending one. New tables get RLS, the write guard and the audit trigger like every
tenant table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tenant_schema.ddl import table_security_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
offline_safe = True

NEW_TABLES = ("digests", "email_senders", "email_messages", "email_attempts")


def _ts(name: str, *, default: str | None = None, nullable: bool = True) -> sa.Column[sa.DateTime]:
    return sa.Column(
        name,
        sa.TIMESTAMP(timezone=True),
        server_default=sa.text(default) if default else None,
        nullable=nullable,
    )


def _id() -> sa.Column[sa.UUID]:
    return sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def _jsonb(name: str, default: str) -> sa.Column[postgresql.JSONB]:
    return sa.Column(
        name, postgresql.JSONB(), server_default=sa.text(f"'{default}'::jsonb"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "digests",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        _id(),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("zone", sa.Text(), nullable=False),
        _jsonb("figures", "{}"),
        _jsonb("insights", "[]"),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("degraded", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("usage_id", sa.UUID(), nullable=True),
        sa.Column("deliver", sa.Text(), server_default="both", nullable=False),
        sa.Column("cards", sa.Integer(), server_default="0", nullable=False),
        _ts("created_at", default="now()", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_digests")),
        sa.UniqueConstraint(
            "tenant_id", "day", "version", name=op.f("uq_digests_tenant_id_day_version")
        ),
    )
    op.create_table(
        "email_senders",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("from_address", sa.Text(), nullable=True),
        sa.Column("from_name", sa.Text(), nullable=True),
        sa.Column("reply_to", sa.Text(), nullable=True),
        sa.Column("logo_url", sa.Text(), nullable=True),
        sa.Column("primary_color", sa.Text(), server_default="#1f2937", nullable=False),
        sa.Column("accent_color", sa.Text(), server_default="#2563eb", nullable=False),
        _ts("updated_at", default="now()", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_email_senders")),
    )
    op.create_table(
        "email_messages",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        _id(),
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        _jsonb("context", "{}"),
        sa.Column("digest_id", sa.UUID(), nullable=True),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at", default="now()", nullable=False),
        _ts("sent_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "member_id"],
            ["members.tenant_id", "members.id"],
            name=op.f("fk_email_messages_tenant_id_member_id"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "digest_id"],
            ["digests.tenant_id", "digests.id"],
            name=op.f("fk_email_messages_tenant_id_digest_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_email_messages")),
        sa.UniqueConstraint(
            "tenant_id",
            "digest_id",
            "member_id",
            name=op.f("uq_email_messages_tenant_id_digest_id_member_id"),
        ),
    )
    op.create_index("ix_email_messages_status", "email_messages", ["tenant_id", "status"])
    op.create_table(
        "email_attempts",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        _id(),
        sa.Column("message_id", sa.UUID(), nullable=False),
        _ts("at", default="clock_timestamp()", nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id", "message_id"],
            ["email_messages.tenant_id", "email_messages.id"],
            name=op.f("fk_email_attempts_tenant_id_message_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_email_attempts")),
    )
    for table in NEW_TABLES:
        for stmt in table_security_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    for table in reversed(NEW_TABLES):
        op.execute(f"DROP TABLE IF EXISTS {table}")
