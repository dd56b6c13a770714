"""Creating and deleting tenants in each tier, as checkpointed operations.

``create_tenant`` first commits the tenant row (status ``provisioning``) with its route and an
operation; a unique index on live slugs makes one of two concurrent creators lose cleanly.
Each later step is idempotent and checkpointed, so running the same command again after a
crash finishes the tenant; ``delete_tenant`` removes what a half-made tenant left behind.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import Field
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from bizosctl.catalog.control import Control, RouteInfo
from bizosctl.catalog.models import Operation, Tenant
from bizosctl.catalog.operations import (
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
    is_alive,
    patch_params,
    start_or_resume,
)
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.db.migrate import refuse_unknown_revisions, upgrade
from bizosctl.errors import (
    AlreadyExists,
    BizosError,
    Busy,
    InvalidInput,
    NotFound,
    OperationFailed,
    ProviderError,
)
from bizosctl.faults import crash_point
from bizosctl.plans import Plan, PlannedStep
from bizosctl.providers.cloud import (
    fail_on_provider_error,
    forget_project_server,
    make_tenant_project,
    require_cloud_tier,
)
from bizosctl.security.fields import normalize_email
from bizosctl.security.keycache import auth_changed
from bizosctl.tenancy.names import (
    SHARED_DB,
    check_new_slug,
    check_slug,
    check_tenant_name,
    check_tier,
    q,
)
from bizosctl.tenancy.placement import DropStep, Placement, placement_for
from bizosctl.tenancy.regions import default_server, region_exists
from bizosctl.tenancy.servers import (
    close_template1,
    ensure_database,
    ensure_group_roles,
    new_password,
    prepare_schema,
    set_login_role,
)
from bizosctl.tenancy.zones import check_zone
from tenant_schema.ddl import APP_GROUP, OWNER_ROLE

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    from bizosctl.jobs.background import Submitted


def _validate(
    ctl: Control,
    *,
    slug: str,
    tier: str,
    region: str,
    name: str | None = None,
    time_zone: str | None = None,
) -> None:
    """What ``create_tenant`` would refuse, without changing anything (``--dry-run``)."""
    check_new_slug(slug)
    check_tier(tier)
    if time_zone is not None:
        check_zone(time_zone)
    if name is not None:
        check_tenant_name(name)
    if not region_exists(ctl, region):
        _unknown_region(ctl, region)
    server = default_server(ctl, region)
    require_cloud_tier(ctl.server(server), tier)
    try:
        ctl.route(slug)
    except NotFound:  # a new tenant (a half-created one resumes on its own names)
        _check_available(ctl, slug=slug, server=server)


class CreatePlan(Plan):
    """``tenant create --dry-run``: where the tenant would live."""

    slug: str
    tier: str
    region: str
    server: str
    database: str
    schema_: str = Field(serialization_alias="schema")
    role: str
    time_zone: str


def plan_create(
    ctl: Control,
    *,
    slug: str,
    tier: str,
    region: str,
    name: str | None = None,
    time_zone: str | None = None,
) -> CreatePlan:
    """What :func:`create_tenant` would make, refusing what it refuses; changes nothing."""
    from bizosctl.tenancy.zones import region_zone_name

    _validate(ctl, slug=slug, tier=tier, region=region, name=name, time_zone=time_zone)
    place = placement_for(ctl, slug=slug, tier=tier, region=region)
    return CreatePlan(
        slug=slug,
        tier=tier,
        region=region,
        server=place.server,
        database=place.database,
        schema_=place.schema,
        role=place.role,
        time_zone=time_zone or region_zone_name(region),
    )


def _unknown_region(ctl: Control, region: str) -> NoReturn:
    from bizosctl.tenancy.regions import list_regions

    known = ", ".join(r.name for r in list_regions(ctl)) or "none"
    raise NotFound(f"unknown region {region!r} (known: {known}); add it with `region add`")


def create_tenant(
    ctl: Control,
    *,
    slug: str,
    name: str,
    tier: str,
    region: str,
    owner_email: str | None = None,
    time_zone: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> uuid.UUID:
    """Create a tenant (or finish one whose creation was interrupted). Returns its id.
    ``progress`` hears how a cloud project's making goes (it can take minutes).

    ``time_zone`` (IANA) is where its "today" and 05:00 are; None: its region's default.

    Catalog round trips are few on purpose (one lookup, one registration, one closing
    transaction): provisioning should cost little more than the tenant's own DDL.
    """
    route, op_id, _ = _start_create(
        ctl,
        slug=slug,
        name=name,
        tier=tier,
        region=region,
        owner_email=owner_email,
        time_zone=time_zone,
    )
    _finish_create(ctl, op_id, route, progress)
    return route.tenant_id


def submit_create(
    ctl: Control,
    *,
    slug: str,
    name: str,
    tier: str,
    region: str,
    owner_email: str | None = None,
    time_zone: str | None = None,
) -> Submitted:
    """``tenant create --background``: refuse what a create refuses, then register the tenant
    (provisioning) and queue the job that builds it, in one transaction."""
    from bizosctl.jobs.background import submit

    def record(s: Session) -> tuple[uuid.UUID, bool]:
        _, op_id, resumed = _start_create(
            ctl,
            slug=slug,
            name=name,
            tier=tier,
            region=region,
            owner_email=owner_email,
            time_zone=time_zone,
            session=s,
            status=OperationStatus.QUEUED,
        )
        return op_id, resumed

    return submit(ctl, record)


def _start_create(
    ctl: Control,
    *,
    slug: str,
    name: str,
    tier: str,
    region: str,
    owner_email: str | None,
    time_zone: str | None = None,
    session: Session | None = None,
    status: OperationStatus = OperationStatus.RUNNING,
) -> tuple[RouteInfo, uuid.UUID, bool]:
    """Validate a create and register the tenant, or find the half-created one to finish.
    Returns its route, its operation and whether that operation was there already."""
    check_new_slug(slug)
    check_tier(tier)
    check_tenant_name(name)
    if time_zone is not None:
        check_zone(time_zone)
    with ctl.catalog() as s:  # one round trip: the live tenant of that slug, the region's server
        row = s.execute(
            text(
                "SELECT (SELECT name FROM servers WHERE region = :r "
                "        ORDER BY is_default DESC, name LIMIT 1) AS server, t.id, t.status, "
                "t.tier, t.region, t.operation_id, "
                "(SELECT json_object_agg(revision, n) FROM (SELECT revision, count(*) AS n "
                "  FROM schema_targets WHERE revision IS NOT NULL GROUP BY revision) AS r) "
                "AS revisions FROM (SELECT 1) AS one "
                "LEFT JOIN tenants t ON t.slug = :s AND t.status <> 'deleted'"
            ),
            {"r": region, "s": slug},
        ).one()
    server = row.server
    existing = row if row.id is not None else None
    # A tenant made at this code's head in a fleet that is ahead of it would be behind it.
    refuse_unknown_revisions("tenant", row.revisions or {}, doing=f"create {slug!r}")
    if server is None:
        _unknown_region(ctl, region)
    require_cloud_tier(ctl.server(server), tier)
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
        return ctl.route(slug), existing.operation_id, True
    try:
        _check_available(ctl, slug=slug, server=server)
    except InvalidInput:
        # Another `tenant create` of this very slug may have registered it (and made its
        # objects) since the look-up above: say so, as the registration itself would.
        with ctl.catalog() as s:
            taken = s.execute(
                select(Tenant.id).where(Tenant.slug == slug, Tenant.status != "deleted")
            ).first()
        if taken is not None:
            raise AlreadyExists(f"tenant {slug!r} already exists") from None
        raise
    route, op_id = _register(
        ctl,
        slug=slug,
        name=name,
        tier=tier,
        region=region,
        server=server,
        owner_email=owner_email,
        time_zone=time_zone,
        session=session,
        status=status,
    )
    return route, op_id, False


def _finish_create(
    ctl: Control,
    op_id: uuid.UUID,
    route: RouteInfo,
    progress: Callable[[str], None] | None = None,
) -> None:
    with OperationRun(ctl, op_id) as run:
        try:
            route = _provision(ctl, run, route, progress)
        except ProviderError as exc:
            fail_on_provider_error(run, exc)
            raise
        crash_point("tenant.create.state")

        def activate(conn: Connection) -> None:
            conn.execute(
                text("UPDATE tenants SET status = 'active' WHERE id = :t"), {"t": route.tenant_id}
            )
            auth_changed(conn, tenant_id=route.tenant_id)

        run.finish("done", also=activate)


def run_create(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: finish a create whose process died (``ops resume ID``). The
    tenant's registration holds everything it needs: its route, tier and region."""
    route = ctl.route(op.target)
    if route.status != "provisioning":
        raise InvalidInput(f"tenant {op.target!r} is {route.status}, not being created")
    _finish_create(ctl, op.id, route)
    return {"operation": str(op.id), "slug": op.target, "tenant_id": str(route.tenant_id),
            "status": "done"}  # fmt: skip


