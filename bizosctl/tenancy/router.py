"""The one door to tenant data: :func:`tenant_session`.

It looks the route up in the catalog, connects as the application's login role (never the
superuser), and sets the tenant, the actor and the search_path with ``set_config(..., true)``,
which is ``SET LOCAL``: the settings die with the transaction, so a pooled connection never
carries one tenant's context into the next request. A read-only session is ``BEGIN READ ONLY``.

The database enforces what the context allows (RLS, the write guard, a suspended tenant reads
nothing); setting the context is the application's job: the login role may set any tenant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control, RouteInfo
from bizosctl.db.engines import get_engine, memo_engine, translate_errors
from bizosctl.errors import TenantSuspended

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from bizosctl.providers.local import ServerHandle

_CONTEXT_SQL = text(
    "SELECT set_config('bizos.tenant_id', :tenant, true),"
    " set_config('bizos.actor', :actor, true),"
    " set_config('search_path', :path, true)"
)


def _engine(handle: ServerHandle, route: RouteInfo, read_only: bool) -> Engine:
    engine = get_engine(handle.login_url(route.database, route.role, route.password))
    if read_only:
        # psycopg then opens the transaction with BEGIN READ ONLY (reset when pooled back).
        engine = engine.execution_options(postgresql_readonly=True)
    return engine


def search_path(route: RouteInfo) -> str:
    return f'"{route.schema}", public'


@contextlib.contextmanager
def tenant_session(
    ctl: Control, slug: str, *, actor: str, read_only: bool = False, route: RouteInfo | None = None
) -> Iterator[Session]:
    """A session inside one transaction in ``slug``'s context; committed on success.
    ``route``: the tenant's route as the caller just read it (the API reads it once per
    request, with the credentials); looked up otherwise."""
    if route is None or route.slug != slug:
        route = ctl.route(slug)
    if route.status == "suspended":
        # The database refuses it too (bizos_tenant() is NULL): this is the clear message.
        raise TenantSuspended(f"tenant {slug!r} is suspended: reads and writes are refused")
    handle = ctl.server(route.server)
    handle.ensure_ready()
    engine = memo_engine(
        ("tenant", route.server, handle.url, route.database, route.role, route.password, read_only),
        lambda: _engine(handle, route, read_only),
    )
    with translate_errors(f"tenant {slug}"), Session(engine) as session, session.begin():
        # One round trip: SET LOCAL of the context (READ ONLY came with the BEGIN).
        session.execute(
            _CONTEXT_SQL,
            {
                "tenant": str(route.tenant_id),
                "actor": actor,
                "path": search_path(route),
            },
        )
        yield session
