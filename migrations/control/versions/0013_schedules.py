"""Scheduler: tenants' own time zones, the runs the calendar enqueued, schedulers' heartbeats.

``scheduled_runs`` has one row per run of an entry (``digest`` for tenant ``acme`` on local
date ``2026-12-03``): the scheduler inserts it and defers the run's job in one transaction,
so two schedulers at once, or one restarted after a crash, enqueue each run exactly once (the
primary key refuses the second). ``scheduler_heartbeats`` is how ``doctor`` knows a scheduler
is running.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TS = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.add_column("tenants", sa.Column("time_zone", sa.Text(), nullable=True))
    op.create_table(
        "scheduled_runs",
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("slot", sa.Text(), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("enqueued_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("scheduler", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("entry", "key", "slot", name=op.f("pk_scheduled_runs")),
    )
    op.create_index("ix_scheduled_runs_enqueued_at", "scheduled_runs", ["enqueued_at"])
    op.create_table(
        "scheduler_heartbeats",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("last_heartbeat", TS, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_heartbeats")
    op.drop_table("scheduled_runs")
    op.drop_column("tenants", "time_zone")
