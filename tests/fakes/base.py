"""What the Neon and Supabase fakes share: an HTTP server on 127.0.0.1 in a thread, bearer
tokens, a fixed latency per call, injected faults, and a backing PostgreSQL on which each
project really gets its owner role and database."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql


@dataclass
class Backing:
    """The PostgreSQL the projects live on (a TCP cluster with a password superuser)."""

    port: int
    user: str = "byo_admin"
    password: str = "byo-pass-123"

    def run(self, *statements: sql.Composable | str, database: str = "postgres") -> None:
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password,
            dbname=database, autocommit=True,
        ) as conn:  # fmt: skip
            for stmt in statements:
                conn.execute(stmt)  # type: ignore[arg-type]

    def rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password,
            dbname="postgres",
        ) as conn:  # fmt: skip
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def make_owner(self, role: str, password: str, database: str | None) -> None:
        # A project owner may do what bizosctl asks of it: roles, databases, extensions.
        stmts: list[sql.Composable] = [
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        ]
        if database:
            stmts.append(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )
        self.run(*stmts)

    def drop_owner(self, role: str) -> None:
        """Every database the owner made, then the owner (what deleting a project does)."""
        dbs = self.rows(
            "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
            "WHERE r.rolname = %s",
            (role,),
        )
        self.run(
            *[
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(d))
                for (d,) in dbs
            ],
            sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)),
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)),
        )

    def databases(self) -> set[str]:
        return {d for (d,) in self.rows("SELECT datname FROM pg_database")}


@dataclass
class Fault:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None
    delay: float = 0.0  # seconds before answering (past the client's timeout: a timeout)


class FakeAPI:
    """Subclasses route requests in ``handle(method, path, query, body) -> (status, body)``."""

    token = "good-token"

    def __init__(self, backing: Backing, *, latency: float = 0.0) -> None:
        self.backing = backing
        self.latency = latency
        self.lock = threading.RLock()
        self.calls: list[tuple[str, str]] = []
        #: (method, path prefix) -> faults answered instead of the next matching calls
        self.faults: dict[tuple[str, str], deque[Fault]] = {}
        #: (method, path prefix) -> an event the reply waits for (after the work is done)
        self.hold: dict[tuple[str, str], threading.Event] = {}
        self.held = threading.Event()  # set once a reply is being held
        self.waited = 0.0  # seconds of latency the fake spent: the benchmark's floor
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                fake._serve(self, method)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        for event in self.hold.values():
            event.set()
        self.server.shutdown()
        self.server.server_close()

    def fail(self, method: str, prefix: str, *faults: Fault) -> None:
        with self.lock:
            self.faults.setdefault((method, prefix), deque()).extend(faults)

    def count(self, method: str, prefix: str = "") -> int:
        with self.lock:
            return sum(1 for m, p in self.calls if m == method and p.startswith(prefix))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for (m, prefix), queue in self.faults.items():
                if m == method and path.startswith(prefix) and queue:
                    return queue.popleft()
        return None

    def _serve(self, req: BaseHTTPRequestHandler, method: str) -> None:
        if self.latency:
            time.sleep(self.latency)
            with self.lock:
                self.waited += self.latency
        parts = urlsplit(req.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        with self.lock:
            self.calls.append((method, path))
        headers: dict[str, str] = {}
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            status, body = 401, {"message": "authentication required"}
        elif (fault := self._take_fault(method, path)) is not None:
            time.sleep(fault.delay)
            status, body = fault.status, fault.body or {"message": "injected"}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
        else:
            try:
                status, body = self.handle(method, path, query, json.loads(raw) if raw else None)
            except KeyError:
                status, body = 404, {"message": "not found"}
            for (m, prefix), event in list(self.hold.items()):
                if m == method and path.startswith(prefix):
                    self.held.set()
                    event.wait(60)  # the client is killed meanwhile: nobody reads this reply
        data = json.dumps(body).encode()
        try:
            req.send_response(status)
            for k, v in headers.items():
                req.send_header(k, v)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
        except OSError:
            pass  # the client went away

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        raise NotImplementedError


def new_id(n: int = 8) -> str:
    return secrets.token_hex(n)
