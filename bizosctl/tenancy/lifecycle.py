"""Reading tenants, changing their status, and running SQL in a tenant's context."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from pydantic import Field

from bizosctl.catalog.control import Control, RouteInfo
from bizosctl.catalog.schemas import QueryResult, TenantDetail, TenantPublic
from bizosctl.errors import InvalidInput, NotFound
from bizosctl.plans import Plan
from bizosctl.tenancy.names import check_region_name, check_slug, check_tier, q
from bizosctl.tenancy.statement import check_statement
from bizosctl.tenancy.zones import check_zone, region_zone_name

STATUSES = ("provisioning", "active", "read_only", "suspended", "moving", "deleting")
LOCK_STATUSES = ("read_only", "suspended")


def _public(row: Any) -> dict[str, Any]:
    """A tenant's public fields from a row of ``bizosctl.catalog.reads.tenants``."""
    return {
        "id": row.id,
        "slug": row.slug,
        "name": row.name,
        "tier": row.tier,
        "region": row.region,
        "status": row.status,
        "server": row.server,
        "database": row.database,
        "schema_": row.schema,
        "created_at": row.created_at,
        "time_zone": row.time_zone or region_zone_name(row.region),
        "time_zone_is_default": row.time_zone is None,
    }


def list_tenants(
    ctl: Control,
    *,
    region: str | None = None,
    tier: str | None = None,
    status: str | None = None,
    include_deleted: bool = False,
) -> list[TenantPublic]:
    if region is not None:
        check_region_name(region)
    if tier is not None:
        check_tier(tier)
    if status is not None and status not in (*STATUSES, "deleted"):
        raise InvalidInput(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
    from bizosctl.catalog import reads

    with reads.catalog(ctl) as conn:
        if region:
            reads.require_region(conn, region)
        rows = reads.tenants(
            conn, region=region, tier=tier, status=status, include_deleted=include_deleted
        )
    return [TenantPublic(**_public(r)) for r in rows]


def get_tenant(ctl: Control, slug: str, *, row_counts: bool = True) -> TenantDetail:
    from bizosctl.catalog import reads

    check_slug(slug)
    # the tenant, its route and its finished moves: one catalog connection
    with reads.catalog(ctl) as conn:
        row = reads.live_tenant(conn, slug)
        if row is None:
            raise NotFound(f"no tenant named {slug!r}")
        # A suspended tenant's rows are refused to everyone, show included.
        counted = row_counts and row.server is not None
        counted = counted and row.status not in ("provisioning", "suspended")
        route_row = reads.route_row(conn, slug) if counted else None
        moves = reads.finished_moves(conn, slug) if row_counts else []
    detail = TenantDetail(**_public(row), status_reason=row.status_reason)
    if route_row is not None:
        detail.row_counts = count_rows(ctl, slug, route=ctl.route_from_row(route_row))
    if row_counts:
        from bizosctl.moves.kept import kept_sources

        detail.kept_sources = [k.public() for k in kept_sources(ctl, slug, moves=moves)]
    return detail


def count_rows(ctl: Control, slug: str, *, route: RouteInfo | None = None) -> dict[str, int]:
    """The tenant's rows per table, counted through RLS in its own context (``route``: as
    the caller just read it)."""
    from bizosctl.tenancy.router import tenant_connection
    from tenant_schema import TABLE_NAMES

    union = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {q(t)}" for t in TABLE_NAMES)
    with tenant_connection(ctl, slug, actor="bizosctl:show", read_only=True, route=route) as conn:
        return {t: int(n) for t, n in conn.execute(union.encode())}


def set_time_zone(
    ctl: Control, slug: str, *, time_zone: str | None, dry_run: bool = False
) -> dict[str, Any]:
    """Set (or with None clear, back to its region's default) the zone of a tenant's "today"
    and 05:00. A running scheduler picks it up at its next refresh. Returns
    ``{"slug", "from", "to", "default", "dry_run"}``."""
    from sqlalchemy import select

    from bizosctl.catalog.models import Tenant

    check_slug(slug)
    if time_zone is not None:
        time_zone = str(check_zone(time_zone).key)
    with ctl.catalog() as s:
        tenant = s.execute(
            select(Tenant).where(Tenant.slug == slug, Tenant.status != "deleted").with_for_update()
        ).scalar_one_or_none()
        if tenant is None:
            raise NotFound(f"no tenant named {slug!r}")
        before = tenant.time_zone or region_zone_name(tenant.region)
        after = time_zone or region_zone_name(tenant.region)
        if not dry_run:
            tenant.time_zone = time_zone
    return {
        "slug": slug,
        "from": before,
        "to": after,
        "default": time_zone is None,
        "dry_run": dry_run,
    }


class StatusPlan(Plan):
    """``tenant lock|unlock --dry-run``: the status it would leave and the one it would set."""

    slug: str
    from_: str = Field(serialization_alias="from")
    to: str


def _status_route(ctl: Control, slug: str, status: str) -> RouteInfo:
    """The route of a tenant whose status may become ``status`` (InvalidInput otherwise)."""
    check_slug(slug)
    if status not in ("active", *LOCK_STATUSES):
        raise InvalidInput(f"cannot set status {status!r}: choose active, read_only or suspended")
    route = ctl.route(slug)
    if route.status not in ("active", *LOCK_STATUSES):
        raise InvalidInput(f"tenant {slug!r} is {route.status}; its status cannot change now")
    return route


def plan_status(ctl: Control, slug: str, *, status: str) -> StatusPlan:
    """What :func:`set_status` would change, refusing what it refuses; changes nothing."""
    route = _status_route(ctl, slug, status)
    return StatusPlan(slug=slug, from_=route.status, to=status)


def set_status(ctl: Control, slug: str, *, status: str, reason: str | None = None) -> TenantDetail:
    """Lock (read_only / suspended) or unlock (active) a tenant, enforced in its database."""
    from sqlalchemy import text

    from bizosctl.catalog.models import Tenant
    from bizosctl.db.engines import get_engine, translate_errors

    route = _status_route(ctl, slug, status)
    handle = ctl.server(route.server)
    handle.ensure_ready()
    # The tenant's database first: it is what enforces the status.
    with (
        translate_errors(f"tenant {slug}"),
        get_engine(handle.admin_url(route.database), pooled=False).begin() as conn,
    ):
        conn.execute(text(f"SET LOCAL search_path TO {q(route.schema)}, public"))
        actor = "bizosctl:tenant.unlock" if status == "active" else "bizosctl:tenant.lock"
        conn.execute(text("SELECT set_config('bizos.actor', :a, true)"), {"a": actor})
        conn.execute(
            text("UPDATE tenant_state SET status = :s, updated_at = now() WHERE tenant_id = :t"),
            {"s": status, "t": route.tenant_id},
        )
    from bizosctl.security.keycache import auth_changed

    with ctl.catalog() as s:
        tenant = s.get(Tenant, route.tenant_id)
        assert tenant is not None
        tenant.status = status
        tenant.status_reason = reason if status != "active" else None
        auth_changed(s, tenant_id=route.tenant_id)
    return get_tenant(ctl, slug, row_counts=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def run_query(
    ctl: Control,
    slug: str,
    sql: str,
    *,
    write: bool = False,
    limit: int = 1000,
    rollback: bool = False,
) -> QueryResult:
    """Run one SQL statement as the application role in the tenant's context.

    The statement is checked first (:func:`bizosctl.tenancy.statement.check_statement`: no
    transaction control, settings, ``set_config`` or SQL-running functions), then sent alone
    with the extended protocol (a second statement is a server error), in a ``BEGIN READ
    ONLY`` transaction unless ``write``. Afterwards the context must be the one we set: if the
    statement changed it, the transaction rolls back and no row is returned.

    Args:
        slug: the tenant.
        sql: one statement, sent as written (no bind-parameter parsing of ':name' or '%').
        write: allow writes (a read-write transaction).
        limit: at most this many rows are returned; ``truncated`` says when there were more.
        rollback: run it in a savepoint that is rolled back (``--dry-run``): the result shows
            what it would return and how many rows it would change, and nothing changes
            (except sequences: PostgreSQL never rolls back ``nextval``).
    """
    import psycopg
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text

    from bizosctl.tenancy.router import search_path, tenant_session

    check_slug(slug)
    if not sql.strip():
        raise InvalidInput("the SQL statement is empty")
    check_statement(sql)
    actor = "bizosctl:query"
    with tenant_session(ctl, slug, actor=actor, read_only=not write) as s:
        route = ctl.route(slug)
        savepoint = s.begin_nested() if rollback else None
        raw = s.connection().connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        try:
            try:
                with raw.cursor() as cur:
                    # Pipeline mode always uses the extended protocol: exactly one statement.
                    with raw.pipeline():
                        cur.execute(sql.encode())
                    columns = [d.name for d in cur.description] if cur.description else []
                    # one more than the limit: to say whether rows were cut
                    fetched = cur.fetchmany(limit + 1) if columns else []
                    rowcount = cur.rowcount
            except psycopg.Error as exc:
                if "cannot insert multiple commands" in str(exc):
                    raise InvalidInput("tenant query runs exactly one statement") from exc
                raise sa_exc.DBAPIError.instance(None, None, exc, psycopg.Error) from exc
            after = s.execute(
                text(
                    "SELECT current_setting('bizos.tenant_id', true),"
                    " current_setting('bizos.actor', true), current_setting('search_path')"
                )
            ).one()
            if tuple(after) != (str(route.tenant_id), actor, search_path(route)):
                # Raising rolls the transaction back; the rows read under another context are
                # dropped with it.
                raise InvalidInput("the statement changed the tenant context: rolled back")
        finally:
            if savepoint is not None and savepoint.is_active:
                savepoint.rollback()
        if columns:
            rows = [[_jsonable(v) for v in row] for row in fetched[:limit]]
            return QueryResult(
                columns=columns,
                rows=rows,
                rowcount=len(rows),
                read_only=not write,
                truncated=len(fetched) > limit,
            )
        return QueryResult(columns=[], rows=[], rowcount=rowcount, read_only=not write)
