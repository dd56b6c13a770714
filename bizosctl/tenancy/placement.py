"""Where a tenant's data lives: one :class:`Placement` (tier, region, server, database, schema,
login role), the three-tier rule that places a new or moved tenant, and how to drop its data.

Provisioning, moves (their source and target), kept sources, deletion and schema sync all
describe a tenant's place with this one type. The drop is written once: :meth:`Placement.
drop_plan` is what a dry run prints, and :meth:`Placement.drop` executes those same statements.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from bizosctl.db.engines import dispose_all, get_engine, translate_errors
from bizosctl.tenancy.names import SHARED_DB, SHARED_SCHEMA, login_roles, q, tenant_names

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control, RouteInfo


@dataclass
class DropStep:
    """One step of a drop: what it does, and its statements (in order)."""

    name: str
    sql: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Placement:
    """Where a tenant's data lives (or will live: a move's target)."""

    tier: str  # shared | schema | isolated
    region: str
    server: str
    database: str
    schema: str
    role: str  # the login role the application uses there
    #: The sealed password of an isolated tenant's own login role, when it is not in the
    #: tenant's route yet (a move's target carries it until the switch).
    password_enc: str | None = None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Placement:
        """A placement from its stored form (a move's ``source``/``target`` params): unknown
        keys are ignored, so older and newer documents load."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def of_route(cls, route: RouteInfo) -> Placement:
        return cls(route.tier, route.region, route.server, route.database, route.schema, route.role)

    @property
    def key(self) -> tuple[str, str, str]:
        """(server, database, schema): the migration target the tenant's tables are in."""
        return (self.server, self.database, self.schema)

    def stored(self) -> dict[str, Any]:
        """The form kept in operation params (with ``password_enc``)."""
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """The form shown to operators (no sealed password)."""
        d = asdict(self)
        d.pop("password_enc")
        return d

    def with_password(self, password_enc: str | None) -> Placement:
        return replace(self, password_enc=password_enc)

    # -- dropping a tenant's data here ---------------------------------------------------------
    def drop_plan(self, ctl: Control, tenant_id: uuid.UUID) -> list[DropStep]:
        """The statements :meth:`drop` runs, in order (the tenant id is inline: a uuid)."""
        from tenant_schema import TENANT_TABLES

        handle = ctl.server(self.server)
        if self.tier == "isolated" and handle.is_cloud:
            from bizosctl.providers.cloud import drop_plan_line

            return [DropStep(drop_plan_line(handle))]
        if self.tier == "isolated":
            roles = own_login_roles(
                ctl, server=self.server, database=self.database, tenant_id=tenant_id
            )
            return [
                DropStep(
                    f"drop database {self.database} on {self.server}",
                    [f"DROP DATABASE IF EXISTS {q(self.database)} WITH (FORCE)"],
                ),
                DropStep(
                    f"drop login roles of {self.database}",
                    [f"DROP ROLE IF EXISTS {q(role)}" for role in roles],
                ),
            ]
        if self.tier == "schema":
            return [
                DropStep(
                    f"drop schema {self.schema} in {self.database}",
                    [f"DROP SCHEMA IF EXISTS {q(self.schema)} CASCADE"],
                )
            ]
        tid = uuid.UUID(str(tenant_id))  # a uuid, so safe inline
        return [
            DropStep(
                f"delete the tenant's rows in {self.database}.{self.schema}",
                [
                    f"DELETE FROM {q(self.schema)}.{q(t)} WHERE tenant_id = '{tid}'"
                    for t in reversed(TENANT_TABLES)
                ],
            )
        ]

    def drop_summary(self, ctl: Control, tenant_id: uuid.UUID) -> tuple[str, list[str]]:
        """The drop plan as one line and a flat list of statements (moves' plans show it)."""
        plan = self.drop_plan(ctl, tenant_id)
        if self.tier == "isolated" and ctl.server(self.server).is_cloud:
            action = plan[0].name
        elif self.tier == "isolated":
            action = f"drop database {self.database} and its login roles on {self.server}"
        else:
            action = f"{plan[0].name} on {self.server}"
        return action, [stmt for step in plan for stmt in step.sql]

    def drop(self, ctl: Control, tenant_id: uuid.UUID) -> None:
        """Remove the tenant's data here (a database and its own login roles, a schema, or its
        rows in a shared schema): the statements of :meth:`drop_plan`. Idempotent."""
        from sqlalchemy import text

        handle = ctl.server(self.server)
        if self.tier == "isolated" and handle.is_cloud:
            from bizosctl.providers.cloud import drop_projects, forget_project_server

            dispose_all(host_contains=f"/{self.database}?")
            drop_projects(ctl, handle, tenant_id)
            with ctl.catalog() as s:
                forget_project_server(s, self.server)
            return
        plan = self.drop_plan(ctl, tenant_id)
        handle.ensure_ready()
        with translate_errors(f"server {self.server}"):
            if self.tier == "isolated":
                dispose_all(host_contains=f"/{self.database}?")
                admin = get_engine(handle.admin_url("postgres"), pooled=False)
                with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    for step in plan:
                        for stmt in step.sql:
                            conn.execute(text(stmt))
                return
            with get_engine(handle.admin_url(self.database), pooled=False).begin() as conn:
                if self.tier == "shared":
                    # Triggers off: deleting a tenant is not an audited change of its data.
                    conn.execute(text("SET LOCAL session_replication_role = replica"))
                for step in plan:
                    for stmt in step.sql:
                        conn.execute(text(stmt))


def placement_for(
    ctl: Control, *, slug: str, tier: str, region: str, server: str | None = None
) -> Placement:
    """Where a tenant ``slug`` of ``tier`` lives in ``region`` (on ``server``, by default the
    region's default server): the three-tier rule, for a new tenant and a move's target."""
    from bizosctl.security.dbpasswords import shared_login
    from bizosctl.tenancy.regions import default_server

    if server is None:
        server = default_server(ctl, region)
    names = tenant_names(slug)
    if tier == "shared":
        return Placement(tier, region, server, SHARED_DB, SHARED_SCHEMA, shared_login(ctl, server))
    if tier == "schema":
        return Placement(tier, region, server, SHARED_DB, names.schema, shared_login(ctl, server))
    return Placement(tier, region, server, names.database, names.schema, names.roles[0])


def own_login_roles(ctl: Control, *, server: str, database: str, tenant_id: uuid.UUID) -> list[str]:
    """The login roles of an isolated tenant that no other tenant uses (a tenant made under
    the old naming, ``x--b``, lives on the second role of ``x``): the ones to drop with it."""
    from bizosctl.tenancy.claims import claims

    held = claims(ctl, names=set(login_roles(database)))
    return [
        role
        for role in login_roles(database)
        if not set(held.get((server, "role", role), {})) - {tenant_id}
    ]
