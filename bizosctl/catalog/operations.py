"""Operations: long changes to the fleet, recorded with checkpointed steps. This module is the
operations store: every query on ``operations`` and ``operation_steps`` lives here (as
procrastinate's ``manager.py`` owns every job query), and one rule starts or resumes them.

An operation has a kind (:class:`OperationKind`), a target (what it is exclusive on: a tenant's
slug, a key purpose, ``fleet``), typed params, a status (:class:`OperationStatus`, checked in
SQL) and steps: one ``operation_steps`` row per step or target done, written in the step's own
committed transaction (a checkpoint), so a run that dies resumes after its last step.

A running operation holds a session-level advisory lock on its own catalog connection (on a
worker, on the connection that fetched its job: ``bizosctl.jobs.fetch``). The lock dies with
the process (even SIGKILL closes the socket), so "is the previous run still alive?" is one
``pg_try_advisory_lock``. ``queued`` operations were recorded (by
``--background``) for a worker to run; a worker's run and a foreground run are the same code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel
from sqlalchemy import Uuid, bindparam, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB

from bizosctl.catalog.models import Operation, OperationStep
from bizosctl.errors import Busy, InvalidInput, NotFound

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    from bizosctl.catalog.control import Control


class OperationKind(StrEnum):
    """What an operation does (the registry in :mod:`bizosctl.runners` maps each to a runner)."""

    TENANT_CREATE = "tenant.create"
    TENANT_DELETE = "tenant.delete"
    TENANT_MOVE = "tenant.move"
    SCHEMA_SYNC = "schema.sync"
    ROTATE_PII = "secrets.rotate"
    ROTATE_DB_PASSWORD = "secrets.db-password"
    ROTATE_JWT = "secrets.jwt"
    ROTATE_DB_CREDENTIALS = "secrets.db-credentials"
    ROTATE_MASTER_KEY = "secrets.master-key"
    PING = "ops.ping"
    GDPR_EXPORT = "gdpr.export"
    GDPR_DELETE = "gdpr.delete"


class OperationStatus(StrEnum):
    QUEUED = "queued"  # recorded for a worker; nothing done yet
    RUNNING = "running"  # started (alive while its process holds the lock; else resumable)
    DONE = "done"
    FAILED = "failed"  # ended with an error; the report says which parts
    ABORTED = "aborted"  # undone (a move aborted: the tenant is back where it was)
    CANCELLED = "cancelled"  # stopped at a safe point on request, what was done stays done


OPEN = (OperationStatus.QUEUED, OperationStatus.RUNNING)
FINISHED = (
    OperationStatus.DONE,
    OperationStatus.FAILED,
    OperationStatus.ABORTED,
    OperationStatus.CANCELLED,
)


class StepPublic(BaseModel):
    name: str
    status: str
    at: dt.datetime
    data: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        """The step as one dict (``name``, ``status``, ``at`` and its data), as moves show it."""
        return {"name": self.name, "status": self.status, "at": self.at.isoformat(), **self.data}


class OperationPublic(BaseModel):
    id: uuid.UUID
    kind: str
    target: str
    status: str
    params: dict[str, Any]
    error: str | None
    pid: int | None
    host: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    progress: dict[str, Any] | None
    cancel_requested: bool
    alive: bool = False
    steps: list[StepPublic] | None = None

    @classmethod
    def of(cls, op: Operation, *, alive: bool = False) -> OperationPublic:
        return cls(
            id=op.id,
            kind=op.kind,
            target=op.target,
            status=op.status,
            params=dict(op.params),
            error=op.error,
            pid=op.pid,
            host=op.host,
            started_at=op.started_at,
            finished_at=op.finished_at,
            progress=op.progress,
            cancel_requested=op.cancel_requested_at is not None,
            alive=alive,
        )


def _lock_key(op_id: uuid.UUID) -> int:
    # 63-bit key from the uuid: advisory locks take a bigint
    return op_id.int & 0x7FFF_FFFF_FFFF_FFFF


def _params(params: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(params, BaseModel):
        return params.model_dump(mode="json")
    return dict(params)


#: Take the run's lock and, when it was free, mark the operation running with this process;
#: answers (got the lock, the operation exists, its steps done): one statement.
_CLAIM = text(
    "WITH lk AS (SELECT pg_try_advisory_lock(:k) AS got), "
    "run AS (UPDATE operations SET pid = :pid, host = :host, status = 'running' FROM lk "
    "WHERE lk.got AND operations.id = :id RETURNING operations.id) "
    "SELECT lk.got, EXISTS (SELECT FROM run) AS found, bizos_steps_done(:id) AS done FROM lk"
)

_READ_OPERATION = select(Operation.__table__).where(Operation.__table__.c.id == bindparam("id"))

#: The operation's columns in :class:`OperationPublic`'s order (the raw-psycopg reads).
_COLUMNS = (
    "id, kind, target, status, params, error, pid, host, started_at, finished_at, progress, "
    "cancel_requested_at"
)

#: The advisory lock key of an operation (:func:`_lock_key`) as SQL, of the uuid ``{id}``.
_LOCK_KEY_SQL = (
    "(('x' || right(replace(({id})::text, '-', ''), 16))::bit(64)::bigint & 9223372036854775807)"
)


def _claim_ctes(op_id: str, key: str) -> str:
    """:func:`claim`'s common table expressions, for the operation whose id is the SQL
    ``op_id`` and whose advisory lock key is the SQL ``key`` (either may read ``o``):
    ``o`` (the row as it was), ``lk`` (got the lock: NULL when not tried), ``run`` (the row
    claimed), ``first`` (the first step this claim recorded). Parameters: ``kinds``, ``pid``,
    ``host``, ``first``."""
    return (
        f"o AS (SELECT {_COLUMNS} FROM operations WHERE id = {op_id}), "
        "lk AS (SELECT CASE WHEN o.kind = ANY(%(kinds)s) AND o.status IN ('queued', 'running') "
        f"THEN pg_try_advisory_lock({key}) END AS got FROM o), "
        "run AS (UPDATE operations SET pid = %(pid)s, host = %(host)s, status = 'running' "
        f"FROM lk WHERE lk.got AND operations.id = {op_id} "
        "AND operations.status IN ('queued', 'running') "
        "RETURNING operations.id, operations.kind), "
        "first AS (INSERT INTO operation_steps (op_id, name, status, data, at) "
        "SELECT run.id, %(first)s::jsonb ->> run.kind, 'done', '{}'::jsonb, clock_timestamp() "
        "FROM run WHERE %(first)s::jsonb ->> run.kind IS NOT NULL "
        "ON CONFLICT (op_id, name) DO NOTHING RETURNING name)"
    )


#: What a claim answers besides the operation's row (``o``): got the lock, claimed, the
#: first step it recorded, the steps done (with that one).
_CLAIM_ANSWER = (
    "lk.got AS claim_got, EXISTS (SELECT FROM run) AS claimed, "
    "(SELECT name FROM first) AS first_step, "
    "bizos_steps_done(o.id) || ARRAY(SELECT name FROM first) AS steps_done"
)

#: :func:`claim`'s one statement (psycopg, prepared): read the operation and, when its kind
#: is one of ``kinds`` and it is open, take the run's lock and, when that was free, mark it
#: running with this process, and record the kind's first step (``first``: kind -> step
#: name) unless a run recorded it before. Answers (got the lock: NULL when not tried,
#: claimed, the first step when this claim recorded it, its steps done, the row as it was
#: before the claim); no row for an unknown id. The UPDATE checks the status again on the
#: newest row: an operation finished meanwhile is not reopened. A worker makes the same
#: claim in the statement that fetches the job (:func:`claim_in` and
#: ``bizosctl.jobs.fetch``).
_CLAIM_READ = (
    f"WITH {_claim_ctes('%(id)s', '%(k)s')} SELECT {_CLAIM_ANSWER}, o.* FROM o CROSS JOIN lk"
)


def claim_in(op_id: str) -> tuple[str, str]:
    """The claim of the operation whose id is the SQL ``op_id``, to fold into another
    statement: its common table expressions (``o``, ``lk``, ``run``, ``first``) and what it
    answers, as ``SELECT`` items (``claim_got``, ``claimed``, ``first_step``, ``steps_done``
    and ``bizos_operation``, the row as it was, as JSON; read them with :func:`made_claim`).
    Its lock is taken by the session that runs the statement: that session holds it until
    the run's end (see :class:`MadeClaim`). Parameters: ``kinds``, ``pid``, ``host``,
    ``first``, as :func:`claim` binds them."""
    return (
        _claim_ctes(op_id, _LOCK_KEY_SQL.format(id="o.id")),
        f"{_CLAIM_ANSWER}, to_jsonb(o) AS bizos_operation",
    )


def claim_params(
    kinds: Iterable[str], first_steps: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The parameters of a claim made by this process (:func:`claim`, :func:`claim_in`)."""
    from psycopg.types.json import Jsonb

    return {
        "kinds": list(kinds),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "first": Jsonb(dict(first_steps or {})),
    }