def _check_available(ctl: Control, *, slug: str, server: str) -> None:
    """No name of ``slug`` may be taken, in the catalog or on its server (whatever the tier:
    a later move to another tier needs them too)."""
    from bizosctl.tenancy.claims import check_names_free

    handle = ctl.server(server)
    if handle.is_account:
        return  # a project of its own: no name there is taken
    handle.ensure_ready()
    with (
        translate_errors(f"server {server}"),
        get_engine(handle.admin_url(SHARED_DB)).connect() as conn,
    ):
        check_names_free(ctl, conn, slug=slug, server=server)


def _register(
    ctl: Control,
    *,
    slug: str,
    name: str,
    tier: str,
    region: str,
    server: str,
    owner_email: str | None,
    time_zone: str | None = None,
    session: Session | None = None,
    status: OperationStatus = OperationStatus.RUNNING,
) -> tuple[RouteInfo, uuid.UUID]:
    """Commit the tenant (provisioning), its route and its operation in one transaction (the
    caller's ``session`` when given: it commits them with what it adds)."""
    place = placement_for(ctl, slug=slug, tier=tier, region=region, server=server)
    database, schema, role = place.database, place.schema, place.role
    tenant_id, op_id = uuid.uuid4(), uuid.uuid4()
    password, password_enc = "", None
    if tier == "isolated":
        password = new_password()
        password_enc = ctl.seal(password, context=f"role:{role}")
    else:
        password = ctl.route_password_for_server(server)
    # The catalog keeps no blind index (it would join to the tenant's rows): the owner gets a
    # routing key (bizosctl.privacy.subjects) once the tenant row exists.
    bidx = None
    params = json.dumps(
        {"tier": tier, "region": region, **({"time_zone": time_zone} if time_zone else {})}
    )
    try:
        with (
            contextlib.nullcontext(session) if session is not None else ctl.catalog() as s,
            translate_errors("catalog"),
        ):  # one statement: operation, tenant and route
            s.execute(
                text(
                    "WITH op AS (INSERT INTO operations (id, kind, target, params, status) "
                    "  VALUES (:op, 'tenant.create', :slug, CAST(:params AS jsonb), :status) "
                    "  RETURNING id), "
                    "t AS (INSERT INTO tenants (id, slug, name, tier, region, status, operation_id,"
                    "  owner_email_bidx, time_zone) SELECT :tid, :slug, :name, :tier, :region, "
                    "  'provisioning', op.id, :bidx, :tz FROM op RETURNING id) "
                    "INSERT INTO routes (tenant_id, server, database, schema, role, password_enc) "
                    "SELECT t.id, :server, :db, :schema, :role, :pw FROM t"
                ),
                {
                    "op": op_id,
                    "slug": slug,
                    "tid": tenant_id,
                    "name": name,
                    "tier": tier,
                    "region": region,
                    "bidx": bidx,
                    "tz": time_zone,
                    "server": server,
                    "db": database,
                    "schema": schema,
                    "role": role,
                    "pw": password_enc,
                    "params": params,
                    "status": str(status),
                },
            )
            if owner_email:
                from bizosctl.privacy.subjects import note_sql, subject_ref

                s.execute(
                    note_sql(),
                    {
                        "ref": subject_ref(ctl.keyring, normalize_email(owner_email)),
                        "tid": tenant_id,
                    },
                )
    except BizosError as exc:
        if isinstance(exc.__cause__, IntegrityError):
            raise AlreadyExists(f"tenant {slug!r} already exists (created concurrently)") from exc
        raise
    crash_point("tenant.create.registered")
    route = RouteInfo(
        tenant_id=tenant_id,
        slug=slug,
        tier=tier,
        region=region,
        status="provisioning",
        server=server,
        database=database,
        schema=schema,
        role=role,
        password=password,
    )
    return route, op_id


