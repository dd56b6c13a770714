"""Operations: a claim reads the steps done through the step table's key, whatever its
statistics.

A claim (``operations.claim``, a worker's fetch of an operation's job, a run's own claim)
answers the steps its operation has done: the rows of ``operation_steps`` of one operation.
The claim is a prepared statement, and its plan is made once per connection, with the
statistics of the moment. Those are taken when the table is small (a young catalog, or
autovacuum's last look before a burst); then a sequential scan looks cheapest, and it stays
the plan while a burst adds rows: each claim reads every step of every operation.
``benchmarks/jobs.py --jobs 1000 --rounds 1`` fell to about 0.6 of bare procrastinate's rate
(a burst of 1,000 pings adds 2,000 steps) where 300 jobs ran at about 0.9.

``bizos_steps_done(op)`` reads them with sequential scans disabled (the function's own
setting, as revision 0015 does for procrastinate's fetch): the primary key's index, leading
with ``op_id``, whatever the statistics say. PL/pgSQL keeps its plan per session.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE FUNCTION bizos_steps_done(op uuid) RETURNS text[] LANGUAGE plpgsql STABLE "
        "SET enable_seqscan = off AS $$ BEGIN "
        "RETURN ARRAY(SELECT name FROM operation_steps WHERE op_id = op AND status = 'done'); "
        "END $$"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS bizos_steps_done(uuid)")
