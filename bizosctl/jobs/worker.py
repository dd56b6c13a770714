"""``bizosctl worker``: run jobs until SIGTERM or SIGINT.

One procrastinate worker (heartbeat every ``BIZOS_WORKER_HEARTBEAT_INTERVAL`` seconds, up to
``--concurrency`` jobs at once, each sync task in a thread) and the reaper beside it. On the
first SIGTERM/SIGINT it takes no new job, sets ``signals.STOP_REQUESTED`` (a long operation
stops after the step it is in, and its job is re-queued for another worker), waits for the
running jobs, unregisters and returns. A second signal kills it at once (the default
action): its jobs are then re-queued by the other workers' reapers.

If the worker stops by itself (its heartbeat failed: the catalog went away or a connection
hung past its keepalives), :func:`serve` raises ``ServerUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from bizosctl.errors import ConfigError, ServerUnavailable
from bizosctl.signals import STOP_REQUESTED

if TYPE_CHECKING:
    import procrastinate
    from procrastinate.app import WorkerOptions
    from procrastinate.job_context import JobContext

    from bizosctl.catalog.control import Control
    from bizosctl.jobs.fetch import ClaimingFetch

log = logging.getLogger("bizosctl.worker")

Event = Callable[[str], None]


@dataclass
class WorkerReport:
    concurrency: int
    queues: list[str] | None
    worker_id: int | None = None
    stopped_by: str | None = None
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    reaped: list[int] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return {
            "ok": True,
            "worker_id": self.worker_id,
            "concurrency": self.concurrency,
            "queues": self.queues,
            "stopped_by": self.stopped_by,
            "jobs": {"succeeded": self.succeeded, "failed": self.failed, "retried": self.retried},
            "reaped": self.reaped,
            "seconds": round(time.time() - self.started_at, 1),
        }


class _SideTaskFailure(logging.Handler):
    """Keeps the reason procrastinate stopped its worker by itself (a failed heartbeat)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "action", None) == "side_task_failed" and self.reason is None:
            self.reason = f"{getattr(record, 'task_name', 'side task')}: {record.exception}"  # type: ignore[attr-defined]


def check_settings(ctl: Control, concurrency: int) -> None:
    s = ctl.settings
    if concurrency < 1:
        from bizosctl.errors import InvalidInput

        raise InvalidInput(f"--concurrency must be at least 1 (got {concurrency})")
    if s.worker_stalled_timeout <= s.worker_heartbeat_interval:
        raise ConfigError(
            f"BIZOS_WORKER_STALLED_TIMEOUT ({s.worker_stalled_timeout:g}s) must be longer than "
            f"BIZOS_WORKER_HEARTBEAT_INTERVAL ({s.worker_heartbeat_interval:g}s), else live "
            "workers count as dead"
        )


class WorkerPlan(BaseModel):
    """What ``bizosctl worker --dry-run`` shows: what it would run, and the queue now."""

    dry_run: bool = True
    concurrency: int
    queues: list[str] | None
    tasks: list[str]
    jobs_waiting: dict[str, int]
    live_workers: int


def plan_worker(ctl: Control, *, concurrency: int, queues: Iterable[str] | None) -> WorkerPlan:
    from bizosctl.jobs.app import task_names
    from bizosctl.jobs.queue import list_workers, queued_jobs

    check_settings(ctl, concurrency)
    with ctl.catalog() as s:
        waiting = queued_jobs(s)
        workers = list_workers(s, stalled_after=ctl.settings.worker_stalled_timeout)
    return WorkerPlan(
        concurrency=concurrency,
        queues=sorted(set(queues)) if queues else None,
        tasks=task_names(),
        jobs_waiting=waiting,
        live_workers=sum(1 for w in workers if not w.stale),
    )


def serve(
    ctl: Control,
    *,
    concurrency: int,
    queues: Iterable[str] | None = None,
    on_event: Event | None = None,
) -> WorkerReport:
    """Run a worker in this process until a signal stops it (see the module docstring)."""
    check_settings(ctl, concurrency)
    _ = ctl.catalog_engine  # the catalog answers and is at head, or a one-line error now
    # the operations registry every "run operation" job resumes through, loaded before the
    # first job (which would otherwise wait for it: about 0.2 s of imports)
    importlib.import_module("bizosctl.runners")
    report = WorkerReport(concurrency=concurrency, queues=sorted(set(queues)) if queues else None)
    STOP_REQUESTED.clear()
    try:
        asyncio.run(_serve(ctl, report, on_event or (lambda _: None)))
    finally:
        STOP_REQUESTED.clear()
    return report


