"""Operations: a claim reads the steps done through the step table's key, whatever its
statistics.

A claim (``operations.claim``, a worker's fetch of an operation's job, a run's own claim)
answers the steps its operation has done: the rows of ``operation_steps`` of one operation.
The claim is a prepared statement: after five runs on a connection PostgreSQL keeps one
generic plan, made with the statistics of that moment. Taken while the table was small (a
young catalog; autovacuum's last look before a burst), they make a sequential scan look
cheapest (``EXPLAIN (GENERIC_PLAN)`` of a worker's fetch with 100 steps analysed: ``Seq Scan
on operation_steps``), and it stays the plan while a burst adds rows: each claim then reads
every step of every operation. A burst of 1,000 pings adds 2,000 steps, and
``benchmarks/jobs.py --jobs 1000 --rounds 1`` ran at 0.5-0.76 of bare procrastinate's rate
where its later rounds (planned on a larger table) ran at about 0.9.

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