_DDL_USES: dict[int, int] = {}
RECYCLE_EVERY = 50


def _recycle_after_many(engine: Any) -> None:
    """A backend that created many schemas carries their catalog entries in its caches and
    slows down with each one (51 ms per tenant at first, 900 ms after 600): bulk provisioning
    in one process gets fresh connections every RECYCLE_EVERY tenants."""
    n = _DDL_USES.get(id(engine), 0) + 1
    _DDL_USES[id(engine)] = n
    if n % RECYCLE_EVERY == 0:
        engine.dispose()


def _provision(
    ctl: Control,
    run: OperationRun,
    route: RouteInfo,
    progress: Callable[[str], None] | None = None,
) -> RouteInfo:
    """The tenant's database objects: idempotent, so a resumed run simply redoes them. In a
    cloud region the tenant's project is made first (its route then points at it)."""
    handle = ctl.server(route.server)
    if handle.is_account:
        route = make_tenant_project(ctl, run, route, progress)
        handle = ctl.server(route.server)
    handle.ensure_ready()
    isolated = route.tier == "isolated"
    with translate_errors(f"provisioning {route.slug}"):
        if isolated and "database" not in run.completed:
            admin = get_engine(handle.admin_url("postgres"))
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if handle.is_cloud:
                    ensure_group_roles(conn)  # a new project has none of bizosctl's roles
                else:
                    close_template1(conn)  # servers bootstrapped before it was closed there
                set_login_role(
                    conn, route.role, route.password, member_of=APP_GROUP, settings=ctl.settings
                )
                ensure_database(conn, route.database, owner_login=route.role)
            run.step("database")
            crash_point("tenant.create.database")
        # One transaction: schema, tables at head, the tenant's state row and settings row.
        engine = get_engine(handle.admin_url(route.database), pooled=not isolated)
        _recycle_after_many(engine)
        with engine.begin() as conn:
            if route.tier != "shared":
                # the shared database got pgvector when its server was bootstrapped
                prepare_schema(conn, route.schema, extension=isolated)
                upgrade(conn, "tenant", schema=route.schema, owner_role=OWNER_ROLE)
            schema = q(route.schema)
            conn.execute(text("RESET ROLE"))
            conn.execute(
                text(
                    f"WITH state AS (INSERT INTO {schema}.tenant_state (tenant_id, slug, status) "
                    "VALUES (:t, :s, 'active') ON CONFLICT (tenant_id) DO UPDATE "
                    "SET status = 'active', updated_at = now() RETURNING tenant_id) "
                    f"INSERT INTO {schema}.settings (tenant_id) SELECT tenant_id FROM state "
                    "ON CONFLICT DO NOTHING"
                ),
                {"t": route.tenant_id, "s": route.slug},
            )
        crash_point("tenant.create.migrated")
    _check_app_login(ctl, route)
    return route