@dataclass(frozen=True)
class MadeClaim:
    """A claim made by another statement of this process (:func:`claim_in`: a worker's fetch
    of the operation's job), handed to :func:`claim` (``made=``). Its lock is held by the
    session that made it, until whoever made it releases it (the job's end): after the run's
    close has committed, so whoever takes the lock next sees the operation finished."""

    op: OperationPublic  # as it was before the claim (alive: another process held the lock)
    got: bool | None  # the lock was taken (None: not tried; False: another process has it)
    claimed: bool  # marked running with this process (the run may take it over)
    first_step: str | None
    steps_done: list[str]


def made_claim(row: Mapping[str, Any]) -> MadeClaim | None:
    """The claim in a row answered by a :func:`claim_in` statement; None when there was no
    operation to claim."""
    found = row.get("bizos_operation")
    if found is None:
        return None
    got = row["claim_got"]
    op = OperationPublic.model_validate(
        {
            **found,
            "cancel_requested": found.get("cancel_requested_at") is not None,
            "alive": got is False,
        }
    )
    return MadeClaim(
        op=op,
        got=got,
        claimed=bool(row["claimed"]),
        first_step=row["first_step"],
        steps_done=list(row["steps_done"] or ()),
    )


#: A claim no run took over: the operation back as it was (status, pid, host; the first
#: step the claim recorded removed), committed (:data:`_UNCLAIM_ONLY`), then the lock
#: released (:data:`_UNCLAIM`).
_UNCLAIM_ONLY = (
    "BEGIN; UPDATE operations SET status = %(status)s, pid = %(pid)s, host = %(host)s "
    "WHERE id = %(id)s AND status = 'running' AND pid = %(me)s; "
    "DELETE FROM operation_steps WHERE op_id = %(id)s AND name = %(first)s; COMMIT"
)
_UNCLAIM = f"{_UNCLAIM_ONLY}; SELECT pg_advisory_unlock(%(key)s)"

