"""Pieces every benchmark shares: a throw-away home, and tearing it down."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control

Log = Callable[[str], None]


def make_home(*, fast: bool, env: dict[str, str] | None = None) -> Path:
    """A fresh, short BIZOS_HOME (Unix socket paths must stay under 108 bytes); every other
    BIZOS_* setting is dropped, then ``env`` is applied. ``fast`` turns fsync off.

    Must run before any bizosctl module is imported (settings are read from the environment).
    """
    for name in list(os.environ):
        if name.startswith("BIZOS_"):
            del os.environ[name]
    home = Path(tempfile.mkdtemp(prefix="bzb-", dir="/tmp"))
    os.environ["BIZOS_HOME"] = str(home)
    if fast:
        os.environ["BIZOS_EMBEDDED_DURABLE"] = "false"
    os.environ.update(env or {})
    return home


def cleanup(ctl: Control | None, home: Path, log: Log) -> None:
    """Stop the clusters and delete the home; keep the home when they cannot be stopped."""
    if ctl is not None:
        from bizosctl.db.engines import dispose_all
        from bizosctl.tenancy.regions import stop_embedded

        try:
            dispose_all()
            stop_embedded(ctl)
        except Exception as exc:  # do not hide the original error
            log(f"could not stop the clusters under {home} ({exc}); the directory is kept")
            return
    shutil.rmtree(home, ignore_errors=True)
