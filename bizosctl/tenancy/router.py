"""The one door to tenant data: :func:`tenant_session`.

It looks the route up in the catalog, connects as the application's login role (never the
superuser), and sets the tenant, the actor and the search_path with ``set_config(..., true)``,
which is ``SET LOCAL``: the settings die with the transaction, so a pooled connection never
carries one tenant's context into the next request. A read-only session is ``BEGIN READ ONLY``.

The database enforces what the context allows (RLS, the write guard, a suspended tenant reads
nothing); setting the context is the application's job: the login role may set any tenant.

:func:`tenant_statement` is the same door for a hot path that runs one statement: the
transaction, the context and the statement go in one round trip (psycopg's pipeline mode).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, LiteralString

from bizosctl.catalog.control import Control, RouteInfo
from bizosctl.db.engines import get_engine, is_disconnect, memo_engine, translate_errors
from bizosctl.errors import TenantSuspended

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, SessionTransaction

    from bizosctl.providers.local import ServerHandle


def search_path(route: RouteInfo) -> str:
    return f'"{route.schema}", public'


_CONTEXT_PG: LiteralString = (
    "SELECT set_config('bizos.tenant_id', %(tenant)s, true),"
    " set_config('bizos.actor', %(actor)s, true),"
    " set_config('search_path', %(path)s, true)"
)


def _ready_handle(ctl: Control, route: RouteInfo) -> ServerHandle:
    """The route's server, running; TenantSuspended for a suspended tenant."""
    if route.status == "suspended":
        # The database refuses it too (bizos_tenant() is NULL): this is the clear message.
        raise TenantSuspended(f"tenant {route.slug!r} is suspended: reads and writes are refused")
    handle = ctl.server(route.server)
    handle.ensure_ready()
    return handle


def _engine(
    ctl: Control, route: RouteInfo, *, pre_ping: bool = True, read_only: bool = False
) -> Engine:
    """The route's engine, remembered (until ``dispose_all``) so that a hot path does not
    build and parse its URL each time."""
    handle = _ready_handle(ctl, route)

    def make() -> Engine:
        url = handle.login_url(route.database, route.role, route.password)
        engine = get_engine(url, pre_ping=pre_ping)
        if read_only:
            # psycopg then opens the transaction with BEGIN READ ONLY (reset when pooled back).
            engine = engine.execution_options(postgresql_readonly=True)
        return engine

    # handle.url: a server re-pointed under the same name gets engines of its own
    return memo_engine(("tenant", route, handle.url, pre_ping, read_only), make)


@contextlib.contextmanager
def tenant_session(
    ctl: Control, slug: str, *, actor: str, read_only: bool = False, route: RouteInfo | None = None
) -> Iterator[Session]:
    """A session inside one transaction in ``slug``'s context; committed on success.
    ``route``: the tenant's route as the caller just read it (the API reads it once per
    request, with the credentials); looked up otherwise."""

    if route is None or route.slug != slug:
        route = ctl.route(slug)
    # The pooled connection is not pinged at checkout (a round trip per session): the
    # context is the transaction's first statement, so a connection found dead there (the
    # server restarted) is replaced and the context sent again, once.
    engine = _engine(ctl, route, pre_ping=False, read_only=read_only)
    context = {"tenant": str(route.tenant_id), "actor": actor, "path": search_path(route)}
    with translate_errors(f"tenant {slug}"):
        session, transaction = _begin(engine, context)
        with session, transaction:
            yield session


