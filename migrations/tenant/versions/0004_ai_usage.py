"""The AI usage ledger (``ai_usage``, one row per call through the LLM gate) and its budget
counter per month (``ai_spend``), both in the tenant's own database and region, with RLS
enabled and forced like every tenant table (see ``tenant_schema.ddl.ai_usage_sql``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tenant_schema.ddl import ai_usage_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
# Pure DDL: the offline rendering is exactly what it does online.
offline_safe = True

TS = sa.TIMESTAMP(timezone=True)
MONEY = sa.Numeric(14, 6)


def upgrade() -> None:
    op.create_table(
        "ai_usage",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("at", TS, server_default=sa.text("clock_timestamp()"), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("member_id", sa.UUID(), nullable=True),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="done", nullable=False),
        sa.Column("tokens_in", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tokens_out", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reserved", MONEY, server_default="0", nullable=False),
        sa.Column("cost", MONEY, server_default="0", nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("overhead_ms", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("degraded", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "entities",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "member_id"],
            ["members.tenant_id", "members.id"],
            name=op.f("fk_ai_usage_tenant_id_member_id"),
            ondelete="SET NULL (member_id)",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_ai_usage")),
    )
    op.create_index("ix_ai_usage_at", "ai_usage", ["tenant_id", "at"], unique=False)
    op.create_table(
        "ai_spend",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("spent", MONEY, server_default="0", nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "period", name=op.f("pk_ai_spend")),
    )
    for stmt in ai_usage_sql():
        op.execute(stmt)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ai_spend")
    op.execute("DROP TABLE IF EXISTS ai_usage")