#: A checkpoint: one step's row, replaced when the step is written again. One statement,
#: bound three ways: :data:`_WRITE_STEP` (SQLAlchemy), :data:`_STEP` (psycopg, prepared: the
#: hot path) and :data:`_LAST_STEP` (prepared, in the close's statement).
_STEP_SQL = (
    "INSERT INTO operation_steps (op_id, name, status, data, at) "
    "VALUES ({op_id}, {name}, {status}, {data}, clock_timestamp()) "
    "ON CONFLICT (op_id, name) DO UPDATE SET status = excluded.status, data = excluded.data, "
    "at = excluded.at"
)
_WRITE_STEP = text(
    _STEP_SQL.format(op_id=":op_id", name=":name", status=":status", data=":data")
).bindparams(bindparam("op_id", type_=Uuid()), bindparam("data", type_=JSONB))
_STEP = _STEP_SQL.format(op_id="%(op_id)s", name="%(name)s", status="%(status)s", data="%(data)s")
_LAST_STEP = _STEP_SQL.format(
    op_id="%(id)s", name="%(step)s", status="'done'", data="%(step_data)s"
)

#: Close the operation (in :func:`_close_statement`); :meth:`OperationRun.finish` sends it
#: and then the unlock in one pipeline (one round trip): the unlock comes after the commit,
#: so whoever takes the lock next sees the operation finished.
_CLOSE = (
    "UPDATE operations SET status = %(status)s, error = %(error)s, finished_at = now() "
    "WHERE id = %(id)s"
)
_UNLOCK = "SELECT pg_advisory_unlock(%(key)s)"


@functools.cache
def _close_statement(with_step: bool, extra: str | None) -> str:
    """The close as one statement (prepared): the last step (``with_step``), the close, and
    ``extra`` (a :class:`CloseWith`'s ``SELECT``); it answers how many rows ``extra`` did
    (0 without). Alone in autocommit it is its own transaction: no BEGIN, no COMMIT."""
    ctes = [f"s AS ({_LAST_STEP} RETURNING 1)"] if with_step else []
    ctes.append(f"c AS ({_CLOSE} RETURNING 1)")
    if extra is not None:
        ctes.append(f"x AS ({extra})")
    answer = "(SELECT count(*) FROM x)" if extra is not None else "0"
    return f"WITH {', '.join(ctes)} SELECT {answer} AS extra_rows"