def _check_app_login(ctl: Control, route: RouteInfo) -> None:
    """The application must reach the tenant with the route's credentials before the tenant
    is recorded active: a failure here leaves it ``provisioning`` (the same command finishes
    it once the cause is fixed) instead of active and unreachable."""
    from bizosctl.tenancy.router import search_path

    handle = ctl.server(route.server)
    url = handle.login_url(route.database, route.role, route.password)
    with (
        translate_errors(f"tenant {route.slug} as {route.role}"),
        get_engine(url).connect() as conn,
    ):
        conn.execute(
            text(
                "SELECT set_config('bizos.tenant_id', :t, true), "
                "set_config('search_path', :p, true)"
            ),
            {"t": str(route.tenant_id), "p": search_path(route)},
        )
        found = conn.execute(text("SELECT count(*) FROM tenant_state")).scalar_one()
        conn.rollback()
    if found != 1:
        raise OperationFailed(
            f"tenant {route.slug!r} is not visible to its login role {route.role} "
            "(run `bizosctl doctor`); it stays provisioning"
        )


# -- deletion -------------------------------------------------------------------------------
def delete_plan(ctl: Control, slug: str) -> list[DropStep]:
    """What ``delete_tenant`` drops: its placement's drop plan."""
    route = ctl.route(slug)
    return Placement.of_route(route).drop_plan(ctl, route.tenant_id)


class DeletePlan(Plan):
    """``tenant delete --dry-run``: each step and its statements, in order."""

    slug: str
    steps: list[PlannedStep]


