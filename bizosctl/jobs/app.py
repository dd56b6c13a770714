"""The procrastinate App on the catalog database, with every task blueprint loaded.

The connection parameters go to libpq as keyword arguments (never a URL in argv, a log line
or an error message), with TCP keepalives and ``tcp_user_timeout``: a catalog behind a
half-open connection (a dead NAT entry, a server that vanished) makes the next query fail
within about half a minute, so the heartbeat stops, the worker exits with an error and its
jobs are re-queued by the others, instead of a worker that waits forever looking alive.
On the embedded catalog's Unix socket libpq ignores these settings.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import time
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import procrastinate
    import psycopg
    import psycopg_pool

    from bizosctl.catalog.control import Control

#: Every blueprint a worker loads, as "module:attribute". A module that is not installed
#: (a feature that has not landed) is skipped; one that fails to import is an error.
BLUEPRINTS = [
    "bizosctl.jobs.tasks:blueprint",
    "bizosctl.notify.jobs:blueprint",
    "bizosctl.jobs.routine:blueprint",
    "bizosctl.digest.jobs:blueprint",
    "bizosctl.notify.email_jobs:blueprint",
]

#: Task names are "<NAMESPACE>:<name>" (procrastinate's namespacing of blueprints).
NAMESPACE = "bizosctl"

#: libpq settings for every job-queue connection (seconds; tcp_user_timeout in ms).
CONNECTION_SETTINGS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "bizosctl worker",
}


def conninfo(ctl: Control) -> dict[str, Any]:
    """libpq keyword arguments for the catalog database (password included: keep them in
    memory, never print them)."""
    from bizosctl.db.engines import psycopg_conninfo

    kwargs: dict[str, Any] = psycopg_conninfo(ctl.catalog_engine.url)
    for key, value in CONNECTION_SETTINGS.items():
        kwargs.setdefault(key, value)
    return kwargs


def make_pool(ctl: Control, *, max_size: int) -> psycopg_pool.AsyncConnectionPool:
    """An unopened async pool on the catalog, for :func:`make_app`'s App (``open_async``)."""
    import psycopg_pool

    return psycopg_pool.AsyncConnectionPool(
        conninfo="",
        kwargs=conninfo(ctl),
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=10,
        check=_check_when_idle,
        reset=_stamp_returned,
        configure=_autocommit,
        name="bizosctl-jobs",
    )


#: A pooled job-queue connection is checked (one round trip) before use only when it sat in
#: the pool this long: a worker fetching and finishing job after job pays no check per query,
#: and one that waited longer (a half-open connection, a restarted catalog) is still caught.
CHECK_IDLE_S = 1.0

_returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    """Every query procrastinate sends is one statement (a function call) that stands alone:
    in autocommit it is one round trip, not ``BEGIN``, the query and a ``COMMIT`` at the
    pool's return. Whoever needs a transaction opens one (``conn.transaction()``, as the
    reaper does)."""
    await conn.set_autocommit(True)


async def _stamp_returned(conn: psycopg.AsyncConnection[Any]) -> None:
    _returned[conn] = time.monotonic()


async def _check_when_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    import psycopg_pool

    since = _returned.get(conn)
    if since is not None and time.monotonic() - since < CHECK_IDLE_S:
        return
    await psycopg_pool.AsyncConnectionPool.check_connection(conn)


def make_app(ctl: Control) -> procrastinate.App:
    """A procrastinate App on ``ctl``'s catalog with every task of :data:`BLUEPRINTS`.

    The tasks are loaded once per process (procrastinate binds a blueprint's tasks to the
    first App that loads it); each App made here shares them and has its own connector.
    Open it with ``app.open()``/``open_async()`` (or ``open_async(pool)``) before use.
    """
    import procrastinate

    registry = _registry()
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(kwargs=conninfo(ctl)))
    app.tasks = registry.tasks
    app.periodic_registry = registry.periodic_registry
    # A task defers through the App it is bound to (its ``blueprint``): the periodic deferrer
    # and a task re-deferring itself call ``task.configure()``. Bind them to this App, the one
    # that gets opened (a process runs one worker App at a time).
    for task in registry.tasks.values():
        task.blueprint = app
    return app


@functools.cache
def _registry() -> procrastinate.App:
    import procrastinate

    # Never opened: it only holds the tasks (a task's own .defer() would use it, and fail;
    # jobs are deferred with queue.enqueue_operation, in the caller's transaction).
    registry = procrastinate.App(connector=procrastinate.PsycopgConnector())
    for entry in BLUEPRINTS:
        blueprint = load_blueprint(entry)
        if blueprint is not None:
            registry.add_tasks_from(blueprint, namespace=NAMESPACE)
    return registry


def load_blueprint(entry: str) -> procrastinate.Blueprint | None:
    """The blueprint ``"module:attribute"``, or None when that module does not exist."""
    import procrastinate

    module_name, _, attribute = entry.partition(":")
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:  # its package is missing
        found = None
    if found is None:
        return None
    blueprint = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(blueprint, procrastinate.Blueprint):
        raise TypeError(f"{entry} is not a procrastinate Blueprint")
    return blueprint


def task_names() -> list[str]:
    """The names of every task a worker of this code runs."""
    return sorted(n for n in _registry().tasks if n.startswith(f"{NAMESPACE}:"))