@contextlib.contextmanager
def _autocommit_if_idle(conn: Connection) -> Iterator[bool]:
    """Run the block's statements in autocommit when no transaction is open on ``conn``
    (yields True then): a one-statement write is then its own transaction, one round trip,
    without the ``BEGIN`` psycopg would send before it and the ``COMMIT`` after. With a
    transaction open (the caller wrote on ``conn``), nothing changes."""
    from psycopg.pq import TransactionStatus

    raw = _driver(conn)
    if raw.info.transaction_status != TransactionStatus.IDLE:
        yield False
        return
    raw.autocommit = True
    try:
        yield True
    finally:
        if not raw.closed:
            if raw.info.transaction_status != TransactionStatus.IDLE:
                # a multi-statement message stopped inside its BEGIN; a dead connection is
                # SQLAlchemy's to drop
                with contextlib.suppress(Exception):
                    raw.rollback()
            with contextlib.suppress(Exception):
                raw.autocommit = False


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    raw = conn.connection.driver_connection
    assert raw is not None, "a live catalog connection"
    return cast("psycopg.Connection[Any]", raw)


def _client_bound(conn: Connection, query: str, params: Mapping[str, Any]) -> str:
    """``query`` with ``params`` bound as literals by psycopg (its ClientCursor quoting)."""
    import psycopg

    return psycopg.ClientCursor(_driver(conn)).mogrify(query, params)


@dataclass
class _Claimed:
    """A run claimed by :func:`claim`, waiting for this thread's :class:`OperationRun`.
    ``conn`` holds its lock; None when another session of this process does (a
    :class:`MadeClaim`)."""

    conn: Connection | None
    done: list[str]
    taken: bool = False


#: Claims made by :func:`claim` in this thread, by operation id, until its run takes one.
_handed = threading.local()


def _by_operation(name: str) -> dict[uuid.UUID, Any]:
    """This thread's ``name`` map (by operation id), made on first use."""
    found: dict[uuid.UUID, Any] | None = getattr(_handed, name, None)
    if found is None:
        found = {}
        setattr(_handed, name, found)
    return found


def _claims() -> dict[uuid.UUID, _Claimed]:
    return _by_operation("claims")


@dataclass
class CloseWith:
    """One more statement for the close of an operation: it runs in the close's transaction,
    before the commit (psycopg ``%(name)s`` placeholders, prepared). The jobs layer uses it
    to finish the job that runs the operation in the same commit.

    ``done`` is True once a close ran it and it answered a row: it did its part.
    """

    sql: str
    params: dict[str, Any]
    done: bool = False


def _close_withs() -> dict[uuid.UUID, CloseWith]:
    return _by_operation("close_with")


@contextlib.contextmanager
def closing_with(op_id: uuid.UUID, extra: CloseWith) -> Iterator[CloseWith]:
    """In the block, in this thread, the close of operation ``op_id`` (:meth:`OperationRun.
    finish`) also runs ``extra``, in its transaction. Yields ``extra``: read ``done`` after."""
    withs = _close_withs()
    withs[op_id] = extra
    try:
        yield extra
    finally:
        if withs.get(op_id) is extra:
            del withs[op_id]


@contextlib.contextmanager
def claim(
    ctl: Control,
    op_id: uuid.UUID,
    *,
    kinds: Iterable[str],
    first_steps: Mapping[str, str] | None = None,
    made: MadeClaim | None = None,
) -> Iterator[OperationPublic]:
    """Read an operation and, when its kind is one of ``kinds`` and it is open, claim its run
    (take its lock, mark it running with this process) in the same statement: one round
    trip where a read and then the run's own claim took two.

    ``first_steps`` (kind -> step name): the claim of such a kind also records that step, a
    checkpoint with no work before it (the run started), unless a run recorded it before:
    the run finds it done, as if it had written it, and writes it no more. It commits with
    the claim, and goes with a claim no run took.

    Yields the operation as it was before the claim (its status, pid and host). ``alive`` is
    True when another process runs it (the lock was taken): nothing was changed then, as for
    a finished operation or a kind not in ``kinds``. The first :class:`OperationRun` of this
    operation opened in the block, in this thread, takes the claimed run over (its lock and
    connection; no statement). A claim that no run took is undone when the block ends: the
    operation back as it was, then unlocked. NotFound for an unknown id.

    ``made``: the claim was made already, by another statement of this process that holds
    its lock (a worker's fetch of the job, :func:`claim_in`): no statement here. The run
    that takes it over writes through a connection of its own and leaves the unlock to
    whoever made the claim; a claim no run took is undone here, and unlocked there.
    """
    if made is not None:
        if made.op.id != op_id:
            raise ValueError(f"a claim of {made.op.id} handed to the run of {op_id}")
        with _handed_claim(ctl, made) as op:
            yield op
        return
    from psycopg.rows import namedtuple_row

    from bizosctl.db.engines import translate_errors

    params = claim_params(kinds, first_steps)
    conn = ctl.catalog_engine.connect()
    got = False
    before: OperationPublic | None = None  # the operation as it was, once the claim marked it
    first: str | None = None  # the first step this claim recorded
    held: _Claimed | None = None
    try:
        with translate_errors("catalog"):
            with _autocommit_if_idle(conn):
                row: Any = (
                    _driver(conn)
                    .cursor(row_factory=namedtuple_row)
                    .execute(
                        _CLAIM_READ, {**params, "id": op_id, "k": _lock_key(op_id)}, prepare=True
                    )
                    .fetchone()
                )
            if row is None:
                raise NotFound(f"no operation {op_id}")
            got = bool(row.claim_got)
            op = OperationPublic.of(cast(Operation, row), alive=row.claim_got is False)
            if row.claimed:
                before, first = op, row.first_step
                held = _claims()[op_id] = _Claimed(conn, list(row.steps_done))
            elif got:
                # finished between the read and the lock: read it again, claim nothing
                op = _read_operation(ctl, op_id)
        yield op
    finally:
        if held is not None and _claims().get(op_id) is held:
            del _claims()[op_id]
        if held is None or not held.taken:
            _unclaim(conn, op_id, before, locked=got, me=params["pid"], first=first)


