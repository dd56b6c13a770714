"""Crash points for tests: ``BIZOS_CRASH_AT=<name>`` kills the process (SIGKILL) right there.

Used to prove that every long operation resumes or cleans up after a real crash. It costs one
dictionary lookup when unset.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("BIZOS_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
