"""One operations engine: a row per step (not a growing JSON array), statuses checked in SQL,
progress and a cancel request on the operation.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATUSES = "('queued', 'running', 'done', 'failed', 'aborted', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "operation_steps",
        sa.Column("op_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="done", nullable=False),
        sa.Column(
            "data",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        # clock_timestamp, not now(): several steps may commit in one transaction and their
        # order is the order they were written
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["op_id"], ["operations.id"], name=op.f("fk_operation_steps_op_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("op_id", "name", name=op.f("pk_operation_steps")),
        sa.CheckConstraint("status IN ('done', 'undone')", name="ck_operation_steps_status"),
    )
    # Steps of earlier operations: the last entry of each name wins (as readers did).
    op.execute(
        "INSERT INTO operation_steps (op_id, name, status, data, at) "
        "SELECT DISTINCT ON (o.id, e.value->>'name') o.id, e.value->>'name', "
        "coalesce(e.value->>'status', 'done'), e.value - 'name' - 'status' - 'at', "
        "coalesce((e.value->>'at')::timestamptz, o.started_at) "
        "FROM operations AS o, jsonb_array_elements(o.steps) WITH ORDINALITY AS e(value, n) "
        "WHERE e.value ? 'name' ORDER BY o.id, e.value->>'name', e.n DESC"
    )
    op.drop_column("operations", "steps")
    op.add_column("operations", sa.Column("progress", postgresql.JSONB(), nullable=True))
    op.add_column(
        "operations", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute(
        "UPDATE operations SET status = 'failed', error = coalesce(error, 'unknown status ' "
        f"|| status) WHERE status NOT IN {STATUSES}"
    )
    op.create_check_constraint("ck_operations_status", "operations", f"status IN {STATUSES}")
    op.create_index("ix_operations_started", "operations", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_operations_started", table_name="operations")
    op.drop_constraint("ck_operations_status", "operations", type_="check")
    op.drop_column("operations", "cancel_requested_at")
    op.drop_column("operations", "progress")
    op.add_column(
        "operations",
        sa.Column(
            "steps",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.execute(
        "UPDATE operations AS o SET steps = coalesce((SELECT jsonb_agg(s.data || "
        "jsonb_build_object('name', s.name, 'status', s.status, 'at', s.at) ORDER BY s.at) "
        "FROM operation_steps AS s WHERE s.op_id = o.id), '[]'::jsonb)"
    )
    op.execute("UPDATE operations SET status = 'failed' WHERE status IN ('queued', 'cancelled')")
    op.drop_table("operation_steps")