@contextlib.contextmanager
def _handed_claim(ctl: Control, made: MadeClaim) -> Iterator[OperationPublic]:
    """:func:`claim` of a :class:`MadeClaim`."""
    op_id, held = made.op.id, None
    if made.claimed:
        held = _claims()[op_id] = _Claimed(None, list(made.steps_done))
    try:
        if made.got and not made.claimed:
            # finished between the read and the lock: read it again
            yield _read_operation(ctl, op_id)
        else:
            yield made.op
    finally:
        if held is not None:
            if _claims().get(op_id) is held:
                del _claims()[op_id]
            if not held.taken:
                with ctl.catalog_engine.connect() as conn:
                    _unclaim(conn, op_id, made.op, locked=False, me=os.getpid(),
                             first=made.first_step, restore=True)  # fmt: skip


def _unclaim(
    conn: Connection,
    op_id: uuid.UUID,
    before: OperationPublic | None,
    *,
    locked: bool,
    me: int,
    first: str | None,
    restore: bool = False,
) -> None:
    """Give back a claim no run took: ``before`` (the operation as it was, when the claim
    marked it running) is restored and the ``first`` step it recorded removed, then the lock
    is released (when ``conn`` holds it: ``locked``) and the connection returned.
    ``restore``: restore ``before`` though ``conn`` holds no lock (whoever made the claim
    holds it, and unlocks after this)."""
    try:
        conn.rollback()
        if locked or restore:
            with _autocommit_if_idle(conn):
                if before is not None:
                    sql = _client_bound(
                        conn,
                        _UNCLAIM if locked else _UNCLAIM_ONLY,
                        {
                            "id": op_id,
                            "status": before.status,
                            "pid": before.pid,
                            "host": before.host,
                            "me": me,
                            "first": first,
                            "key": _lock_key(op_id),
                        },
                    )
                else:
                    sql = f"SELECT pg_advisory_unlock({_lock_key(op_id)})"
                _driver(conn).execute(sql, prepare=False)
    except Exception:
        conn.invalidate()  # a dead connection released the lock with its session
    finally:
        conn.close()


