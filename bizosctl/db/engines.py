"""Engines, cached per (URL, role), and one translation of driver errors into ours.

Pools are bounded (``BIZOS_POOL_SIZE``) per server, database and role. Every engine is created
here so that one call can dispose of them all (``dispose_all``) before a server is stopped.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from bizosctl.errors import (
    BizosError,
    QueryFailed,
    ServerUnavailable,
    TenantMoving,
    TenantNotWritable,
)

if TYPE_CHECKING:
    from sqlalchemy import URL
    from sqlalchemy.engine import Engine

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
#: Engines by a caller's cheap key (see :func:`memo_engine`), emptied with ``_engines``.
_memo: dict[tuple[object, ...], Engine] = {}


def make_url(url: str | URL) -> URL:
    from sqlalchemy.engine import make_url as _make_url

    parsed = _make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redact(url: str | URL) -> str:
    """The URL without its password, for display and logs, in the scheme operators write
    (``postgresql://``, not the driver's ``postgresql+psycopg://``)."""
    shown = make_url(url).render_as_string(hide_password=True).replace(":***@", "@")
    return shown.replace("postgresql+psycopg://", "postgresql://", 1)


def get_engine(
    url: str | URL,
    *,
    pooled: bool = True,
    pre_ping: bool = True,
    ping_idle: float | None = None,
    **kwargs: Any,
) -> Engine:
    """One engine per URL (password included) and pooling choice, created on first use.

    ``pre_ping=False``: a pooled connection is not pinged at checkout (one round trip less),
    so the caller must expect a dead one (a restarted server) and retry on
    :func:`is_disconnect`, as the API's per-request catalog read does.

    ``ping_idle=S`` (with ``pre_ping``): only a connection that sat in the pool for at least
    ``S`` seconds is pinged at checkout; one used less than that ago is handed out as it is
    (a busy process, a worker running job after job, pays no ping per checkout). One that
    died within those seconds fails its first statement as a disconnect
    (:func:`is_disconnect`), SQLAlchemy drops it from the pool, and the next checkout gets a
    new one."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    idle = ping_idle if (pooled and pre_ping) else None
    key = (
        parsed.render_as_string(hide_password=False)
        + f"|pooled={pooled}|ping={pre_ping}|idle={idle}"
    )
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            options: dict[str, Any] = {"connect_args": {"connect_timeout": 5}}
            if pooled:
                from bizosctl.config import get_settings

                size = get_settings().pool_size
                options.update(
                    pool_size=size, max_overflow=size, pool_pre_ping=pre_ping and idle is None
                )
            else:
                options["poolclass"] = NullPool
            options.update(kwargs)
            engine = create_engine(parsed, **options)
            if idle is not None:
                _ping_when_idle(engine, idle)
            _engines[key] = engine
        return engine


def memo_engine(key: tuple[object, ...], make: Callable[[], Engine]) -> Engine:
    """The engine ``make()`` returns (through :func:`get_engine`), remembered under ``key``:
    hot paths (every API request) skip building and rendering the URL again. ``key`` must
    name everything the URL is made of (server, database, role, password, options)."""
    engine = _memo.get(key)
    if engine is None:
        engine = make()
        with _lock:
            if len(_memo) > 4096:  # routes of tenants seen once (passwords rotate too)
                _memo.clear()
            _memo[key] = engine
    return engine


def _ping_when_idle(engine: Engine, seconds: float) -> None:
    """Pool events: a connection checked in stamps the time; at checkout one idle for
    ``seconds`` or more is pinged first (a dead one is replaced, as ``pool_pre_ping`` does:
    raising DisconnectionError makes the pool discard it and try another)."""
    import time

    from sqlalchemy import event
    from sqlalchemy import exc as sa_exc

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["bz_checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("bz_checked_in")
        if since is None or time.monotonic() - since < seconds:
            return  # a new connection, or one used a moment ago
        try:
            ok = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            if not is_disconnect(exc) and not engine.dialect.is_disconnect(exc, dbapi_conn, None):  # type: ignore[arg-type]
                raise
            ok = False
        if not ok:
            raise sa_exc.DisconnectionError("the pooled connection was closed")


def dispose_all(*, host_contains: str | None = None) -> None:
    with _lock:
        _memo.clear()
        for key in list(_engines):
            if host_contains is None or host_contains in key:
                _engines.pop(key).dispose()


def is_disconnect(exc: BaseException) -> bool:
    """True when the connection died under a statement: SQLAlchemy saw it (the connection
    was invalidated), or a psycopg error that reached us directly says so (the connection is
    closed, or the server ended the session). Retrying on a new connection is safe for a
    statement that had not committed anything."""
    if getattr(exc, "connection_invalidated", False):
        return True
    import psycopg

    orig = getattr(exc, "orig", exc)
    if not isinstance(orig, psycopg.Error):
        return False
    state = getattr(orig, "sqlstate", None)
    if state is not None and (state.startswith("08") or state in ("57P01", "57P02", "57P03")):
        return True
    # no SQLSTATE: libpq itself lost the server ("server closed the connection
    # unexpectedly", "the connection is closed")
    return isinstance(orig, psycopg.OperationalError) and state is None


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None)


def db_message(exc: BaseException) -> str:
    """The server's primary message, on one line."""
    orig = getattr(exc, "orig", exc)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(orig)
    return " ".join(text.split())


_UNAVAILABLE = ("28P01", "28000", "57P01", "57P02", "57P03")


def _psycopg() -> Any:
    import psycopg

    return psycopg


def _sa_errors(name: str) -> tuple[type[Exception], ...]:
    """SQLAlchemy's exception class ``name``, if SQLAlchemy is loaded (if it is not, none of
    its exceptions can have been raised: plain-psycopg reads never import it)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return () if sa_exc is None else (getattr(sa_exc, name),)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn driver errors (SQLAlchemy's or psycopg's own) into BizosError subclasses, once, at
    the db boundary."""
    try:
        yield
    except BizosError:
        raise
    except (*_sa_errors("OperationalError"), _psycopg().OperationalError) as exc:
        state = sqlstate(exc)
        # 57P01/57P02: the server shut down or crashed under the connection (a restart)
        if state is None or state.startswith("08") or state in _UNAVAILABLE:
            raise ServerUnavailable(f"{what}: {db_message(exc)}") from exc
        raise QueryFailed(f"{what}: {db_message(exc)}") from exc
    except (*_sa_errors("DBAPIError"), _psycopg().Error) as exc:
        if sqlstate(exc) == "BZ503":
            raise TenantMoving(db_message(exc)) from exc
        if sqlstate(exc) == "BZ423":
            raise TenantNotWritable(db_message(exc)) from exc
        raise QueryFailed(f"{what}: {db_message(exc)}") from exc


def psycopg_conninfo(url: str | URL) -> dict[str, str]:
    """``psycopg.connect`` keyword arguments for a SQLAlchemy URL (Unix socket via ``?host=``)
    — for worker processes and plain libpq connections that bypass SQLAlchemy."""
    parsed = make_url(url)
    kwargs: dict[str, str] = {"dbname": parsed.database or "", "user": parsed.username or ""}
    if parsed.password:
        kwargs["password"] = str(parsed.password)
    if parsed.host:
        kwargs["host"] = parsed.host
    if parsed.port:
        kwargs["port"] = str(parsed.port)
    for key, value in parsed.query.items():
        kwargs[key] = value if isinstance(value, str) else value[-1]
    return kwargs
