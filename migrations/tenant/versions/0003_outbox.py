"""The outbox: domain events written in the transaction of the change, for the webhook relay.

One ``outbox`` table per target (shared schema, tenant schema, isolated database), with
``tenant_id`` first in its key and RLS enabled and forced like every tenant table; the
application inserts and reads its own tenant's events, the relay (as the operator) moves them to
the catalog and deletes them. A statement trigger NOTIFYs ``bizos_outbox`` with the schema at
commit, which wakes the relay (see ``tenant_schema.ddl.outbox_sql``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tenant_schema.ddl import outbox_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
# Pure DDL: the offline rendering is exactly what it does online.
offline_safe = True


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column(
            "data",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("endpoint_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"], unique=False)
    schema = op.get_context().version_table_schema
    for stmt in outbox_sql(schema):
        op.execute(stmt)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS outbox")
    op.execute("DROP FUNCTION IF EXISTS bizos_outbox_notify()")
