"""The catalog and target reads of the short commands, in plain psycopg (issue 12, item 14).

``tenant list``, ``tenant show`` and ``schema status`` must start about as fast as
``bizosctl --help``: importing SQLAlchemy and the ORM models alone costs more than that. Their
reads are here, as SQL text run on a psycopg connection, and so are the reads the rest of the
code shares with them (a server's row, the keyring, kept move sources, migration targets and
their revisions): every statement has one home.

:func:`catalog` checks the catalog's revision as :attr:`Control.catalog_engine` does: once per
process, one query, against the head read from the revision files (``fast_head``, no Alembic).
SQLAlchemy is still imported where a read must change something or parse a URL: a catalog not
at this code's head (upgraded through the engine), a keyring that loading changes (see
``Control._load_read_only``), a server that is not embedded (its URL, in ``admin_conninfo``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bizosctl.catalog.control import CATALOG_DB, ROUTE_COLUMNS, ROUTE_JOIN
from bizosctl.db.engines import translate_errors
from bizosctl.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    import psycopg

    from bizosctl.catalog.control import Control, RouteInfo

#: Every connection these reads open gives up after this long (as ``get_engine``'s do).
CONNECT_TIMEOUT = "5"


@contextlib.contextmanager
def connect(
    conninfo: dict[str, str], *, what: str, named: bool = True
) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection in one transaction, committed on success and closed on exit;
    driver errors become BizosErrors named by ``what``. Rows are named tuples (``named``) or
    plain ones (a statement whose columns share a name)."""
    import psycopg
    from psycopg.rows import namedtuple_row, tuple_row

    params: dict[str, Any] = {**conninfo, "connect_timeout": CONNECT_TIMEOUT}
    factory: Any = namedtuple_row if named else tuple_row
    with translate_errors(what), psycopg.connect(**params, row_factory=factory) as conn:
        yield conn


@contextlib.contextmanager
def catalog(ctl: Control) -> Iterator[psycopg.Connection[Any]]:
    """A catalog connection for reads, as ``ctl.catalog()`` gives a session: the home is
    initialised, its server runs and the catalog is at this code's head."""
    ctl.require_initialized()
    ctl.home_cluster.ensure_running()
    with connect(ctl.home_cluster.conninfo(CATALOG_DB), what="catalog") as conn:
        if not ctl._catalog_at_head:
            _check_revision(ctl, conn)
        yield conn


def _check_revision(ctl: Control, conn: psycopg.Connection[Any]) -> None:
    """Upgrade a catalog behind this code's head (through the engine), as
    ``Control._upgrade_catalog`` does; one query when it is at head."""
    import psycopg

    from bizosctl.db.migrate import head

    try:
        with conn.transaction():
            revisions = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
    except psycopg.errors.UndefinedTable:
        revisions = []  # no version table: nothing to upgrade (``current_revision`` None)
    if len(revisions) > 1:
        raise InvalidInput(f"alembic_version holds several heads: {', '.join(revisions)}")
    if revisions and revisions[0] != head("control"):
        ctl.catalog_engine  # noqa: B018 (upgrades the catalog)
    ctl._catalog_at_head = True


# -- regions and tenants ----------------------------------------------------------------------
def require_region(conn: psycopg.Connection[Any], name: str) -> None:
    """NotFound (exit 3, like every unknown named thing) unless region ``name`` exists."""
    known = [r.name for r in conn.execute("SELECT name FROM regions ORDER BY name")]
    if name not in known:
        raise NotFound(
            f"unknown region {name!r} (known: {', '.join(known) or 'none'}); "
            "add it with `region add`"
        )


def region_check(ctl: Control, name: str) -> None:
    """:func:`require_region` on a connection of its own."""
    with catalog(ctl) as conn:
        require_region(conn, name)


