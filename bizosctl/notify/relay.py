"""The webhook relay: outbox rows of every tenant target become catalog deliveries.

At least once across two databases, with no duplicate: in one transaction on the tenant
target it locks a batch of outbox rows (``FOR UPDATE SKIP LOCKED``, so relays may run side by
side), inserts their deliveries in the catalog (``ON CONFLICT (event_id, endpoint_id) DO
NOTHING``) and commits that, then deletes the rows and commits. A crash between the two commits
leaves the rows to be relayed again, which the unique key turns into nothing.

Scaling to thousands of targets with bounded connections (the design, also in the README):

- **Wake on NOTIFY.** Each outbox has a statement trigger that NOTIFYs ``bizos_outbox`` with
  its schema at commit. NOTIFY is per database, so one listening connection per *database*
  covers every target in it: the shared database of a server holds the shared schema and every
  schema-tier tenant, so a region with 10,000 schema tenants needs one listener. Isolated
  databases get a listener while they are busy: up to ``max_listeners`` of them, the most
  recently active ones (an idle one gives its listener up to a busier one).
- **Poll the rest, adaptively.** Every target also has a poll time, kept in a heap. An empty poll
  doubles the target's interval (``min_interval`` up to ``max_interval``); a poll that finds
  events resets it and promotes the database to a listener. Targets with a listener are polled
  at ``max_interval`` only, to catch what a dropped connection might have missed (a (re)started
  listener drains its database's targets at once). One probe query answers for up to 200
  schemas of a database (``EXISTS`` per schema).
- **Bounded work per step.** Notified targets are drained first; due polls then run for at most
  ``poll_budget_s``, two databases at a time with a look at notifications in between, so 1,000
  idle targets cost a busy one a few milliseconds, not a sweep. Poll times carry +-10 % jitter,
  so targets that went idle together do not poll in step.
- **Bounded connections.** Listeners plus an LRU of at most ``max_connections`` others (opened
  per poll of a cold database and closed when evicted); the catalog uses its own pool.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import random
import select
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel
from sqlalchemy import text

from bizosctl.catalog.control import Control
from bizosctl.db.engines import psycopg_conninfo, translate_errors
from bizosctl.errors import BizosError
from bizosctl.faults import crash_point
from bizosctl.tenancy.names import SHARED_DB, SHARED_SCHEMA
from tenant_schema.ddl import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

BATCH = 500
PROBE_CHUNK = 200

_TARGETS = text(
    "SELECT name AS server, :db AS database, :schema AS schema FROM servers "
    "WHERE provider NOT IN ('neon', 'supabase') "
    "UNION SELECT r.server, r.database, r.schema FROM routes AS r "
    "JOIN tenants AS t ON t.id = r.tenant_id "
    "WHERE t.status IN ('active', 'read_only', 'suspended', 'moving')"
)
# One row per event and subscribed live endpoint of a live tenant (or the one endpoint an
# event names); a second relay of the same event inserts nothing.
_INSERT_DELIVERIES = text(
    """
INSERT INTO webhook_deliveries (id, event_id, endpoint_id, tenant_id, event_type, payload,
                                status, attempts, next_attempt_at, event_at)
SELECT gen_random_uuid(), e.id, w.id, e.tenant_id, e.type, e.payload, 'pending', 0, now(), e.at
FROM unnest(CAST(:tenants AS uuid[]), CAST(:ids AS text[]), CAST(:types AS text[]),
            CAST(:payloads AS text[]), CAST(:endpoints AS uuid[]), CAST(:ats AS timestamptz[]))
     AS e(tenant_id, id, type, payload, endpoint, at)
JOIN tenants AS t ON t.id = e.tenant_id AND t.status <> 'deleted'
JOIN webhook_endpoints AS w ON w.tenant_id = e.tenant_id AND w.disabled_at IS NULL
 AND CASE WHEN e.endpoint IS NULL THEN w.events ? e.type ELSE w.id = e.endpoint END
