"""The job queue: an index that finds a job's lock-mates by their lock.

procrastinate's fetch takes a waiting job only when no other job with its ``lock`` is running
or waiting ahead of it (a NOT EXISTS over ``procrastinate_jobs``). Its own indexes lead with
``id`` or cover running jobs only, so that check has no index on ``lock`` for waiting ones.
With fresh statistics the planner still finds a cheap plan. But a burst of locked jobs, such
as a fan-out that queues a thousand operations in one transaction, arrives before autovacuum
has re-analysed the table. The planner then scans the queue once per fetch, and a burst of n
jobs costs O(n^2): 1,000 queued ``ops.ping`` jobs ran at about 130/s against 390/s once
analysed (``benchmarks/jobs.py --jobs 1000 --rounds 1``). This index, leading with ``lock``
and partial on the statuses the check reads, makes that probe an index lookup whatever the
statistics say.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

INDEX = "bizos_procrastinate_jobs_lock_waiting"


def upgrade() -> None:
    op.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON procrastinate_jobs (lock, priority DESC, id) "
        "WHERE status IN ('todo', 'doing')"
    )


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
