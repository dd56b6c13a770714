"""Test revision: a column with a default and an index on two tables.

Revision ID: t002
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "t002"
down_revision = "0007"
branch_labels = None
depends_on = None
offline_safe = True


def upgrade() -> None:
    op.add_column("tasks", sa.Column("estimate", sa.Integer(), server_default="0", nullable=False))
    op.create_index("ix_tasks_estimate", "tasks", ["tenant_id", "estimate"])
    op.add_column("invoices", sa.Column("channel", sa.Text(), server_default="web", nullable=False))
    op.create_index("ix_invoices_channel", "invoices", ["tenant_id", "channel"])


def downgrade() -> None:
    op.drop_index("ix_invoices_channel", table_name="invoices")
    op.drop_column("invoices", "channel")
    op.drop_index("ix_tasks_estimate", table_name="tasks")
    op.drop_column("tasks", "estimate")
