"""Pieces every benchmark shares: a throw-away home, and tearing it down."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import URL

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
    if os.geteuid() == 0:  # the OS user bizosctl made for this home's clusters
        import subprocess

        from bizosctl.db.embedded import os_user_name

        subprocess.run(["userdel", os_user_name(home)], capture_output=True, check=False)


def conninfo(url: URL) -> dict[str, str]:
    """psycopg keyword arguments for a SQLAlchemy URL (imported late: see ``make_home``)."""
    from bizosctl.db.engines import psycopg_conninfo

    return psycopg_conninfo(url)


def connect(
    ctl: Control, database: str, *, autocommit: bool = False, server: str = "global-1"
) -> Any:
    """A psycopg connection as the superuser (``Any``: psycopg is imported lazily)."""
    import psycopg

    url = ctl.server(server).admin_url(database)
    return psycopg.connect(**conninfo(url), autocommit=autocommit)


def quiesce(ctl: Control, log: Log, *, timeout: float = 90.0, server: str = "global-1") -> None:
    """CHECKPOINT, then wait for autovacuum workers to finish, so that phases start alike."""
    import time

    with connect(ctl, "postgres", autocommit=True, server=server) as conn:
        conn.execute("CHECKPOINT")
        deadline = time.monotonic() + timeout
        waited = False
        while time.monotonic() < deadline:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                "AND query <> ''"
            ).fetchone()[0]
            if not busy:
                break
            if not waited:
                log("  waiting for autovacuum to finish")
                waited = True
            time.sleep(0.5)
        conn.execute("CHECKPOINT")


#: A Gemini-like model server for ``python -c``: argv = answer text, latency (s), tokens in,
#: tokens out. Prints its port, then answers every generateContent request with that text.
MODEL_SERVER = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
TEXT, LATENCY, IN, OUT = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
BODY = json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": TEXT}]},
    "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": IN,
    "candidatesTokenCount": OUT, "totalTokenCount": IN + OUT}}).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if LATENCY:
            time.sleep(LATENCY)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
srv = S(("127.0.0.1", 0), H)
print(srv.server_port, flush=True)
srv.serve_forever()
"""