def plan_delete(ctl: Control, slug: str) -> DeletePlan:
    """What :func:`delete_tenant` would drop; changes nothing."""
    check_slug(slug)
    steps = [PlannedStep(step=p.name, sql=p.sql) for p in delete_plan(ctl, slug)]
    return DeletePlan(slug=slug, steps=steps)


def _purge_kept_sources(ctl: Control, slug: str, tenant_id: uuid.UUID) -> int:
    """Sources that earlier moves kept (``--keep-source``) go with the tenant."""
    with ctl.catalog() as s:
        ops = s.execute(
            select(Operation.id, Operation.params).where(
                Operation.kind == "tenant.move",
                Operation.target == slug,
                Operation.status == "done",
            )
        ).all()
    purged = 0
    for op_id, params in ops:
        if params.get("source_purged") or "source" not in params:
            continue
        Placement.of(params["source"]).drop(ctl, tenant_id)
        with ctl.catalog() as s:
            patch_params(s, op_id, source_purged=True)
        purged += 1
    return purged


def delete_tenant(ctl: Control, slug: str) -> dict[str, Any]:
    """Drop the tenant's data everywhere; the catalog keeps the tenant row as ``deleted``."""
    check_slug(slug)
    route = ctl.route(slug)
    with ctl.catalog() as s:
        op_id = _start_delete(ctl, s, route)
    return _run_delete(ctl, op_id, route)


def submit_delete(ctl: Control, slug: str) -> Submitted:
    """``tenant delete --background``: mark the tenant deleting and queue the job that drops
    its data, in one transaction."""
    from bizosctl.jobs.background import submit

    check_slug(slug)
    route = ctl.route(slug)

    def record(s: Session) -> tuple[uuid.UUID, bool]:
        return _start_delete(ctl, s, route, status=OperationStatus.QUEUED), False

    return submit(ctl, record)


def _start_delete(
    ctl: Control,
    s: Session,
    route: RouteInfo,
    *,
    status: OperationStatus = OperationStatus.RUNNING,
) -> uuid.UUID:
    slug = route.slug
    tenant = s.get(Tenant, route.tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant named {slug!r}")
    if (
        tenant.status == "provisioning"
        and tenant.operation_id
        and is_alive(ctl, tenant.operation_id)
    ):
        raise Busy(f"tenant {slug!r} is being created right now; delete it when that finishes")
    if tenant.status == "moving":
        raise InvalidInput(
            f"tenant {slug!r} is moving: `tenant move --abort {slug}` (or let it finish) first"
        )
    tenant.status = "deleting"
    auth_changed(s, tenant_id=route.tenant_id)
    # an interrupted delete of this tenant is resumed, not started again
    op_id, _ = start_or_resume(
        ctl,
        s,
        kind=OperationKind.TENANT_DELETE,
        target=slug,
        params={"tier": route.tier},
        exclusive=True,
        other_params="resume",
        status=status,
    )
    return op_id


def run_delete(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: finish a delete whose process died (``ops resume ID``)."""
    route = ctl.route(op.target)
    if route.status != "deleting":
        raise InvalidInput(f"tenant {op.target!r} is {route.status}, not being deleted")
    return _run_delete(ctl, op.id, route)


def _run_delete(ctl: Control, op_id: uuid.UUID, route: RouteInfo) -> dict[str, Any]:
    slug = route.slug
    with OperationRun(ctl, op_id) as run, translate_errors(f"deleting {slug}"):
        if "dropped" not in run.completed:
            Placement.of_route(route).drop(ctl, route.tenant_id)
            run.step("dropped")
        crash_point("tenant.delete.dropped")
        purged = _purge_kept_sources(ctl, slug, route.tenant_id)
        if purged:
            run.step("kept-sources", purged=purged)
        with ctl.catalog() as s:
            tenant = s.get(Tenant, route.tenant_id)
            assert tenant is not None
            tenant.status = "deleted"
            tenant.deleted_at = text("now()")  # type: ignore[assignment]
            s.execute(text("DELETE FROM routes WHERE tenant_id = :t"), {"t": route.tenant_id})
            auth_changed(s, tenant_id=route.tenant_id)
            forget_project_server(s, route.server)
        run.finish("done")
    return {"slug": slug, "deleted": True, "operation": str(op_id)}
