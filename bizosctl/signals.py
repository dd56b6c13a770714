"""Ctrl-C and the lifetime of worker processes.

Ctrl-C: Python raises KeyboardInterrupt in the main thread only. :func:`interruptible` also
sets :data:`INTERRUPTED`, which loops running in other threads (the COPY of a move) check with
:func:`check_interrupted`, so they stop at their next page instead of copying to the end while
the main thread waits for them.

Workers (schema sync, PII re-encryption) run in forkserver processes, which are not children
of the command: :func:`tie_to_owner` (their pool initializer) makes them ignore SIGINT (a
terminal sends it to the whole process group; the command handles it and shuts the pool down)
and exit when the command's process is gone, even after a SIGKILL. Once they are gone, the
forkserver and the resource tracker see their pipes close and exit too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from bizosctl.errors import Interrupted

INTERRUPTED = threading.Event()
#: Set when a background worker is asked to stop (SIGTERM): a long operation checks it
#: between steps (:func:`stop_requested`) and stops after the step it is in, raising
#: ``Interrupted``; the worker then re-queues its job for another worker.
STOP_REQUESTED = threading.Event()
WATCH_SECONDS = 0.5
PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT sets :data:`INTERRUPTED` and raises KeyboardInterrupt in the
    main thread. A SIGINT handler someone else installed (or SIG_IGN) is left alone."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        INTERRUPTED.clear()


#: Set by the SIGINT handler ``bizosctl`` installs while it starts and parses its arguments
#: (before a command runs): the command then stops at once with the "interrupted" error (exit
#: 130, the JSON document with --json) instead of Click's bare "Aborted!".
PENDING_SIGINT = threading.Event()


def _defer(signum: int, frame: FrameType | None) -> None:
    PENDING_SIGINT.set()


def defer_sigint() -> None:
    """From process start until a command runs, remember a Ctrl-C instead of raising."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _defer)


def command_started() -> bool:
    """Called as a command starts: back to the default Ctrl-C handling. True when a Ctrl-C
    came while the process started or parsed its arguments (the command must not run)."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is _defer
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return PENDING_SIGINT.is_set()


def stop_requested() -> bool:
    """True once this process's worker was asked to stop: finish the step, then return."""
    return STOP_REQUESTED.is_set()


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if Ctrl-C was pressed (for loops outside the main thread)."""
    if INTERRUPTED.is_set():
        raise Interrupted()


def _start_time(pid: int) -> str | None:
    """The process's start time from /proc (None: gone or a zombie), to tell it from a later
    process that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, started: str | None) -> bool:
    if sys.platform.startswith("linux"):
        return started is not None and _start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:
    """Linux: SIGKILL when the parent (the forkserver) dies; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def tie_to_owner(owner: int) -> None:
    """Pool initializer part: ignore SIGINT, and exit once process ``owner`` is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    started = _start_time(owner) if sys.platform.startswith("linux") else None

    def watch() -> None:
        while _alive(owner, started):
            time.sleep(WATCH_SECONDS)
        os._exit(1)  # the command is gone: nobody reads our results; the server rolls back

    if sys.platform.startswith("linux") and started is None:
        os._exit(1)  # already gone before we started
    threading.Thread(target=watch, name="bz-owner-watch", daemon=True).start()
