"""Migrating one target: the unit of work of schema sync, run in worker processes.

Alembic's ``op`` and ``context`` are module-level proxies, so two migrations can never run in
two threads of one process; sync fans out over processes instead (true parallelism on every
core, too). This module is what a worker imports: the spec in, a plain dict out, never an
exception, so nothing unpicklable crosses the process boundary.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from bizosctl.db.engines import db_message, sqlstate
from bizosctl.db.migrate import EXTRA_ENV, migrate
from bizosctl.errors import BizosError, Busy
from tenant_schema.ddl import OWNER_ROLE

LOCK_TIMEOUT = "55P03"
STATEMENT_TIMEOUT = "57014"

_engines: dict[tuple[str, bool], Engine] = {}


def _engine(url: str, pooled: bool, pool_size: int) -> Engine:
    key = (url, pooled)
    engine = _engines.get(key)
    if engine is None:
        args = {"connect_args": {"connect_timeout": 5}}
        if pooled:  # many schemas in one database: keep connections between targets
            engine = create_engine(url, pool_size=pool_size, max_overflow=0, **args)
        else:  # one target per database: leave no idle connection behind
            engine = create_engine(url, poolclass=NullPool, **args)
        _engines[key] = engine
    return engine


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def warm_up(owner: int) -> None:
    """Pool initializer: tie the worker to the command's process ``owner`` (Ctrl-C is the
    parent's to handle; die with it), then load the migration scripts once."""
    from bizosctl.db.migrate import scripts
    from bizosctl.signals import tie_to_owner

    tie_to_owner(owner)
    scripts("tenant")


def migrate_target(spec: dict[str, Any]) -> dict[str, Any]:
    """Move one target to ``spec["dest"]`` in its own transaction. Returns a result dict."""
    started = time.perf_counter()
    # Worker processes fork from a long-lived server process whose environment is the one of
    # the first run: take the parent's migration directories from the spec instead.
    if spec.get("extra"):
        os.environ[EXTRA_ENV] = spec["extra"]
    else:
        os.environ.pop(EXTRA_ENV, None)
    out: dict[str, Any] = {"key": spec["key"], "before": spec.get("revision"), "after": None}
    try:
        engine = _engine(spec["url"], spec["pooled"], spec["pool_size"])
        with engine.connect() as conn, conn.begin():
            conn.execute(
                text(
                    "SELECT set_config('statement_timeout', :st, true),"
                    " set_config('application_name', :app, true)"
                ),
                {"st": f"{spec['statement_timeout_ms']}ms", "app": spec["app"]},
            )
            before, after = migrate(
                conn,
                "tenant",
                schema=spec["schema"],
                owner_role=OWNER_ROLE,
                revision=spec["dest"],
                allow_downgrade=spec["allow_downgrade"],
                wait=spec["wait"],
                lock_timeout_ms=spec["lock_timeout_ms"],
            )
        out.update(
            before=before, after=after, status="unchanged" if before == after else "migrated"
        )
    except Busy as exc:
        out.update(status="busy", error=exc.message)
    except DBAPIError as exc:
        state = sqlstate(exc)
        msg = db_message(exc)
        if state == LOCK_TIMEOUT:
            msg = f"lock_timeout ({spec['lock_timeout_ms']} ms): {msg}"
        elif state == STATEMENT_TIMEOUT:
            msg = f"statement_timeout ({spec['statement_timeout_ms']} ms): {msg}"
        out.update(status="failed", error=msg, retryable=state == LOCK_TIMEOUT)
    except BizosError as exc:
        out.update(status="failed", error=exc.message)
    except Exception as exc:  # a migration script raising anything: this target fails
        detail = " ".join(str(exc).split("[SQL:")[0].split())[:300]
        out.update(status="failed", error=f"{type(exc).__name__}: {detail}")
    out["duration_ms"] = (time.perf_counter() - started) * 1000
    return out
