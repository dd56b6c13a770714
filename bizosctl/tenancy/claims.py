"""Which tenant holds which database object: no role, database or schema serves two.

A new slug's names cannot meet another new slug's (``names``), but tenants created under the
old rule (``x`` and ``x--b``), objects an operator made by hand and leftovers can still hold
them. Creation refuses a slug whose names are taken, rotation refuses a role another tenant
uses, and ``doctor`` reports any name claimed twice (issue 11, item 0).
"""

from __future__ import annotations

import uuid
from collections import defaultdict

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Route, Tenant
from bizosctl.errors import InvalidInput
from bizosctl.tenancy.names import SECOND_ROLE_SUFFIX, login_roles, tenant_names

#: (server, kind, name): kind is "database", "schema" (in the shared database) or "role".
Claim = tuple[str, str, str]


def claims(ctl: Control, *, names: set[str] | None = None) -> dict[Claim, dict[uuid.UUID, str]]:
    """Every object name a live tenant's route holds, with the tenants (id → slug) holding it;
    only the routes that may hold one of ``names`` when given (one indexed catalog query).

    An isolated tenant holds its database and both its login roles (the idle one included:
    the next rotation gives it the tenant's password); a schema-tier tenant its schema.
    """
    stmt = (
        select(Tenant.id, Tenant.slug, Tenant.tier, Route)
        .join(Route, Route.tenant_id == Tenant.id)
        .where(Tenant.status != "deleted")
    )
    if names is not None:
        wanted = sorted(names)
        stmt = stmt.where(
            Route.database.in_(wanted)
            | Route.role.in_(wanted)
            | Route.schema.in_(wanted)
            | (Route.database + SECOND_ROLE_SUFFIX).in_(wanted)
        )
    with ctl.catalog() as s:
        rows = s.execute(stmt).all()
    out: dict[Claim, dict[uuid.UUID, str]] = defaultdict(dict)
    for tid, slug, tier, route in rows:
        if tier == "isolated":
            out[(route.server, "database", route.database)][tid] = slug
            for role in {*login_roles(route.database), route.role}:
                out[(route.server, "role", role)][tid] = slug
        elif tier == "schema":
            out[(route.server, "schema", route.schema)][tid] = slug
    return dict(out)


def _shown(kind: str, name: str) -> str:
    return f"{kind} {name}"


def check_names_free(ctl: Control, conn: Connection, *, slug: str, server: str) -> None:
    """Refuse ``slug`` when any name it would occupy is taken: by a live tenant's route (on any
    server: a move may bring the tenant there) or by an object on ``server``.

    ``conn`` is an admin connection to the shared database of ``server`` (roles and databases
    are cluster-wide catalogs, the schema is looked up there).
    """
    names = tenant_names(slug)
    wanted = {("database", names.database), ("schema", names.schema)} | {
        ("role", r) for r in names.roles
    }
    for (srv, kind, name), holders in sorted(claims(ctl, names=names.all()).items()):
        if (kind, name) in wanted and set(holders.values()) - {slug}:
            other = sorted(set(holders.values()) - {slug})[0]
            raise InvalidInput(
                f"tenant slug {slug!r} is not available: {_shown(kind, name)} already serves "
                f"tenant {other!r} on {srv}"
            )
    row = conn.execute(
        text(
            "SELECT (SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles "
            "        WHERE rolname = ANY(:roles)) AS roles, "
            "(SELECT 1 FROM pg_database WHERE datname = :db) AS db, "
            "(SELECT 1 FROM pg_namespace WHERE nspname = :schema) AS schema"
        ),
        {"roles": list(names.roles), "db": names.database, "schema": names.schema},
    ).one()
    taken = [f"role {r}" for r in (row.roles or "").split(",") if r]
    if row.db:
        taken.append(f"database {names.database}")
    if row.schema:
        taken.append(f"schema {names.schema}")
    if taken:
        raise InvalidInput(
            f"tenant slug {slug!r} is not available: {taken[0]} already exists on {server}; "
            "choose another slug (or drop that object if it is a leftover)"
        )


def check_role_free(
    ctl: Control, conn: Connection, *, role: str, server: str, tenant_id: uuid.UUID, database: str
) -> None:
    """Before a rotation hands ``role`` the password of the tenant ``tenant_id``: no other
    tenant may use it, and it may open no database but ``database``.

    ``conn`` is an admin connection to ``server``.
    """
    holders = claims(ctl, names={role}).get((server, "role", role), {})
    others = sorted(slug for tid, slug in holders.items() if tid != tenant_id)
    if others:
        raise InvalidInput(
            f"role {role} already serves tenant {others[0]!r} on {server}: not rotating onto "
            "it (run `bizosctl doctor`)"
        )
    opened = conn.execute(
        text(
            "SELECT string_agg(d.datname, ', ' ORDER BY d.datname) FROM pg_database d "
            "CROSS JOIN LATERAL aclexplode(d.datacl) a JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE r.rolname = :r AND a.privilege_type = 'CONNECT' AND d.datname <> :d"
        ),
        {"r": role, "d": database},
    ).scalar_one()
    if opened:
        raise InvalidInput(
            f"role {role} can connect to {opened} on {server}: not rotating onto it "
            "(run `bizosctl doctor`)"
        )


def double_claims(ctl: Control) -> list[str]:
    """For ``doctor``: every object name more than one tenant holds, one line each."""
    out = []
    for (server, kind, name), holders in sorted(claims(ctl).items()):
        if len(holders) > 1:
            slugs = ", ".join(sorted(holders.values()))
            out.append(f"{_shown(kind, name)} on {server} serves tenants {slugs}")
    return out
