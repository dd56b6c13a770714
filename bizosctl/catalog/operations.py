"""Operations: long changes to the fleet, recorded with checkpointed steps.

A running operation holds a session-level advisory lock on its own catalog connection. The
lock dies with the process (even SIGKILL closes the socket), so "is the previous run still
alive?" is one ``pg_try_advisory_lock``; a dead run's operation is resumed from its last step.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text

from bizosctl.catalog.models import Operation
from bizosctl.errors import Busy

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from bizosctl.catalog.control import Control


def _lock_key(op_id: uuid.UUID) -> int:
    # 63-bit key from the uuid: advisory locks take a bigint
    return op_id.int & 0x7FFF_FFFF_FFFF_FFFF


class OperationRun:
    """One live run of an operation; use as a context manager.

    The run keeps one pooled catalog connection for its whole life: it holds the operation's
    advisory lock, and every checkpoint is written through it (no new connection per step).
    """

    def __init__(self, ctl: Control, op_id: uuid.UUID) -> None:
        self.ctl = ctl
        self.id = op_id
        self._conn: Connection | None = None
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
            got = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_key(self.id)}
            ).scalar_one()
            if not got:
                raise Busy(f"operation {self.id} is running in another process")
            steps = self._conn.execute(
                text(
                    "UPDATE operations SET pid = :pid, host = :host, status = 'running' "
                    "WHERE id = :id RETURNING steps"
                ),
                {"pid": os.getpid(), "host": socket.gethostname(), "id": self.id},
            ).scalar_one()
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            self._conn.close()
            self._conn = None
            raise
        self.completed = {st["name"] for st in steps if st.get("status") == "done"}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rollback()
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(self.id)})
            self._conn.commit()
        except Exception:
            self._conn.invalidate()  # a dead connection released the lock with its session
        finally:
            self._conn.close()
            self._conn = None

    def step(self, name: str, **data: Any) -> None:
        """Record that a step finished (its own committed transaction: a checkpoint)."""
        entry = {"name": name, "status": "done", "at": dt.datetime.now(dt.UTC).isoformat(), **data}
        self.conn.execute(
            text(
                "UPDATE operations SET steps = steps || jsonb_build_array(CAST(:e AS jsonb)) "
                "WHERE id = :id"
            ),
            {"e": json.dumps(entry), "id": self.id},
        )
        self.conn.commit()
        self.completed.add(name)

    def finish(
        self,
        status: str = "done",
        error: str | None = None,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """Close the operation; ``also`` writes more catalog rows in the same transaction."""
        from bizosctl.db.engines import translate_errors

        with translate_errors("catalog"):
            if also is not None:
                also(self.conn)
            self.conn.execute(
                text(
                    "UPDATE operations SET status = :s, error = :e, finished_at = now() "
                    "WHERE id = :id"
                ),
                {"s": status, "e": error, "id": self.id},
            )
            self.conn.commit()
        self.final_status = status


def create_operation(
    ctl: Control, *, kind: str, target: str, params: dict[str, Any], op_id: uuid.UUID | None = None
) -> uuid.UUID:
    op_id = op_id or uuid.uuid4()
    with ctl.catalog() as s:
        s.add(Operation(id=op_id, kind=kind, target=target, params=params))
    return op_id


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