class OperationRun:
    """One live run of an operation; use as a context manager.

    The run keeps one pooled catalog connection for its whole life: it holds the operation's
    advisory lock, and every checkpoint is written through it (no new connection per step).
    """

    def __init__(self, ctl: Control, op_id: uuid.UUID) -> None:
        self.ctl = ctl
        self.id = op_id
        self._conn: Connection | None = None
        self._locked = False  # this run holds the operation's advisory lock
        self.completed: set[str] = set()
        #: The status ``finish`` closed the operation with (None while it is open).
        self.final_status: str | None = None

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "use OperationRun as a context manager"
        return self._conn

    def __enter__(self) -> OperationRun:
        held = _claims().pop(self.id, None)
        if held is not None:  # claimed by :func:`claim` in this thread: take it over
            held.taken = True
            self.completed = set(held.done)
            if held.conn is None:  # its lock is held elsewhere in this process (MadeClaim)
                self._conn = self.ctl.catalog_engine.connect()
            else:
                self._conn, self._locked = held.conn, True
            return self
        self._conn = self.ctl.catalog_engine.connect()
        try:
            with _autocommit_if_idle(self._conn):
                # one round trip: take the lock, mark it running, read its steps
                got, found, done = self._conn.execute(
                    _CLAIM,
                    {
                        "k": _lock_key(self.id),
                        "id": self.id,
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                    },
                ).one()
                self._conn.commit()
            if not got:
                raise Busy(f"operation {self.id} is running in another process")
            self._locked = True
            if not found:
                raise NotFound(f"no operation {self.id}")
            self.completed = set(done)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        """Unlock (unless ``finish`` did) and give the connection back to the pool."""
        if self._conn is None:
            return
        try:
            self._conn.rollback()
            if self._locked:
                with _autocommit_if_idle(self._conn):
                    _driver(self._conn).execute(
                        "SELECT pg_advisory_unlock(%s)", (_lock_key(self.id),), prepare=True
                    )
        except Exception:
            self._conn.invalidate()  # a dead connection released the lock with its session
        finally:
            self._locked = False
            self._conn.close()
            self._conn = None

    def step(self, name: str, **data: Any) -> None:
        """Record that a step finished (its own committed transaction: a checkpoint, one
        statement). Writing a step again (a freeze retried) replaces its row. Catalog writes
        the caller made on :attr:`conn` since the last commit commit with it."""
        from bizosctl.db.engines import translate_errors

        with translate_errors("catalog"), _autocommit_if_idle(self.conn) as idle:
            if idle:  # the hot path: psycopg's prepared statement, no SQLAlchemy round
                _driver(self.conn).execute(
                    _STEP, self._step_params(name, "done", data), prepare=True
                )
            else:
                self._write_step(name, "done", data)
                self.conn.commit()
        self.completed.add(name)

    def _step_params(self, name: str, status: str, data: Mapping[str, Any]) -> dict[str, Any]:
        from psycopg.types.json import Jsonb

        return {"op_id": self.id, "name": name, "status": status, "data": Jsonb(dict(data))}

    def undo(self, name: str, **data: Any) -> None:
        """Mark a step as undone (a freeze lifted): a resumed run does it again. Not committed
        on its own: the next ``step`` or ``finish`` commits it."""
        self._write_step(name, "undone", data)
        self.completed.discard(name)

    def _write_step(self, name: str, status: str, data: Mapping[str, Any]) -> None:
        self.conn.execute(
            _WRITE_STEP, {"op_id": self.id, "name": name, "status": status, "data": dict(data)}
        )

    def step_data(self, name: str) -> dict[str, Any]:
        """The data recorded with step ``name`` ({} when it has none or never ran)."""
        with _autocommit_if_idle(self.conn) as idle:
            data = self.conn.execute(
                select(OperationStep.data).where(
                    OperationStep.op_id == self.id, OperationStep.name == name
                )
            ).scalar_one_or_none()
            if idle:
                self.conn.rollback()
        return dict(data or {})

    def steps(self, prefix: str = "") -> list[StepPublic]:
        """Every step recorded so far (optionally those whose name starts with ``prefix``)."""
        stmt = select(OperationStep).where(OperationStep.op_id == self.id)
        if prefix:
            stmt = stmt.where(OperationStep.name.startswith(prefix, autoescape=True))
        rows = list(self.conn.execute(stmt.order_by(OperationStep.at)).all())
        self.conn.rollback()
        return [
            StepPublic(name=r.name, status=r.status, at=r.at, data=dict(r.data or {})) for r in rows
        ]

    def params(self) -> dict[str, Any]:
        params = self.conn.execute(
            select(Operation.params).where(Operation.id == self.id)
        ).scalar_one()
        self.conn.rollback()
        return dict(params)

    def set_progress(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """What ``ops show`` reports while the run goes on (committed at once)."""
        self.conn.execute(
            update(Operation)
            .where(Operation.id == self.id)
            .values(progress={"done": done, "total": total, "note": note})
        )
        self.conn.commit()

    def cancel_requested(self) -> bool:
        """True once ``ops cancel`` asked this operation to stop at its next safe point."""
        with _autocommit_if_idle(self.conn) as idle:
            at = self.conn.execute(
                select(Operation.cancel_requested_at).where(Operation.id == self.id)
            ).scalar_one()
            if idle:
                self.conn.rollback()
        return at is not None

    def finish(
        self,
        status: str = OperationStatus.DONE,
        error: str | None = None,
        also: Callable[[Connection], None] | None = None,
        *,
        step: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Close the operation; ``also`` writes more catalog rows in the same transaction.

        ``step`` (with its ``data``) is a last checkpoint written in the same transaction as
        the close, as :meth:`step` writes it: the step and the final status commit together
        (a run that dies before sees neither), in the same round trip."""
        from bizosctl.db.engines import translate_errors

        with translate_errors("catalog"):
            if also is not None:
                also(self.conn)
            # one round trip: close it, commit (with whatever ``also`` wrote), and only then
            # unlock: a process that gets the lock sees the operation finished
            close: dict[str, Any] = {
                "id": self.id,
                "status": OperationStatus(status).value,
                "error": error,
                "key": _lock_key(self.id),
            }
            if step is not None:
                from psycopg.types.json import Jsonb

                close.update(step=step, step_data=Jsonb(dict(data or {})))
            extra = _close_withs().get(self.id)
            sql = _close_statement(step is not None, extra.sql if extra else None)
            params = {**close, **extra.params} if extra else close
            raw = _driver(self.conn)
            with _autocommit_if_idle(self.conn) as idle:
                if idle and not self._locked:
                    # one statement, its own transaction (a worker's run: the lock is held
                    # by the job's fetch, which unlocks after this)
                    answer = raw.execute(sql, params, prepare=True)
                else:
                    # one pipeline: the close (in the transaction ``also`` began, then the
                    # COMMIT), then the unlock
                    with raw.pipeline():
                        answer = raw.execute(sql, params, prepare=True)
                        if not idle:
                            raw.execute("COMMIT")
                        if self._locked:
                            raw.execute(_UNLOCK, close, prepare=True)
                row = answer.fetchone()
                if extra is not None:
                    extra.done = row is not None and row[0] > 0
                if not idle:
                    self.conn.commit()  # what SQLAlchemy began (``also``) ended with the COMMIT
            self._locked = False
            if step is not None:
                self.completed.add(step)
        self.final_status = str(status)


def _step_public(st: OperationStep) -> StepPublic:
    return StepPublic(name=st.name, status=st.status, at=st.at, data=dict(st.data or {}))


def add_operation(
    s: Session,
    *,
    kind: str,
    target: str,
    params: BaseModel | Mapping[str, Any],
    status: OperationStatus = OperationStatus.RUNNING,
    op_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Record a new operation in the caller's transaction (``queued`` for a worker)."""
    op_id = op_id or uuid.uuid4()
    s.add(
        Operation(
            id=op_id, kind=OperationKind(kind), target=target, params=_params(params), status=status
        )
    )
    s.flush()
    return op_id


def start_or_resume(
    ctl: Control,
    s: Session,
    *,
    kind: OperationKind,
    target: str,
    params: BaseModel | Mapping[str, Any],
    exclusive: bool,
    other_params: str = "new",
    match: tuple[str, ...] | None = None,
    status: OperationStatus = OperationStatus.RUNNING,
) -> tuple[uuid.UUID, bool]:
    """The one start-or-resume rule. Returns ``(operation id, resumed)``.

    An open operation of ``kind`` on ``target`` that no process runs (it crashed, or it is
    queued) is resumed when its params are equal. An open one that is alive is ``Busy`` when
    the kind is ``exclusive`` on its target, and left alone otherwise. ``other_params`` says
    what an open, dead operation with other params means: ``"new"`` (start another),
    ``"resume"`` (resume it anyway: the params only say how, not what) or ``"refuse"``
    (InvalidInput naming it). ``match`` limits the comparison to those params (the others
    say how to run, not what). The check and the insert run under a transaction-level lock on
    (kind, target), so two processes starting at once do not both start.
    """
    wanted = _params(params)
    s.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"{kind}:{target}"}
    )
    open_ops = s.execute(
        select(Operation.id, Operation.params)
        .where(Operation.kind == kind, Operation.target == target, Operation.status.in_(OPEN))
        .order_by(Operation.started_at.desc())
    ).all()

    def key(p: Mapping[str, Any]) -> Any:
        return p if match is None else {k: p.get(k) for k in match}

    for op_id, have in open_ops:
        if is_alive(ctl, op_id):
            if exclusive:
                raise Busy(f"{kind} of {target} is running in another process (operation {op_id})")
            continue
        if key(have) == key(wanted) or other_params == "resume":
            return op_id, True
        if other_params == "refuse":
            raise InvalidInput(
                f"{kind} of {target} has an unfinished operation {op_id} with other parameters: "
                f"`bizosctl ops resume {op_id}` finishes it, `bizosctl ops cancel {op_id}` "
                "stops it"
            )
    return add_operation(s, kind=kind, target=target, params=wanted, status=status), False