async def _serve(ctl: Control, report: WorkerReport, event: Event) -> None:
    import psycopg_pool

    from bizosctl.jobs.app import make_app, make_pool
    from bizosctl.jobs.reaper import reap_stalled

    s = ctl.settings
    app = make_app(ctl)
    # every running job may hold a connection (its operation's lock: ClaimingFetch), and
    # the fetch, the heartbeat and the reaper need theirs
    pool = make_pool(ctl, max_size=2 * report.concurrency + 4)
    fetch = _claiming_fetch(pool)
    _finish_once(app, fetch)
    try:
        await pool.open(wait=True, timeout=10)
    except psycopg_pool.PoolTimeout as exc:
        await pool.close()
        raise ServerUnavailable("catalog: the job queue's connections could not open") from exc
    # procrastinate logs every job failure with its traceback: we report jobs on one line
    # each (the middleware), and keep only why a worker stopped by itself.
    failure = _SideTaskFailure()
    plog = logging.getLogger("procrastinate")
    saved = plog.propagate, plog.level
    plog.addHandler(failure)
    if log.getEffectiveLevel() > logging.DEBUG:
        plog.propagate = False
        plog.setLevel(logging.ERROR)
    loop = asyncio.get_running_loop()
    try:
        await app.open_async(pool)
        fetch.install(app)
        options: WorkerOptions = {
            "concurrency": report.concurrency,
            "name": "bizosctl",
            "install_signal_handlers": False,
            "update_heartbeat_interval": s.worker_heartbeat_interval,
            "stalled_worker_timeout": s.worker_stalled_timeout,
            "additional_context": {"ctl": ctl},
            "worker_middleware": [_counter(report, event)],
            "fetch_job_polling_interval": min(5.0, s.worker_heartbeat_interval),
        }
        if report.queues:
            options["queues"] = report.queues
        worker_task = asyncio.create_task(app.run_worker_async(**options), name="bizosctl worker")

        def on_signal(signum: int) -> None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)  # the next one kills (default action)
            report.stopped_by = signal.Signals(signum).name
            STOP_REQUESTED.set()
            event(f"{report.stopped_by}: stopping after the running jobs' current step")
            worker_task.cancel()  # procrastinate: stop fetching, wait for running jobs

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

        async def reap_forever() -> None:
            while True:
                try:
                    reaped = await reap_stalled(
                        pool,
                        timeout=s.worker_stalled_timeout,
                        max_attempts=s.worker_retry_max_attempts,
                    )
                except Exception as exc:  # the heartbeat reports a dead catalog; keep going
                    log.warning("reaper: %s", " ".join(str(exc).split())[:200])
                else:
                    for job_id, status in reaped:
                        report.reaped.append(job_id)
                        event(
                            f"job {job_id} of a dead worker "
                            + ("re-queued" if status == "todo" else "failed: no attempts left")
                        )
                await asyncio.sleep(s.worker_heartbeat_interval)

        reaper = asyncio.create_task(reap_forever(), name="bizosctl reaper")
        event(
            f"worker started on {', '.join(report.queues) if report.queues else 'every queue'}"
            f" (concurrency {report.concurrency})"
        )
        try:
            await worker_task
        except asyncio.CancelledError:
            if report.stopped_by is None:
                raise
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if report.stopped_by is None:
            reason = failure.reason or "it stopped by itself"
            raise ServerUnavailable(f"worker stopped: {reason}")
    finally:
        plog.removeHandler(failure)
        plog.propagate, _ = saved
        plog.setLevel(saved[1])
        await fetch.close()
        await app.close_async()
        await pool.close()


def _claiming_fetch(pool: Any) -> ClaimingFetch:
    """The worker's fetch: each "run operation" job claims its operation in the statement
    that fetches it, for the kinds whose runner claims first (``Kind.claim_first``)."""
    from bizosctl.jobs.fetch import ClaimingFetch
    from bizosctl.runners import CLAIM_FIRST, CLAIM_STEPS

    return ClaimingFetch(pool, kinds=CLAIM_FIRST, first_steps=CLAIM_STEPS)


def _finish_once(app: procrastinate.App, fetch: ClaimingFetch) -> None:
    """Skip procrastinate's finish (or retry) of a job its operation's close finished already
    (``tasks.finished_with_operation``): one catalog round trip fewer per operation, and no
    error from finishing a job twice. Then the job has ended: ``fetch`` releases the lock of
    its operation."""
    from bizosctl.jobs.tasks import finished_with_operation

    manager = app.job_manager
    finish_job, retry_job = manager.finish_job, manager.retry_job

    async def once(job: Any, end: Callable[[], Awaitable[None]]) -> None:
        closed = finished_with_operation(job.id)
        try:
            if not closed:
                await end()
        finally:
            await fetch.release(job.id, finished=closed)

    async def finish_once(job: Any, status: Any, delete_job: bool) -> None:
        await once(job, lambda: finish_job(job=job, status=status, delete_job=delete_job))

    async def retry_once(job: Any, *args: Any, **kwargs: Any) -> None:
        await once(job, lambda: retry_job(job, *args, **kwargs))

    manager.finish_job = finish_once  # type: ignore[method-assign]
    manager.retry_job = retry_once  # type: ignore[method-assign]


def _counter(
    report: WorkerReport, event: Event
) -> Callable[[Callable[[], Awaitable[Any]], JobContext, Any], Awaitable[Any]]:
    """A worker middleware: counts outcomes and reports each job on one line."""
    from bizosctl.errors import BizosError

    async def middleware(
        call_next: Callable[[], Awaitable[Any]], context: JobContext, worker: Any
    ) -> Any:
        job = context.job
        report.worker_id = worker.worker_id
        what = f"job {job.id} {job.task_name}({_args(job.task_kwargs)})"
        try:
            result = await call_next()
        except BaseException as exc:
            message = exc.message if isinstance(exc, BizosError) else type(exc).__name__
            task = context.app.tasks.get(job.task_name) if context.app else None
            again = task is not None and task.get_retry_exception(exception=exc, job=job)
            if again:
                report.retried += 1
                event(f"{what}: {message} (will run again)")
            else:
                report.failed += 1
                event(f"{what} failed: {message}")
            raise
        report.succeeded += 1
        event(f"{what} done")
        return result

    return middleware


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())
