"""bizosctl commands in child processes for the tests (workers, schedulers): their stderr
lines collected by a thread, and waiting on a condition with a deadline."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Child:
    """``python -m bizosctl ARGS`` with ``env``; stderr belongs to the reader thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bizosctl", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text_: str) -> bool:
        return any(text_ in line for line in self.lines)

    def dead(self) -> bool:
        return self.proc.poll() is not None

    def wait_started(self, what: str, marker: str) -> None:
        wait_for(what, lambda: self.saw(marker) or self.dead())
        assert not self.dead(), self.lines
