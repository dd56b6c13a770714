"""Fault points for tests, named places in long operations.

``BIZOS_CRASH_AT=<name>`` kills the process (SIGKILL) right there. ``BIZOS_PAUSE_AT=<name>``
writes ``paused at <name>`` on stderr and waits there until the file named by
``BIZOS_PAUSE_RELEASE`` exists (a test sends a signal meanwhile). Used to prove that every long
operation resumes or cleans up after a real crash or a Ctrl-C. Each costs one dictionary
lookup when unset. ``BIZOS_CLOCK_START`` sets the scheduler's clock (:func:`now`).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path


def crash_point(name: str) -> None:
    if os.environ.get("BIZOS_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("BIZOS_PAUSE_AT") == name:
        _pause(name)


def _pause(name: str) -> None:
    os.environ.pop("BIZOS_PAUSE_AT", None)  # once per process
    release = Path(os.environ["BIZOS_PAUSE_RELEASE"])
    sys.stderr.write(f"paused at {name}\n")
    sys.stderr.flush()
    while not release.exists():
        time.sleep(0.02)


_CLOCK_OFFSET: list[float] = []


def now() -> dt.datetime:
    """The time (aware, UTC) for the scheduler. ``BIZOS_CLOCK_START=<ISO instant>`` (tests
    only) makes this process's clock start there and run on in real time: a child scheduler
    can be "at 04:59 in Berlin" without anyone waiting for it."""
    real = dt.datetime.now(dt.UTC)
    if not _CLOCK_OFFSET:
        start = os.environ.get("BIZOS_CLOCK_START")
        offset = 0.0
        if start:
            offset = (dt.datetime.fromisoformat(start) - real).total_seconds()
        _CLOCK_OFFSET.append(offset)
    return real + dt.timedelta(seconds=_CLOCK_OFFSET[0])
