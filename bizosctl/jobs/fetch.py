"""A worker's fetch of its next job, with the claim of the job's operation in the same
statement.

procrastinate fetches a job with ``procrastinate_fetch_job_v2`` (one statement: the job is
``doing`` on this worker). A "run operation X" job then claimed X (read it, take its advisory
lock, mark it running, record its first step: :func:`bizosctl.catalog.operations.claim`) in a
statement of its own, from the job's thread. :class:`ClaimingFetch` makes that claim in the
fetch's statement instead (``operations.claim_in``): one round trip per job fewer, for every
kind whose runner claims its run first (``Kind.claim_first``); the other kinds get their
operation read with the job, and claim their run themselves.

The claim's advisory lock is session-level: it belongs to the connection that fetched. That
connection is kept out of the pool while the job runs (``holding``), so the lock lives as long
as the job (and dies with the worker, as every lock of a run does); the run writes through a
connection of its own (``MadeClaim``), and :meth:`ClaimingFetch.release` unlocks at the job's
end, after the run's close has committed (whoever takes the lock next sees the operation
finished), then gives the connection back.

When the operation finished (its close finished the job), nobody will ask for its lock again
(a claim and a liveness probe only try the lock of an open operation): the connection then
keeps it until its next fetch, which unlocks in the same round trip (a pipeline), or for
:data:`UNLOCK_LATER_S` at most. An operation that is still open (its run failed or stopped) is
unlocked at once, for the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool
    from procrastinate import jobs

    from bizosctl.catalog.operations import MadeClaim

log = logging.getLogger("bizosctl.worker")

#: The columns procrastinate's own fetch reads (its ``fetch_job`` query).
_JOB_COLUMNS = (
    "id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name, "
    "attempts, worker_id"
)

#: The longest a connection keeps the lock of a finished operation, waiting for its next
#: fetch to unlock it in the same round trip.
UNLOCK_LATER_S = 0.5

_UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"

#: An operation id as ``enqueue_operation`` writes it (``str(uuid)``); any other form is
#: left to the job's task (which claims the operation itself, or fails on a bad id).
_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def fetch_statement() -> str:
    """procrastinate's fetch of the next job and, when it is a "run operation" job, the claim
    of its operation (``operations.claim_in``), in one statement. Parameters: ``queues``,
    ``worker_id`` (as procrastinate's), ``task``, ``uuid`` and the claim's."""
    from bizosctl.catalog.operations import claim_in

    ctes, answer = claim_in("(SELECT op_id FROM job_op)")
    return (
        f"WITH j AS (SELECT {_JOB_COLUMNS} FROM "
        "procrastinate_fetch_job_v2(%(queues)s::varchar[], %(worker_id)s)), "
        # CASE: the cast only ever sees an id that passed the pattern
        "job_op AS (SELECT CASE WHEN j.task_name = %(task)s AND j.args ->> 'op_id' ~ %(uuid)s "
        "THEN (j.args ->> 'op_id')::uuid END AS op_id FROM j), "
        f"{ctes} "
        f"SELECT j.*, c.* FROM j LEFT JOIN (SELECT {answer} FROM o CROSS JOIN lk) AS c ON true"
    )


# -- the claims a fetch made, for the job's thread ---------------------------------------------

_made: dict[int, MadeClaim] = {}
_made_lock = threading.Lock()


def take_claim(job_id: int | None) -> MadeClaim | None:
    """The claim the fetch of job ``job_id`` made (once), for ``runners.resume(made=...)``."""
    with _made_lock:
        return _made.pop(job_id, None) if job_id is not None else None


class ClaimingFetch:
    """A job manager's ``fetch_job`` that claims the job's operation in the fetch (see the
    module docstring). Install with :meth:`install`; call :meth:`release` when a job ends and
    :meth:`close` when the worker stops."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool,
        *,
        kinds: Iterable[str],
        first_steps: Mapping[str, str] | None = None,
    ) -> None:
        from bizosctl.catalog.operations import claim_params
        from bizosctl.jobs.queue import RUN_OPERATION

        self.pool = pool
        self.sql = fetch_statement()
        self.params: dict[str, Any] = {
            **claim_params(kinds, first_steps),
            "task": RUN_OPERATION,
            "uuid": _UUID,
        }
        #: Connections that hold the lock of a running job's operation, by job id.
        self.holding: dict[int, psycopg.AsyncConnection[Any]] = {}
        #: Connections that hold the lock of a finished operation (their next fetch unlocks).
        self.finished: list[psycopg.AsyncConnection[Any]] = []
        self._unlocking: set[asyncio.Task[None]] = set()

    def install(self, app: Any) -> None:
        app.job_manager.fetch_job = self.fetch_job

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> jobs.Job | None:
        from procrastinate import jobs
        from psycopg.rows import dict_row

        from bizosctl.catalog.operations import made_claim

        unlock = bool(self.finished)
        conn = self.finished.pop() if unlock else await self.pool.getconn()
        keep = False
        try:
            cur = conn.cursor(row_factory=dict_row)
            params = {
                **self.params,
                "queues": list(queues) if queues is not None else None,
                "worker_id": worker_id,
            }
            if unlock:  # the lock of the operation this connection ran last, then the fetch
                async with conn.pipeline():
                    await conn.execute(_UNLOCK_ALL, prepare=True)
                    await cur.execute(self.sql, params, prepare=True)
            else:
                await cur.execute(self.sql, params, prepare=True)
            row = await cur.fetchone()
            if row is None or row["id"] is None:
                return None
            job = jobs.Job.from_row(row)
            assert job.id is not None
            made = made_claim(row)
            if made is not None:
                with _made_lock:
                    _made[job.id] = made
            if row["claim_got"]:  # this connection holds the operation's lock
                self.holding[job.id] = conn
                keep = True
            return job
        except BaseException:
            # a lock taken before the statement failed outlives it (session-level): the
            # connection goes, and the lock with it
            await conn.close()
            raise
        finally:
            if not keep:
                await self.pool.putconn(conn)

    async def release(self, job_id: int | None, *, finished: bool = False) -> None:
        """Job ``job_id`` ended: unlock its operation and give the connection back. When the
        operation ``finished`` (its close finished the job), the unlock waits for the
        connection's next fetch (see the module docstring)."""
        take_claim(job_id)  # a claim no task took (the task was not found)
        conn = self.holding.pop(job_id, None)  # type: ignore[arg-type]
        if conn is None:
            return
        if finished:
            self.finished.append(conn)
            asyncio.get_running_loop().call_later(UNLOCK_LATER_S, self._unlock_later, conn)
            return
        await self._unlock(conn, job_id)

    def _unlock_later(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn in self.finished:  # no fetch took it meanwhile
            self.finished.remove(conn)
            task = asyncio.get_running_loop().create_task(self._unlock(conn, None))
            self._unlocking.add(task)
            task.add_done_callback(self._unlocking.discard)

    async def _unlock(self, conn: psycopg.AsyncConnection[Any], job_id: int | None) -> None:
        try:
            await conn.execute(_UNLOCK_ALL, prepare=True)
        except Exception as exc:  # a dead connection released the lock with its session
            what = f"job {job_id}" if job_id is not None else "a finished job"
            log.warning("%s: unlocking its operation: %s", what, " ".join(str(exc).split()))
            await conn.close()
        finally:
            await self.pool.putconn(conn)

    async def close(self) -> None:
        """The worker stops: every lock still held goes with its connection."""
        if self._unlocking:
            await asyncio.gather(*self._unlocking, return_exceptions=True)
        conns = [*self.holding.values(), *self.finished]
        self.holding.clear()
        self.finished.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()
            with contextlib.suppress(Exception):
                await self.pool.putconn(conn)