def _begin(engine: Engine, context: Mapping[str, str]) -> tuple[Session, SessionTransaction]:
    """A session whose transaction has begun with the context set: one round trip. psycopg's
    pipeline mode sends its ``BEGIN`` (``READ ONLY`` with it) and the context's ``SET LOCAL``
    together and syncs once, where a plain execute waits for the ``BEGIN`` first. A
    connection found dead there (the server restarted) is replaced and all of it sent again,
    once: nothing has run in the transaction yet."""
    import psycopg
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session

    for attempt in (1, 2):
        session = Session(engine)
        transaction = session.begin()
        fairy: Any = None
        try:
            fairy = session.connection().connection
            raw = fairy.driver_connection
            with raw.pipeline():
                raw.execute(_CONTEXT_PG, context)
            return session, transaction
        except DBAPIError as exc:  # the checkout itself (a server that is not up)
            session.close()
            if attempt == 2 or not is_disconnect(exc):
                raise
        except psycopg.Error as exc:
            retry = fairy is not None and _dropped_if_dead(engine, fairy, exc, attempt)
            session.close()
            if retry:
                continue
            raise _translated(_CONTEXT_PG, exc) from exc
        except BaseException:
            session.close()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _dropped_if_dead(engine: Engine, fairy: Any, exc: Exception, attempt: int) -> bool:
    """After ``exc`` on pooled connection ``fairy``: when the connection is dead, drop it as
    SQLAlchemy does on a disconnect (the pool's connections as old as it died with it, a
    restart, and are replaced at checkout). True: it was dead on a first attempt, so the
    caller sends everything again, once."""
    import psycopg

    conn = fairy.driver_connection
    if not (conn.closed or conn.broken):
        return False
    engine.pool._invalidate(fairy, exc)
    return attempt == 1 and isinstance(exc, psycopg.OperationalError)


def _translated(sql: str, exc: Exception) -> Exception:
    """A psycopg error as SQLAlchemy wraps it, for the same translation as every other
    statement's (``translate_errors``)."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    return DBAPIError.instance(sql, None, exc, psycopg.Error)


@contextlib.contextmanager
def tenant_connection(
    ctl: Control, slug: str, *, actor: str, read_only: bool = False, route: RouteInfo | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """:func:`tenant_session` on a plain psycopg connection of its own (not pooled, rows as
    named tuples, closed on exit), with the route read without SQLAlchemy: for the one-shot
    reads of short commands (``tenant show``'s row counts); rows are plain tuples."""
    from bizosctl.catalog import reads

    found = route if route is not None and route.slug == slug else reads.route(ctl, slug)
    handle = _ready_handle(ctl, found)
    conninfo = handle.login_conninfo(found.database, found.role, found.password)
    with reads.connect(conninfo, what=f"tenant {slug}", named=False) as conn:
        conn.read_only = read_only  # BEGIN READ ONLY
        conn.execute(
            _CONTEXT_PG,
            {"tenant": str(found.tenant_id), "actor": actor, "path": search_path(found)},
        )
        yield conn


def tenant_statement(
    ctl: Control,
    route: RouteInfo,
    *,
    actor: str,
    sql: LiteralString,
    params: Mapping[str, Any],
    before: Sequence[tuple[LiteralString, Mapping[str, Any]]] = (),
) -> tuple[Any, ...] | None:
    """Run one statement (psycopg ``%(name)s`` parameters) in its own transaction in the
    tenant's context, as :func:`tenant_session` would, and return its first row (None: no
    row, or a statement without one).

    BEGIN, the context, the statement and COMMIT are sent together in pipeline mode, on a
    pooled connection that is not pinged at checkout: one round trip instead of six, for the
    LLM gate's ledger writes. A connection found dead (a restarted server) is replaced and
    the statement sent once more, so **the statement must be safe to run twice** (it may
    have committed before the connection died). ``route`` is the caller's (a moved tenant's
    old place refuses writes: a caller that keeps routes reads it again on an error).
    ``before``: statements run first in the same transaction and round trip (the gate's
    settlements of earlier calls ride with a reservation); they must be safe to run twice too.
    """
    import psycopg

    engine = _engine(ctl, route, pre_ping=False)
    context = {"tenant": str(route.tenant_id), "actor": actor, "path": search_path(route)}
    with translate_errors(f"tenant {route.slug}"):
        for attempt in (1, 2):
            raw = engine.raw_connection()
            conn = raw.driver_connection
            assert isinstance(conn, psycopg.Connection)
            try:
                # Not autocommit: the first statement opens the transaction (BEGIN goes with
                # it); conn.transaction() would add a sync, a round trip, on each side.
                with conn.pipeline():
                    conn.execute(_CONTEXT_PG, context)
                    for first_sql, first_params in before:
                        conn.execute(first_sql, first_params)
                    cur = conn.execute(sql, params)
                    conn.commit()
                return cur.fetchone() if cur.description is not None else None
            except psycopg.Error as exc:
                if _dropped_if_dead(engine, raw, exc, attempt):
                    continue
                if not (conn.closed or conn.broken):
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        raw.invalidate(exc)
                raise _translated(sql, exc) from exc
            finally:
                raw.close()
    raise AssertionError("unreachable")  # pragma: no cover