#: A tenant with its route (the route may be missing: a tenant still provisioning).
_TENANT_SQL = (
    "SELECT t.id, t.slug, t.name, t.tier, t.region, t.status, t.status_reason, t.created_at, "
    "t.time_zone, r.server, r.database, r.schema "
    "FROM tenants AS t LEFT OUTER JOIN routes AS r ON r.tenant_id = t.id"
)


def tenants(
    conn: psycopg.Connection[Any],
    *,
    region: str | None,
    tier: str | None,
    status: str | None,
    include_deleted: bool,
) -> list[Any]:
    """Tenants with their routes, by slug; not deleted ones unless ``include_deleted`` (or
    ``status='deleted'``)."""
    where: list[str] = []
    params: dict[str, str] = {}
    for column, value in (("region", region), ("tier", tier), ("status", status)):
        if value:
            where.append(f"t.{column} = %({column})s")
            params[column] = value
    if not status and not include_deleted:
        where.append("t.status <> 'deleted'")
    sql = _TENANT_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t.slug"
    return conn.execute(sql.encode(), params).fetchall()


def live_tenant(conn: psycopg.Connection[Any], slug: str) -> Any:
    """The live (not deleted) tenant ``slug`` with its route, or None."""
    return conn.execute(
        _TENANT_SQL + " WHERE t.slug = %(slug)s AND t.status <> 'deleted'", {"slug": slug}
    ).fetchone()


def route_sql(slug_param: str) -> str:
    """The route of the live tenant whose slug is the bind parameter ``slug_param`` (written
    in the caller's style: ``:slug`` for SQLAlchemy, ``%(slug)s`` for psycopg)."""
    return (
        f"SELECT {ROUTE_COLUMNS} FROM {ROUTE_JOIN} "
        f"WHERE t.slug = {slug_param} AND t.status <> 'deleted'"
    )


def route_row(conn: psycopg.Connection[Any], slug: str) -> Any:
    """The row ``Control.route_from_row`` reads (None: no live tenant ``slug``)."""
    return conn.execute(route_sql("%(slug)s").encode(), {"slug": slug}).fetchone()


def route(ctl: Control, slug: str) -> RouteInfo:
    """``ctl.route(slug)`` on a plain connection of its own."""
    with catalog(ctl) as conn:
        row = route_row(conn, slug)
    if row is None:
        raise NotFound(f"no tenant named {slug!r}")
    return ctl.route_from_row(row)


# -- servers and keys -------------------------------------------------------------------------
def server_row(ctl: Control, name: str) -> Any:
    """Server ``name``'s catalog row, with the columns ``Control.handle_for`` reads."""
    with catalog(ctl) as conn:
        row = conn.execute(
            "SELECT name, region, provider, port, url_enc, provider_region, provider_org, "
            "project_id, parent FROM servers WHERE name = %(name)s",
            {"name": name},
        ).fetchone()
    if row is None:
        raise NotFound(f"no server named {name!r}")
    return row


def keyring_entries(ctl: Control, purposes: tuple[str, ...]) -> list[Any] | None:
    """Every keyring row, for ``Keyring.load_entries``; None when loading must change the
    keyring first (a purpose of ``purposes`` without a key, or a key due to be retired or
    destroyed: see ``Keyring.ensure`` and ``Keyring.load``)."""
    from bizosctl.security.datakeys import DESTROY_AT_RETIREMENT

    # ``due``: the conditions of ``keyring._due_to_retire()`` or ``_due_to_destroy(None)``
    with catalog(ctl) as conn:
        rows = conn.execute(
            "SELECT purpose, version, wrapped_key, is_primary, retired_at, master_id, "
            "retire_after, binds_rows, demoted_at, destroyed_at, "
            "(retired_at IS NULL AND NOT is_primary AND retire_after IS NOT NULL "
            "AND retire_after <= now()) "
            "OR (retired_at IS NOT NULL AND destroyed_at IS NULL AND NOT is_primary "
            "AND purpose = ANY(%(at_once)s)) AS due FROM keyring",
            {"at_once": list(DESTROY_AT_RETIREMENT)},
        ).fetchall()
    if any(r.due for r in rows) or not set(purposes) <= {r.purpose for r in rows}:
        return None
    return rows