def is_alive(ctl: Control, op_id: uuid.UUID) -> bool:
    """True when some process holds the operation's lock right now."""
    with ctl.catalog_engine.connect() as conn:
        got = conn.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_key(op_id)}
        ).scalar_one()
        if got:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(op_id)})
        conn.commit()
    return not got


def get_operation(ctl: Control, op_id: uuid.UUID) -> Operation | None:
    with ctl.catalog() as s:
        op = s.execute(select(Operation).where(Operation.id == op_id)).scalar_one_or_none()
        if op is not None:
            s.expunge(op)
        return op


def parse_id(ref: str) -> uuid.UUID:
    """An operation id as typed by an operator (InvalidInput when it is not a uuid)."""
    try:
        return uuid.UUID(ref.strip())
    except ValueError:
        raise InvalidInput(f"{ref!r} is not an operation id (a uuid)") from None


def describe(
    ctl: Control, op_id: uuid.UUID, *, with_steps: bool = True, check_alive: bool = True
) -> OperationPublic:
    """The operation, whether it is alive (unless ``check_alive`` is false: ``alive`` is then
    False), and its steps in order. NotFound when unknown."""
    if not with_steps:
        pub = _read_operation(ctl, op_id)
        if check_alive and pub.status in OPEN:
            pub.alive = is_alive(ctl, op_id)
        return pub
    with ctl.catalog() as s:
        op = s.execute(select(Operation).where(Operation.id == op_id)).scalar_one_or_none()
        if op is None:
            raise NotFound(f"no operation {op_id}")
        pub = OperationPublic.of(op)
        if with_steps:
            rows = s.execute(
                select(OperationStep).where(OperationStep.op_id == op_id).order_by(OperationStep.at)
            ).scalars()
            pub.steps = [_step_public(r) for r in rows]
    if check_alive and pub.status in OPEN:
        pub.alive = is_alive(ctl, op_id)
    return pub


