"""Creating and deleting tenants in each tier, as checkpointed operations.

``create_tenant`` first commits the tenant row (status ``provisioning``) with its route and an
operation; a unique index on live slugs makes one of two concurrent creators lose cleanly.
Each later step is idempotent and checkpointed, so running the same command again after a
crash finishes the tenant; ``delete_tenant`` removes what a half-made tenant left behind.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Route, Tenant
from bizosctl.catalog.operations import OperationRun, create_operation, is_alive
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.db.migrate import upgrade
from bizosctl.errors import AlreadyExists, Busy, InvalidInput, NotFound
from bizosctl.faults import crash_point
from bizosctl.security.fields import blind_index, normalize_email
from bizosctl.tenancy.names import (
    SHARED_DB,
    SHARED_LOGIN,
    SHARED_SCHEMA,
    check_slug,
    check_tier,
    tenant_ident,
)
from bizosctl.tenancy.regions import default_server, region_exists
from bizosctl.tenancy.servers import (
    ensure_database,
    new_password,
    prepare_schema,
    q,
    set_login_role,
)
from tenant_schema import TENANT_TABLES
from tenant_schema.ddl import APP_GROUP, OWNER_ROLE


@dataclass
class Placement:
    server: str
    database: str
    schema: str
    role: str


@dataclass
class PlanStep:
    name: str
    sql: list[str] = field(default_factory=list)


def placement_for(ctl: Control, *, slug: str, tier: str, region: str) -> Placement:
    server = default_server(ctl, region)
    if tier == "shared":
        return Placement(server, SHARED_DB, SHARED_SCHEMA, SHARED_LOGIN)
    ident = tenant_ident(slug)
    if tier == "schema":
        return Placement(server, SHARED_DB, ident, SHARED_LOGIN)
    return Placement(server, ident, ident, ident)


def _validate(ctl: Control, *, slug: str, tier: str, region: str) -> None:
    check_slug(slug)
    check_tier(tier)
    if not region_exists(ctl, region):
        from bizosctl.tenancy.regions import list_regions

        known = ", ".join(r.name for r in list_regions(ctl)) or "none"
        raise InvalidInput(f"unknown region {region!r} (known: {known}); add it with `region add`")


def create_tenant(
    ctl: Control,
    *,
    slug: str,
    name: str,
    tier: str,
    region: str,
    owner_email: str | None = None,
) -> Tenant:
    """Create a tenant (or finish one whose creation was interrupted). Returns the row."""
    _validate(ctl, slug=slug, tier=tier, region=region)
    if not name.strip():
        raise InvalidInput("the tenant name must not be empty")
    with ctl.catalog() as s:
        existing = s.execute(
            select(Tenant).where(Tenant.slug == slug, Tenant.status != "deleted")
        ).scalar_one_or_none()
        if existing is not None:
            s.expunge(existing)
    if existing is not None:
        if existing.status != "provisioning":
            raise AlreadyExists(f"tenant {slug!r} already exists")
        if (existing.tier, existing.region) != (tier, region):
            raise InvalidInput(
                f"tenant {slug!r} is half-created as {existing.tier} in {existing.region}: run "
                f"the same command with those values to finish it, or `tenant delete {slug} --yes`"
            )
        assert existing.operation_id is not None
        if is_alive(ctl, existing.operation_id):
            raise Busy(f"tenant {slug!r} is being created by another process right now")
        tenant_id, op_id = existing.id, existing.operation_id
    else:
        tenant_id, op_id = _register(
            ctl, slug=slug, name=name, tier=tier, region=region, owner_email=owner_email
        )
    with OperationRun(ctl, op_id) as run:
        _provision(ctl, run, tenant_id=tenant_id, slug=slug, tier=tier)
        with ctl.catalog() as s:
            tenant = s.get(Tenant, tenant_id)
            assert tenant is not None
            tenant.status = "active"
            s.flush()
            s.expunge(tenant)
        run.finish("done")
    return tenant


def _register(
    ctl: Control, *, slug: str, name: str, tier: str, region: str, owner_email: str | None
) -> tuple[uuid.UUID, uuid.UUID]:
    place = placement_for(ctl, slug=slug, tier=tier, region=region)
    tenant_id, op_id = uuid.uuid4(), uuid.uuid4()
    password_enc = None
    if tier == "isolated":
        password_enc = ctl.seal(new_password(), context=f"role:{place.role}")
    bidx = blind_index(ctl.keyring, normalize_email(owner_email)) if owner_email else None
    create_operation(
        ctl, kind="tenant.create", target=slug, op_id=op_id, params={"tier": tier, "region": region}
    )
    try:
        with ctl.catalog() as s:
            s.add(
                Tenant(
                    id=tenant_id,
                    slug=slug,
                    name=name,
                    tier=tier,
                    region=region,
                    status="provisioning",
                    operation_id=op_id,
                    owner_email_bidx=bidx,
                )
            )
            s.flush()
            s.add(
                Route(
                    tenant_id=tenant_id,
                    server=place.server,
                    database=place.database,
                    schema=place.schema,
                    role=place.role,
                    password_enc=password_enc,
                )
            )
    except IntegrityError as exc:
        with ctl.catalog() as s:
            s.execute(
                text(
                    "UPDATE operations SET status='failed', error=:e, finished_at=now() "
                    "WHERE id=:id"
                ),
                {"e": "slug taken by a concurrent create", "id": op_id},
            )
        raise AlreadyExists(f"tenant {slug!r} already exists (created concurrently)") from exc
    crash_point("tenant.create.registered")
    return tenant_id, op_id


def _provision(
    ctl: Control, run: OperationRun, *, tenant_id: uuid.UUID, slug: str, tier: str
) -> None:
    route = ctl.route(slug)
    handle = ctl.server(route.server)
    handle.ensure_ready()
    with translate_errors(f"provisioning {slug}"):
        if tier == "isolated" and "database" not in run.completed:
            admin = get_engine(handle.admin_url("postgres"), pooled=False)
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                set_login_role(conn, route.role, route.password, member_of=APP_GROUP)
                ensure_database(conn, route.database, owner_login=route.role)
            run.step("database")
            crash_point("tenant.create.database")
        engine = get_engine(handle.admin_url(route.database), pooled=False)
        if tier != "shared" and "migrate" not in run.completed:
            with engine.begin() as conn:
                prepare_schema(conn, route.schema)
                upgrade(conn, "tenant", schema=route.schema, owner_role=OWNER_ROLE)
            run.step("migrate")
            crash_point("tenant.create.migrated")
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL search_path TO {q(route.schema)}, public"))
            conn.execute(
                text(
                    "INSERT INTO tenant_state (tenant_id, slug, status) VALUES (:t, :s, 'active') "
                    "ON CONFLICT (tenant_id) DO UPDATE SET status = 'active', updated_at = now()"
                ),
                {"t": tenant_id, "s": slug},
            )
            conn.execute(
                text("INSERT INTO settings (tenant_id) VALUES (:t) ON CONFLICT DO NOTHING"),
                {"t": tenant_id},
            )
        run.step("state")
        crash_point("tenant.create.state")


# -- deletion -------------------------------------------------------------------------------
def delete_plan(ctl: Control, slug: str) -> list[PlanStep]:
    route = ctl.route(slug)
    schema = q(route.schema)
    if route.tier == "shared":
        sql = [
            f"DELETE FROM {schema}.{q(t)} WHERE tenant_id = '{route.tenant_id}'"
            for t in reversed(TENANT_TABLES)
        ]
        return [PlanStep(f"delete the tenant's rows in {route.database}.{route.schema}", sql)]
    if route.tier == "schema":
        return [
            PlanStep(
                f"drop schema {route.schema} in {route.database}",
                [f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
            )
        ]
    return [
        PlanStep(
            f"drop database {route.database} on {route.server}",
            [f"DROP DATABASE IF EXISTS {q(route.database)} WITH (FORCE)"],
        ),
        PlanStep(f"drop login role {route.role}", [f"DROP ROLE IF EXISTS {q(route.role)}"]),
    ]


def delete_tenant(ctl: Control, slug: str) -> dict[str, Any]:
    """Drop the tenant's data everywhere; the catalog keeps the tenant row as ``deleted``."""
    check_slug(slug)
    route = ctl.route(slug)
    with ctl.catalog() as s:
        tenant = s.get(Tenant, route.tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant named {slug!r}")
        if (
            tenant.status == "provisioning"
            and tenant.operation_id
            and is_alive(ctl, tenant.operation_id)
        ):
            raise Busy(f"tenant {slug!r} is being created right now; delete it when that finishes")
        tenant.status = "deleting"
    op_id = create_operation(ctl, kind="tenant.delete", target=slug, params={"tier": route.tier})
    handle = ctl.server(route.server)
    handle.ensure_ready()
    plan = delete_plan(ctl, slug)
    with OperationRun(ctl, op_id) as run, translate_errors(f"deleting {slug}"):
        if route.tier == "isolated":
            from bizosctl.db.engines import dispose_all

            dispose_all(host_contains=f"/{route.database}?")
            admin = get_engine(handle.admin_url("postgres"), pooled=False)
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for step in plan:
                    for stmt in step.sql:
                        conn.execute(text(stmt))
        else:
            engine = get_engine(handle.admin_url(route.database), pooled=False)
            with engine.begin() as conn:
                # Triggers off: deleting a tenant is not an audited change of its data.
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                for stmt in plan[0].sql:
                    conn.execute(text(stmt))
        run.step("dropped")
        with ctl.catalog() as s:
            tenant = s.get(Tenant, route.tenant_id)
            assert tenant is not None
            tenant.status = "deleted"
            tenant.deleted_at = text("now()")  # type: ignore[assignment]
            s.execute(text("DELETE FROM routes WHERE tenant_id = :t"), {"t": route.tenant_id})
        run.finish("done")
    return {"slug": slug, "deleted": True, "operation": str(op_id)}
