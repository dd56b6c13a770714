"""Fault points for tests, named places in long operations.

``BIZOS_CRASH_AT=<name>`` kills the process (SIGKILL) right there. ``BIZOS_PAUSE_AT=<name>``
writes ``paused at <name>`` on stderr and waits there until the file named by
``BIZOS_PAUSE_RELEASE`` exists (a test sends a signal meanwhile). Used to prove that every long
operation resumes or cleans up after a real crash or a Ctrl-C. Each costs one dictionary
lookup when unset.
"""

from __future__ import annotations

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
