"""The job queue: procrastinate's fetch plans without bitmap scans.

procrastinate_fetch_job_v2 picks the first waiting job whose lock has no running or earlier
waiting job (an anti-join over ``procrastinate_jobs``). The statistics of a job table are
nearly always taken when little waits (autovacuum analyses it between bursts, and jobs end
fast). A burst queued after that (a fan-out, a ``--background`` loop) is planned as if a
handful of jobs waited: the lock-mate check becomes a bitmap OR of every waiting and running
job, filtered by lock for each candidate, and each fetch reads the whole queue times itself:
300 waiting jobs cost 13 ms a fetch instead of 0.1 ms (``benchmarks/jobs.py`` fell from about
400 to 160 jobs/s, bare procrastinate jobs included). Without bitmap scans the same statistics
give the plan the fetch wants whatever the queue holds: the waiting jobs in priority order
(their index), the first whose lock-mates (revision 0014's index) let it run, and stop there.

The setting is the function's own (``ALTER FUNCTION ... SET``): nothing else is planned
differently. A procrastinate upgrade that replaces the function drops it; test_jobs checks it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

FETCH = "procrastinate_fetch_job_v2(character varying[], bigint)"


def upgrade() -> None:
    op.execute(f"ALTER FUNCTION {FETCH} SET enable_bitmapscan = off")


def downgrade() -> None:
    op.execute(f"ALTER FUNCTION {FETCH} RESET enable_bitmapscan")
