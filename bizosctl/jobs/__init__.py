"""Durable jobs on procrastinate, in the catalog database.

A job is "run operation X" (``tasks.run_operation``): the operation engine records the work,
the job only says that a worker should run it. ``queue.enqueue_operation`` adds the job in
the caller's transaction, ``bizosctl worker`` (``worker.serve``) runs jobs, heartbeats, and
re-queues the jobs of workers that died (``reaper``). Retries follow the error tree
(``retry.ErrorTreeRetry``: an error whose ``retryable`` is true is tried again, with backoff).
"""

from __future__ import annotations
