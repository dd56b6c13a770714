"""The ledger's background writer: a call's settlement off the caller's path.

A call to a priced model reserves its worst case before the model is asked (on the caller's
path: the budget check must come first). Settling it afterwards (the real tokens and cost,
the difference given back to the month's total) does not change the answer, so the gate hands
it to a :class:`LedgerWriter`: one daemon thread per gate, a bounded queue, jobs run in order.
The thread writes while a caller waits for a model's answer (the gate says when), or after a
short idle time: in one process, a Python thread's work takes the interpreter from the others,
and a caller that masks and reserves should not wait for it.

Until a settlement is written, its reservation keeps counting against the budget (the
worst case, never less), so no load can spend past a budget; a process killed before its
queue is written leaves those reservations counted, as a process that died inside a call
always did. A settlement is safe to write twice (only a ``reserved`` row is settled).

Readers of the ledger in the same process (``bizosctl usage``, tests) call :func:`flush_all`
(or the gate's ``flush()``) first; the queue is also written at exit (``atexit``) and when the
gate is closed. A full queue makes the caller write its settlement itself: slower, nothing
lost. A failed write is tried again a few times (a tenant moving, a restarted server), then
logged and left: its reservation stays counted.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], object]
#: seconds to wait before each new try of a failed job
RETRIES = (0.1, 0.5, 2.0, 5.0)
CAPACITY = 1024
#: seconds a write waits for its turn (a caller waiting for a model) before it goes anyway
IDLE = 0.05
#: queued writes beyond which the writer no longer waits for its turn
BACKLOG = 16
_STOP = object()


class LedgerWriter:
    """A bounded queue of ledger writes and the thread that runs them, in order."""

    def __init__(
        self,
        *,
        capacity: int = CAPACITY,
        retries: tuple[float, ...] = RETRIES,
        sleep: Callable[[float], None] = time.sleep,
        idle: float = IDLE,
    ) -> None:
        self._capacity = capacity
        self._retries = retries
        self._sleep = sleep
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._idle = idle
        self._turn = threading.Event()  # set: write now (a caller waits for a model, a flush)
        self._flushing = 0
        #: jobs given up after their last try (their reservations stay counted)
        self.failed = 0
        _writers.add(self)

    def submit(self, job: Job) -> None:
        """Run ``job`` in the background; here and now when the queue is full or closed."""
        with self._lock:
            q = None if self._closed else self._started()
        if q is not None:
            try:
                q.put_nowait(job)
                return
            except queue.Full:
                pass
        self._run(job)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted before this call is written (or given up);
        False when ``timeout`` seconds passed first."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive() or self._pid != os.getpid():
                return True
            if thread is threading.current_thread():  # a job that reads the ledger
                return True
            q = self._queue
        done = threading.Event()
        with self._lock:
            self._flushing += 1
            self._turn.set()
        try:
            q.put(_Marker(done))  # one thread, in order: when it runs, everything before it has
            return done.wait(timeout)
        finally:
            with self._lock:
                self._flushing -= 1

    def waiting(self) -> None:
        """A caller waits for a model's answer now: the writer's turn (its writes then take
        no CPU from callers that mask and reserve)."""
        self._turn.set()

    def working(self) -> None:
        """That caller has its answer: the writer finishes the write in hand and waits for
        the next turn (or ``idle`` seconds)."""
        if not self._flushing:
            self._turn.clear()

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued and stop the thread; later jobs run in the caller."""
        flushed = self.flush(timeout)
        with self._lock:
            self._closed = True
            thread, q = self._thread, self._queue
            self._thread = None
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            q.put(_STOP)
            thread.join(timeout)
        return flushed

    def _started(self) -> queue.Queue[object]:
        """The queue, with its thread running (called under the lock)."""
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            self._queue = queue.Queue(self._capacity)
            self._thread = None
            self._pid = os.getpid()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop, args=(self._queue,), name="bizosctl-ledger", daemon=True
            )
            self._thread.start()
        return self._queue

    def _loop(self, q: queue.Queue[object]) -> None:
        draining = False  # a backlog is written at once, until the queue is empty
        while True:
            job = q.get()
            if job is _STOP:
                return
            if isinstance(job, _Marker):
                job.done.set()
                continue
            assert callable(job)
            draining = draining or q.qsize() >= BACKLOG
            if not draining:
                self._turn.wait(self._idle)
            self._run(job)
            draining = draining and not q.empty()

    def _run(self, job: Job) -> None:
        for attempt, wait in enumerate((*self._retries, None)):
            try:
                job()
                return
            except Exception as exc:
                if wait is None:
                    self.failed += 1
                    log.warning(
                        "a ledger write failed %d times and is left (its reservation stays "
                        "counted against the budget): %s",
                        attempt + 1,
                        exc,
                    )
                    return
                self._sleep(wait)


class _Marker:
    """A flush's place in the queue."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done


_writers: weakref.WeakSet[LedgerWriter] = weakref.WeakSet()


def flush_all(timeout: float | None = 30.0) -> bool:
    """Write what every writer of this process has queued (see the module's docstring)."""
    return all([w.flush(timeout) for w in list(_writers)])


atexit.register(flush_all, 10.0)