def _read_operation(ctl: Control, op_id: uuid.UUID) -> OperationPublic:
    """The operation row alone, in one statement (no transaction around it; a Core row, not
    an ORM object: this runs once per job a worker runs)."""
    from bizosctl.db.engines import translate_errors

    with (
        translate_errors("catalog"),
        ctl.catalog_engine.connect() as conn,
        _autocommit_if_idle(conn),
    ):
        row = conn.execute(_READ_OPERATION, {"id": op_id}).first()
        if row is None:
            raise NotFound(f"no operation {op_id}")
        return OperationPublic.of(cast(Operation, row))


def steps_of(ctl: Control, op_id: uuid.UUID) -> list[StepPublic]:
    with ctl.catalog() as s:
        rows = s.execute(
            select(OperationStep).where(OperationStep.op_id == op_id).order_by(OperationStep.at)
        ).scalars()
        return [_step_public(r) for r in rows]


def find_operations(
    ctl: Control,
    *,
    kind: str | None = None,
    status: str | None = None,
    target: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 50,
) -> list[OperationPublic]:
    """Operations, newest first, filtered by kind (a kind or a prefix such as ``secrets``),
    status, target and start time."""
    stmt = select(Operation).order_by(Operation.started_at.desc()).limit(limit)
    if kind:
        stmt = stmt.where(
            (Operation.kind == kind) | Operation.kind.startswith(f"{kind}.", autoescape=True)
        )
    if status:
        stmt = stmt.where(Operation.status == status)
    if target:
        stmt = stmt.where(Operation.target == target)
    if since:
        stmt = stmt.where(Operation.started_at >= since)
    with ctl.catalog() as s:
        ops = [OperationPublic.of(op) for op in s.execute(stmt).scalars()]
    for op in ops:
        if op.status in OPEN:
            op.alive = is_alive(ctl, op.id)
    return ops


def latest(
    s: Session, *, kind: OperationKind, target: str, status: OperationStatus | None = None
) -> Operation | None:
    """The newest operation of ``kind`` on ``target`` (optionally with ``status``)."""
    stmt = select(Operation).where(Operation.kind == kind, Operation.target == target)
    if status is not None:
        stmt = stmt.where(Operation.status == status)
    return s.execute(stmt.order_by(Operation.started_at.desc()).limit(1)).scalar_one_or_none()


def patch_params(s: Session | Connection, op_id: uuid.UUID, **values: Any) -> None:
    """Merge ``values`` into an operation's params (a kept source purged, a deadline set)."""
    s.execute(
        update(Operation)
        .where(Operation.id == op_id)
        .values(params=Operation.params.op("||")(literal(values, JSONB)))
    )


def request_cancel(ctl: Control, op_id: uuid.UUID) -> None:
    with ctl.catalog() as s:
        s.execute(
            update(Operation)
            .where(Operation.id == op_id, Operation.cancel_requested_at.is_(None))
            .values(cancel_requested_at=func.now())
        )


def mark_cancelled(ctl: Control, op_id: uuid.UUID, reason: str) -> None:
    """Close an operation no process runs (a queued one, or one that died) as cancelled."""
    with ctl.catalog() as s:
        s.execute(
            update(Operation)
            .where(Operation.id == op_id, Operation.status.in_(OPEN))
            .values(status=OperationStatus.CANCELLED, error=reason, finished_at=func.now())
        )