# -- tenant moves -----------------------------------------------------------------------------
def finished_moves(conn: psycopg.Connection[Any], slug: str | None) -> list[Any]:
    """Done ``tenant.move`` operations of live tenants (of ``slug`` only, if given), oldest
    first, with the tenant's id and current place."""
    params: dict[str, str] = {}
    one = ""
    if slug is not None:
        one = " AND o.target = %(slug)s"
        params["slug"] = slug
    return conn.execute(
        (
            "SELECT o.id, o.params, t.slug, t.id AS tenant_id, r.server, r.database, "
            "r.schema FROM operations AS o JOIN tenants AS t ON t.slug = o.target "
            "JOIN routes AS r ON r.tenant_id = t.id WHERE o.kind = 'tenant.move' "
            f"AND o.status = 'done' AND t.status <> 'deleted'{one} ORDER BY o.started_at"
        ).encode(),
        params,
    ).fetchall()


# -- migration targets ------------------------------------------------------------------------
def target_rows(ctl: Control) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """What ``list_targets`` works from, in one transaction: (servers by name; tenants that
    have targets, with their routes, by slug; recorded target states; running moves)."""
    with catalog(ctl) as conn:
        servers = conn.execute(
            "SELECT name, region, provider, app_role FROM servers ORDER BY name"
        ).fetchall()
        tenant_routes = conn.execute(
            "SELECT t.slug, t.tier, t.region, r.server, r.database, r.schema, r.role "
            "FROM tenants AS t JOIN routes AS r ON r.tenant_id = t.id "
            "WHERE t.status NOT IN ('deleted', 'provisioning', 'deleting') ORDER BY t.slug"
        ).fetchall()
        recorded = conn.execute(
            "SELECT server, database, schema, status, error FROM schema_targets"
        ).fetchall()
        moves = conn.execute(
            "SELECT id, target, params FROM operations "
            "WHERE kind = 'tenant.move' AND status = 'running'"
        ).fetchall()
    return servers, tenant_routes, recorded, moves


def _revisions_sql(schemas: list[str]) -> str:
    """One statement reading every schema's alembic_version (identifiers quoted)."""
    parts = []
    for schema in schemas:
        ident = '"' + schema.replace('"', '""') + '"'
        literal = "'" + schema.replace("'", "''") + "'"
        parts.append(
            f"SELECT {literal} AS schema, max(version_num) AS revision FROM {ident}.alembic_version"
        )
    return " UNION ALL ".join(parts)


def schema_revisions(
    conninfo: dict[str, str], schemas: list[str], *, sizes: bool, what: str
) -> tuple[dict[str, str], dict[str, int]]:
    """In one database: the revision of each of ``schemas`` that has a version table, and
    (with ``sizes``) their sizes in bytes; a couple of queries, whatever their number."""
    with connect(conninfo, what=what) as conn:
        # Which selected schemas have a version table: one index probe per schema.
        versioned = [
            r[0]
            for r in conn.execute(
                "SELECT n.nspname FROM pg_namespace n JOIN pg_class c "
                "ON c.relnamespace = n.oid AND c.relname = 'alembic_version' "
                "AND c.relkind = 'r' WHERE n.nspname = ANY(%(schemas)s)",
                {"schemas": schemas},
            )
        ]
        revisions = (
            {r[0]: r[1] for r in conn.execute(_revisions_sql(versioned).encode())}
            if versioned
            else {}
        )
        size_of: dict[str, int] = {}
        if sizes:
            # one grouped pass over pg_class, not one scan per schema
            size_of = {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT n.nspname, sum(pg_total_relation_size(c.oid))::bigint "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = 'r' AND n.nspname = ANY(%(schemas)s) GROUP BY n.nspname",
                    {"schemas": schemas},
                )
            }
    return revisions, size_of
