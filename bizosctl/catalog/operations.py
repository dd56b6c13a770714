"""Operations: long changes to the fleet, recorded with checkpointed steps. This module is the
operations store: every query on ``operations`` and ``operation_steps`` lives here (as
procrastinate's ``manager.py`` owns every job query), and one rule starts or resumes them.

An operation has a kind (:class:`OperationKind`), a target (what it is exclusive on: a tenant's
slug, a key purpose, ``fleet``), typed params, a status (:class:`OperationStatus`, checked in
SQL) and steps: one ``operation_steps`` row per step or target done, written in the step's own
committed transaction (a checkpoint), so a run that dies resumes after its last step.

A running operation holds a session-level advisory lock on its own catalog connection. The
lock dies with the process (even SIGKILL closes the socket), so "is the previous run still
alive?" is one ``pg_try_advisory_lock``. ``queued`` operations were recorded (by
``--background``) for a worker to run; a worker's run and a foreground run are the same code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
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
    "SELECT lk.got, EXISTS (SELECT FROM run) AS found, "
    "(SELECT coalesce(array_agg(name), '{}') FROM operation_steps "
    "WHERE op_id = :id AND status = 'done') AS done FROM lk"
)

_READ_OPERATION = select(Operation.__table__).where(Operation.__table__.c.id == bindparam("id"))

#: A checkpoint: one step's row, replaced when the step is written again (built once: this
#: runs once per step of every operation).
_WRITE_STEP = text(
    "INSERT INTO operation_steps (op_id, name, status, data, at) "
    "VALUES (:op_id, :name, :status, :data, clock_timestamp()) "
    "ON CONFLICT (op_id, name) DO UPDATE SET status = excluded.status, data = excluded.data, "
    "at = excluded.at"
).bindparams(bindparam("op_id", type_=Uuid()), bindparam("data", type_=JSONB))

#: Close the operation, commit, then release the run's lock, in one message (simple query
#: protocol, values bound client-side): the unlock comes after the commit, so whoever takes
#: the lock next sees the operation finished.
_CLOSE = (
    "UPDATE operations SET status = %(status)s, error = %(error)s, finished_at = now() "
    "WHERE id = %(id)s; COMMIT; SELECT pg_advisory_unlock(%(key)s)"
)
_FINISH = "BEGIN; " + _CLOSE
_FINISH_IN_TRANSACTION = _CLOSE  # ``also`` wrote in the transaction already open


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
                    self._conn.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(self.id)}
                    )
                    self._conn.commit()
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
        with _autocommit_if_idle(self.conn):
            self._write_step(name, "done", data)
            self.conn.commit()
        self.completed.add(name)

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
    ) -> None:
        """Close the operation; ``also`` writes more catalog rows in the same transaction."""
        from bizosctl.db.engines import translate_errors

        with translate_errors("catalog"):
            if also is not None:
                also(self.conn)
            # one round trip: close it, commit (with whatever ``also`` wrote), and only then
            # unlock: a process that gets the lock sees the operation finished
            close = {
                "id": self.id,
                "status": OperationStatus(status).value,
                "error": error,
                "key": _lock_key(self.id),
            }
            with _autocommit_if_idle(self.conn) as idle:
                sql = _FINISH if idle else _FINISH_IN_TRANSACTION
                self.conn.exec_driver_sql(
                    _client_bound(self.conn, sql, close),
                    execution_options={"no_parameters": True},
                )
                self.conn.commit()
            self._locked = False
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
