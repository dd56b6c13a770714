"""Benchmark revision: a column with a server default and an index on two tables.

Used by ``benchmarks/schema_sync.py`` (through ``BIZOS_TENANT_MIGRATIONS_EXTRA``), never by
bizosctl itself: adding a column with a constant default is catalog-only in PostgreSQL 11+,
and the indexes are built on near-empty tenant tables, so the cost is the per-target overhead.

Revision ID: b002
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b002"
down_revision = "0007"
branch_labels = None
depends_on = None
# Pure DDL (as tests/migrations/add_column/t002): safe to run from its offline rendering.
offline_safe = True


def upgrade() -> None:
    op.add_column("tasks", sa.Column("estimate", sa.Integer(), server_default="0", nullable=False))
    op.create_index("ix_tasks_tenant_estimate", "tasks", ["tenant_id", "estimate"])
    op.add_column("invoices", sa.Column("channel", sa.Text(), server_default="web", nullable=False))
    op.create_index("ix_invoices_tenant_channel", "invoices", ["tenant_id", "channel"])


def downgrade() -> None:
    op.drop_index("ix_invoices_tenant_channel", table_name="invoices")
    op.drop_column("invoices", "channel")
    op.drop_index("ix_tasks_tenant_estimate", table_name="tasks")
    op.drop_column("tasks", "estimate")