ON CONFLICT (event_id, endpoint_id) DO NOTHING
RETURNING id
"""
)
_HAS_OUTBOX = (
    "SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE c.relname = 'outbox' AND c.relkind = 'r' AND n.nspname = ANY(%s)"
)


@dataclass(frozen=True, order=True)
class TargetKey:
    server: str
    database: str
    schema: str

    @property
    def db(self) -> tuple[str, str]:
        return (self.server, self.database)


class RelayStats(BaseModel):
    events: int = 0  # outbox rows moved
    deliveries: int = 0  # deliveries created
    polls: int = 0  # targets probed
    drains: int = 0  # targets drained
    errors: int = 0


def payload_of(event_type: str, at: Any, data_json: str) -> str:
    """The Standard Webhooks body of an event: ``{"type", "timestamp", "data"}``."""
    return (
        '{"type":' + json.dumps(event_type) + ',"timestamp":' + json.dumps(at.isoformat())
        + ',"data":' + data_json + "}"
    )  # fmt: skip


def insert_deliveries(ctl: Control, rows: list[Any]) -> list[uuid.UUID]:
    """Deliveries for outbox rows ``(tenant_id, id, type, data_json, endpoint_id, created_at)``,
    committed in the catalog; returns the ids of those that are new."""
    params = {
        "tenants": [r[0] for r in rows],
        "ids": [r[1] for r in rows],
        "types": [r[2] for r in rows],
        "payloads": [payload_of(r[2], r[5], r[3]) for r in rows],
        "endpoints": [r[4] for r in rows],
        "ats": [r[5] for r in rows],
    }
    with ctl.catalog() as s:
        return list(s.execute(_INSERT_DELIVERIES, params).scalars())


@dataclass
class _Db:
    conn: psycopg.Connection[Any]
    listening: bool = False
    last_event: float = 0.0
    used: bool = False  # ran a query since its notifications were last read


@dataclass
class Relay:
    """One relay loop over every tenant target; see the module's docstring for the design.

    ``on_deliveries`` receives the ids of the deliveries each drain created (a worker defers a
    delivery job per id; tests and ``webhook deliver`` attempt them at once).
    """

    ctl: Control
    on_deliveries: Callable[[list[uuid.UUID]], None] | None = None
    max_listeners: int = 64
    max_connections: int = 16
    min_interval: float = 0.5
    max_interval: float = 30.0
    poll_budget_s: float = 0.02
    refresh_s: float = 10.0
    batch: int = BATCH
    stats: RelayStats = field(default_factory=RelayStats)
    _dbs: OrderedDict[tuple[str, str], _Db] = field(default_factory=OrderedDict)
    _targets: dict[TargetKey, float] = field(default_factory=dict)  # key -> poll interval
    _due: dict[TargetKey, float] = field(default_factory=dict)
    _heap: list[tuple[float, TargetKey]] = field(default_factory=list)
    _refresh_at: float = 0.0

    # -- targets and schedule -------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the targets from the catalog: new ones are polled at once."""
        with self.ctl.catalog() as s:
            rows = s.execute(_TARGETS, {"db": SHARED_DB, "schema": SHARED_SCHEMA}).all()
        keys = {TargetKey(r.server, r.database, r.schema) for r in rows}
        for key in keys - set(self._targets):
            self._targets[key] = self.min_interval
            self._schedule(key, 0.0)
        for key in set(self._targets) - keys:
            del self._targets[key]
            self._due.pop(key, None)
        live_dbs = {k.db for k in keys}
        for db in [d for d in self._dbs if d not in live_dbs]:
            self._close(db)
        self._refresh_at = time.monotonic() + self.refresh_s

    def _schedule(self, key: TargetKey, delay: float) -> None:
        # +-10 %: targets that went idle together do not stay in step (one burst of connects).
        due = time.monotonic() + delay * random.uniform(0.9, 1.1)
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))

    def _pop_due(self, now: float, *, max_dbs: int = 2) -> list[TargetKey]:
        """Due targets of at most ``max_dbs`` databases (at most PROBE_CHUNK targets): a poll
        of a cold database costs a connection, so the loop takes a few at a time and looks at
        notifications in between."""
        out: list[TargetKey] = []
        dbs: set[tuple[str, str]] = set()
        while self._heap and self._heap[0][0] <= now and len(out) < PROBE_CHUNK:
            due, key = self._heap[0]
            if self._due.get(key) != due:  # superseded by a later schedule
                heapq.heappop(self._heap)
                continue
            if key.db not in dbs and len(dbs) >= max_dbs:
                break
            heapq.heappop(self._heap)
            dbs.add(key.db)
            out.append(key)
        return out

    def _after_poll(self, key: TargetKey, found: bool) -> None:
        if key not in self._targets:
            return
        db = self._dbs.get(key.db)
        if found:
            self._targets[key] = self.min_interval
        else:
            self._targets[key] = min(self._targets[key] * 2, self.max_interval)
        listened = db is not None and db.listening
        self._schedule(key, self.max_interval if listened else self._targets[key])

    # -- connections ------------------------------------------------------------------------------
    def _connect(self, db: tuple[str, str]) -> _Db:
        entry = self._dbs.get(db)
        if entry is not None and not entry.conn.closed:
            self._dbs.move_to_end(db)
            entry.used = True
            return entry
        # No ensure_ready(): a relay must not start an embedded server someone stopped (e.g.
        # `bizosctl down` while a worker runs); a server that is down is retried on the next
        # poll, with the target's interval backing off.
        handle = self.ctl.server(db[0])
        info = psycopg_conninfo(handle.admin_url(db[1]))
        with translate_errors(f"server {db[0]}"):
            try:
                conn = psycopg.connect(**info, autocommit=True, connect_timeout=5)  # type: ignore[arg-type]
            except psycopg.Error as exc:
                from bizosctl.errors import ServerUnavailable

                raise ServerUnavailable(f"server {db[0]} database {db[1]}: {exc}") from exc
        entry = _Db(conn)
        self._dbs[db] = entry
        self._evict()
        return entry

    def _evict(self) -> None:
        idle = [d for d, e in self._dbs.items() if not e.listening]
        while len(idle) > self.max_connections:
            self._close(idle.pop(0))  # least recently used first

    def _close(self, db: tuple[str, str]) -> None:
        entry = self._dbs.pop(db, None)
        if entry is not None:
            entry.conn.close()

    def _listen(self, db: tuple[str, str]) -> None:
        """Give ``db`` a listener (taking the idlest isolated one's if all are in use), then
        drain its targets: events committed before LISTEN sent no notification we saw."""
        entry = self._connect(db)
        if entry.listening:
            return
        listeners = [(e.last_event, d) for d, e in self._dbs.items() if e.listening]
        if len(listeners) >= self.max_listeners:
            victims = sorted(x for x in listeners if x[1][1] != SHARED_DB)
            if not victims:
                return
            self._dbs[victims[0][1]].listening = False
            self._dbs[victims[0][1]].conn.execute("UNLISTEN *")
        entry.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(OUTBOX_CHANNEL)))
        entry.listening = True
        for key in [k for k in self._targets if k.db == db]:
            self._schedule(key, 0.0)

    # -- the loop ---------------------------------------------------------------------------------
    def _wait(self, timeout: float) -> set[TargetKey]:
        """Targets whose commits were announced, waiting up to ``timeout`` seconds."""
        listeners = {e.conn.fileno(): (d, e) for d, e in self._dbs.items() if e.listening}
        if not listeners:
            if timeout > 0:
                time.sleep(timeout)
            return set()
        # A listener that ran queries may hold notifications psycopg already read off the
        # socket (its backlog): select() would not see them, so those are read first.
        used = [fd for fd, (_d, e) in listeners.items() if e.used]
        try:
            wait = 0.0 if used else max(timeout, 0.0)
            ready, _, _ = select.select(list(listeners), [], [], wait)
        except (OSError, ValueError):
            ready = list(listeners)
        out: set[TargetKey] = set()
        for fd in set(ready) | set(used):
            db, entry = listeners[fd]
            entry.used = False
            try:
                for note in entry.conn.notifies(timeout=0):
                    out.add(TargetKey(db[0], db[1], note.payload))
            except psycopg.Error:
                log.warning("relay: listener on %s/%s lost; it reconnects", *db)
                self.stats.errors += 1
                self._close(db)
        if any(k not in self._targets for k in out):
            self.refresh()  # a target made since the last refresh (a new schema tenant)
        return {k for k in out if k in self._targets}

    def step(self, max_wait: float = 0.5) -> int:
        """Wait for a notification or the next due poll (at most ``max_wait`` s), drain what
        was announced, then run due polls for at most ``poll_budget_s``. Returns events moved."""
        now = time.monotonic()
        if now >= self._refresh_at:
            self.refresh()
            for db in sorted({k.db for k in self._targets if k.database == SHARED_DB}):
                self._guard(functools.partial(self._listen, db))
        next_due = self._heap[0][0] if self._heap else now + max_wait
        moved = self._drain_all(self._wait(min(max_wait, max(0.0, next_due - now))))
        deadline = time.monotonic() + self.poll_budget_s
        while time.monotonic() < deadline:
            due = self._pop_due(time.monotonic())
            if not due:
                break
            moved += self._poll(due)
            moved += self._drain_all(self._wait(0.0))
        return moved

    def run(self, *, stop: threading.Event | None = None, duration: float | None = None) -> None:
        """Loop until ``stop`` is set or ``duration`` seconds have passed."""
        end = None if duration is None else time.monotonic() + duration
        try:
            while not (stop is not None and stop.is_set()):
                if end is not None and time.monotonic() >= end:
                    break
                self.step(0.5 if end is None else min(0.5, max(0.0, end - time.monotonic())))
        finally:
            self.close()

    def sweep(self) -> int:
        """Drain every target once (``webhook deliver``, tests); returns events moved."""
        self.refresh()
        moved = 0
        by_db: dict[tuple[str, str], list[TargetKey]] = {}
        for key in sorted(self._targets):
            by_db.setdefault(key.db, []).append(key)
        for keys in by_db.values():
            moved += self._poll(keys)
        return moved

    def close(self) -> None:
        for db in list(self._dbs):
            self._close(db)

    # -- probing and draining ---------------------------------------------------------------------
    def _guard(self, fn: Callable[[], Any], db: tuple[str, str] | None = None) -> Any:
        try:
            return fn()
        except (BizosError, psycopg.Error) as exc:
            self.stats.errors += 1
            log.warning("relay: %s", getattr(exc, "message", None) or exc)
            if db is not None:
                self._close(db)
            return None

    def _poll(self, keys: Iterable[TargetKey]) -> int:
        by_db: dict[tuple[str, str], list[TargetKey]] = {}
        for key in keys:
            by_db.setdefault(key.db, []).append(key)
        moved = 0
        for db, group in by_db.items():
            found = self._guard(functools.partial(self._probe, db, group), db)
            self.stats.polls += len(group)
            for key in group:
                self._after_poll(key, bool(found) and key in found)
            if found:
                moved += self._drain_all(found)
                if db[1] != SHARED_DB:
                    self._guard(functools.partial(self._listen, db), db)
        return moved

    def _probe(self, db: tuple[str, str], keys: list[TargetKey]) -> set[TargetKey]:
        conn = self._connect(db).conn
        schemas = [k.schema for k in keys]
        have = {r[0] for r in conn.execute(_HAS_OUTBOX, (schemas,)).fetchall()}
        present = [s for s in schemas if s in have]
        found: set[str] = set()
        for i in range(0, len(present), PROBE_CHUNK):
            parts = [
                sql.SQL("SELECT {} WHERE EXISTS (SELECT 1 FROM {}.outbox)").format(
                    sql.Literal(s), sql.Identifier(s)
                )
                for s in present[i : i + PROBE_CHUNK]
            ]
            found.update(r[0] for r in conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall())
        return {k for k in keys if k.schema in found}

    def _drain_all(self, keys: Iterable[TargetKey]) -> int:
        moved = 0
        for key in sorted(keys):
            moved += self._guard(functools.partial(self.drain, key), key.db) or 0
        return moved

    def drain(self, key: TargetKey) -> int:
        """Move every outbox row of one target to the catalog; returns how many."""
        entry = self._connect(key.db)
        entry.last_event = time.monotonic()
        moved = 0
        select_rows = sql.SQL(
            "SELECT tenant_id, id, type, data::text, endpoint_id, created_at FROM {}.outbox "
            "ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED"
        ).format(sql.Identifier(key.schema))
        delete_rows = sql.SQL(
            "DELETE FROM {}.outbox AS o USING unnest(%s::uuid[], %s::text[]) AS d(t, i) "
            "WHERE o.tenant_id = d.t AND o.id = d.i"
        ).format(sql.Identifier(key.schema))
        self.stats.drains += 1
        while True:
            with entry.conn.transaction():
                rows = entry.conn.execute(select_rows, (self.batch,)).fetchall()
                if not rows:
                    break
                created = insert_deliveries(self.ctl, rows)
                crash_point("webhook.relay.inserted")  # catalog committed, outbox rows kept
                entry.conn.execute(delete_rows, ([r[0] for r in rows], [r[1] for r in rows]))
            moved += len(rows)
            self.stats.events += len(rows)
            self.stats.deliveries += len(created)
            if created and self.on_deliveries is not None:
                self.on_deliveries(created)
            if len(rows) < self.batch:
                break
        return moved
