"""Re-queue the jobs of dead workers. Every worker runs it, every heartbeat interval.

A worker that is SIGKILLed (or loses its machine) leaves its jobs in ``doing``; its
heartbeat stops. Once the heartbeat is older than ``BIZOS_WORKER_STALLED_TIMEOUT`` (or its
worker row is gone: procrastinate prunes stalled workers when a worker starts), any worker's
reaper puts those jobs back to ``todo`` and another worker resumes the operation from its
last checkpoint. A job that has used up ``BIZOS_WORKER_RETRY_MAX_ATTEMPTS`` runs is failed
instead (a job that kills its worker every time must not loop forever).

Idempotent with many workers: the reaping transaction first takes a transaction-level
advisory lock (try, never wait: a busy reaper means another worker is doing it), then reads
with a fresh snapshot and locks the job rows it changes; the status and heartbeat conditions
are checked again on the locked rows. Two reapers therefore never re-queue one job twice,
and a job that a live worker picked up meanwhile is left alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg_pool
    from sqlalchemy.orm import Session

#: The two-key advisory lock of the reaper ("bizo", 1): two-key locks are a space of their
#: own, apart from the one-bigint locks of operations.
REAPER_LOCK = (0x62697A6F, 1)

_REAP = """
UPDATE procrastinate_jobs AS j
   SET status = CASE WHEN j.attempts + 1 >= %(max_attempts)s
                     THEN 'failed'::procrastinate_job_status
                     ELSE 'todo'::procrastinate_job_status END,
       attempts = j.attempts + 1,
       worker_id = NULL
 WHERE j.id IN (
        SELECT s.id FROM procrastinate_jobs AS s
         WHERE s.status = 'doing'
           AND NOT EXISTS (
               SELECT 1 FROM procrastinate_workers AS w
                WHERE w.id = s.worker_id
                  AND w.last_heartbeat >= now() - make_interval(secs => %(timeout)s))
         ORDER BY s.id
           FOR UPDATE SKIP LOCKED)
   AND j.status = 'doing'
RETURNING j.id, j.status::text AS status
"""


async def reap_stalled(
    pool: psycopg_pool.AsyncConnectionPool, *, timeout: float, max_attempts: int
) -> list[tuple[int, str]]:
    """Re-queue (or fail) the running jobs of workers silent for ``timeout`` seconds.
    Returns ``(job id, new status)``; empty when another worker's reaper holds the lock."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", REAPER_LOCK)
        row = await cur.fetchone()
        if not row or not row[0]:
            return []
        # A new statement: a new snapshot, taken after the lock, so every earlier reaper's
        # work is visible.
        cur = await conn.execute(
            _REAP, {"timeout": float(timeout), "max_attempts": int(max_attempts)}
        )
        return [(int(r[0]), str(r[1])) for r in await cur.fetchall()]


def reap_stalled_in(
    session: Session, *, timeout: float, max_attempts: int
) -> list[tuple[int, str]]:
    """:func:`reap_stalled` in ``session``'s transaction (the scheduler's reaping job; the
    lock is the same one, so it and the workers' reapers never reap a job twice)."""
    conn = session.connection()
    if not conn.exec_driver_sql("SELECT pg_try_advisory_xact_lock(%s, %s)", REAPER_LOCK).scalar():
        return []
    rows = conn.exec_driver_sql(
        _REAP, {"timeout": float(timeout), "max_attempts": int(max_attempts)}
    ).all()
    return [(int(r[0]), str(r[1])) for r in rows]
