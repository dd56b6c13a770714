"""The ledger's background writer: a call's settlement off the caller's path.

A call to a priced model reserves its worst case before the model is asked (on the caller's
path: the budget check must come first). Settling it afterwards (the real tokens and cost,
the difference given back to the month's total) does not change the answer, so the gate hands
it to a :class:`LedgerWriter`: one daemon thread per gate, a bounded queue, jobs run in order.
The next reservation of the same tenant takes (:meth:`~LedgerWriter.take`) the settlements that
still wait and sends them first in its own transaction and round trip, so in a busy loop the
thread has nothing to do. The thread writes the rest while a caller waits for a model's answer
(the gate says when), for a flush, or once nothing was submitted for :data:`IDLE` seconds; a
submit never wakes it: in one process, a Python thread's work takes the interpreter from the
others, and a caller that masks and reserves should not wait for it.

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
import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], object]
#: seconds to wait before each new try of a failed job
RETRIES = (0.1, 0.5, 2.0, 5.0)
CAPACITY = 1024
#: seconds a write waits at most for its turn (a caller waiting for a model) before it goes
IDLE = 0.25
#: queued writes from which the writer no longer waits for turns
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
        self._idle = idle
        self._lock = threading.Lock()
        # Not a queue.Queue: a put would wake the thread while the caller still masks and
        # reserves; it is woken when a caller waits for a model (or a flush, or a backlog).
        self._jobs: deque[object] = deque()
        self._wake = threading.Condition(self._lock)
        self._turns = 0  # one more for each turn given: a caller waits for a model, a flush
        self._in_model = False  # a caller waits for a model now
        self._flushing = 0
        self._riding = 0  # jobs taken by callers and not yet written by them
        self._submitted = 0.0  # time.monotonic() of the last submit
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        #: jobs given up after their last try (their reservations stay counted)
        self.failed = 0
        _writers.add(self)

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken by the thread."""
        return len(self._jobs)

    def submit(self, job: Job) -> None:
        """Run ``job`` in the background; here and now when the queue is full or closed."""
        with self._lock:
            queued = not self._closed and len(self._jobs) < self._capacity
            if queued:
                self._started()
                self._jobs.append(job)
                self._submitted = time.monotonic()
                if len(self._jobs) >= BACKLOG:
                    self._give_turn()
        if not queued:
            self._run(job)

    def take(self, which: Callable[[object], bool]) -> list[Job]:
        """Remove the queued jobs ``which`` selects and return them, for the caller to run
        (in order); none while a flush waits (it must find what came before it written)."""
        taken: list[Job] = []
        with self._lock:
            if not self._jobs or any(isinstance(job, _Marker) for job in self._jobs):
                return taken
            kept: list[object] = []
            for job in self._jobs:
                if callable(job) and which(job):
                    taken.append(job)
                else:
                    kept.append(job)
            if taken:
                self._jobs.clear()
                self._jobs.extend(kept)
                self._riding += len(taken)
        return taken

    def carried(self, count: int) -> None:
        """``count`` jobs from :meth:`take` are written (or given back with ``submit``)."""
        if count:
            with self._lock:
                self._riding -= count
                self._wake.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted before this call is written (or given up);
        False when ``timeout`` seconds passed first."""
        done = threading.Event()
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive() or self._pid != os.getpid():
                return True
            if thread is threading.current_thread():  # a job that reads the ledger
                return True
            self._jobs.append(_Marker(done))  # in order: when it is reached, all before it are
            self._flushing += 1
            self._give_turn()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if not done.wait(timeout):
                return False
            with self._lock:  # and what callers took to write themselves
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return self._wake.wait_for(self._carried, left)
        finally:
            with self._lock:
                self._flushing -= 1

    def _carried(self) -> bool:
        return self._riding == 0

    def waiting(self) -> None:
        """A caller waits for a model's answer now: the writer's turn (its writes then take
        no CPU from callers that mask and reserve)."""
        with self._lock:
            self._in_model = True
            if self._jobs:
                self._give_turn()

    def working(self) -> None:
        """That caller has its answer: the writer finishes the write in hand and waits for
        the next turn (or ``idle`` seconds)."""
        self._in_model = False

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued and stop the thread; later jobs run in the caller."""
        flushed = self.flush(timeout)
        with self._lock:
            self._closed = True
            thread = self._thread
            self._thread = None
            mine = thread is not None and thread.is_alive() and self._pid == os.getpid()
            if mine:
                self._jobs.append(_STOP)
                self._give_turn()
        if mine and thread is not None:
            thread.join(timeout)
        return flushed

    def _started(self) -> None:
        """The thread, running (called under the lock)."""
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            self._jobs = deque()
            self._thread = None
            self._pid = os.getpid()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="bizosctl-ledger", daemon=True)
            self._thread.start()

    def _give_turn(self) -> None:  # under the lock
        self._turns += 1
        self._wake.notify()

    def _turned(self, seen: int) -> bool:
        return self._turns != seen

    def _loop(self) -> None:
        seen = 0
        while True:
            with self._lock:
                # a turn, or the idle time is up: write what waits anyway
                turn = self._wake.wait_for(functools.partial(self._turned, seen), self._idle)
                seen = self._turns
                if not turn and time.monotonic() - self._submitted < self._idle:
                    continue  # callers are busy: the next reservation or turn takes them
            draining = not turn  # a backlog, or no turn came: everything, at once
            while True:
                with self._lock:
                    if not self._jobs:
                        break
                    job = self._jobs.popleft()
                    draining = draining or len(self._jobs) >= BACKLOG
                    go_on = draining or self._in_model or self._flushing > 0
                if job is _STOP:
                    return
                if isinstance(job, _Marker):
                    job.done.set()
                    continue
                assert callable(job)
                self._run(job)
                if not go_on:
                    break  # the callers work again: the rest at the next turn

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
