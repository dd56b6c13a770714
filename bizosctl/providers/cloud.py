"""The catalog side of cloud providers: regions on a provider account, a project per isolated
tenant made as steps of its create operation, the project recorded as a server (so moves,
schema sync, rotation and deletion reach it like any PostgreSQL), and orphans.

Steps of a cloud create (after the tenant's registration): ``requested`` (the project's name,
which carries the operation id, and its sealed owner password, recorded *before* the request),
``project`` (the provider's id), ``ready`` (the project's server recorded, the route on it),
then the local steps (``database``, migrated, routed). A run killed between the request and
the reply finds the project again by its name instead of making a second one.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import select, text

from bizosctl.catalog.models import Region, Server
from bizosctl.catalog.schemas import RegionPublic, ServerPublic
from bizosctl.errors import AlreadyExists, InvalidInput, ProviderError
from bizosctl.faults import crash_point
from bizosctl.providers.base import (
    CloudProject,
    CloudProvider,
    Progress,
    make_provider,
    operation_of,
    project_name,
    sslmode_of,
)
from bizosctl.providers.http import ReplyLost
from bizosctl.providers.local import CLOUD_PROVIDERS, ServerHandle
from bizosctl.security.keycache import auth_changed

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control, RouteInfo
    from bizosctl.catalog.operations import OperationRun
    from bizosctl.tenancy.regions import RegionPlan


def provider_for(ctl: Control, handle: ServerHandle) -> CloudProvider:
    return make_provider(ctl.settings, handle.provider, org=handle.provider_org)


# -- regions --------------------------------------------------------------------------------
def check_cloud_region(
    ctl: Control, name: str, *, provider: str, provider_region: str, org: str | None
) -> None:
    """What ``region add --provider`` checks before it records anything (``--dry-run`` too):
    the token works and the provider offers ``provider_region``."""
    from bizosctl.tenancy.names import check_region_name
    from bizosctl.tenancy.regions import region_exists

    check_region_name(name)
    if provider not in CLOUD_PROVIDERS:
        raise InvalidInput(f"unknown provider {provider!r} (known: {', '.join(CLOUD_PROVIDERS)})")
    if region_exists(ctl, name):
        raise AlreadyExists(f"region {name!r} already exists")
    api = make_provider(ctl.settings, provider, org=org)
    try:
        api.check()
        offered = api.regions()
    finally:
        api.close()
    if provider_region not in offered:
        raise InvalidInput(
            f"{provider} has no region {provider_region!r}; valid: {', '.join(offered) or 'none'}"
        )


def plan_cloud_region(
    ctl: Control, name: str, *, provider: str, provider_region: str, org: str | None = None
) -> RegionPlan:
    """What :func:`add_cloud_region` would add, refusing what it refuses (the provider is
    asked: the token and ``provider_region`` are checked); records nothing."""
    from bizosctl.tenancy.regions import RegionPlan

    check_cloud_region(ctl, name, provider=provider, provider_region=provider_region, org=org)
    return RegionPlan(
        region=name,
        server=f"{name}-1",
        provider=provider,
        provider_region=provider_region,
        org=org,
    )


def add_cloud_region(
    ctl: Control, name: str, *, provider: str, provider_region: str, org: str | None = None
) -> RegionPublic:
    """A region whose isolated tenants each get a project at ``provider`` in
    ``provider_region``. Its one server is the provider account (no database)."""
    check_cloud_region(ctl, name, provider=provider, provider_region=provider_region, org=org)
    server = f"{name}-1"
    with ctl.catalog() as s:
        if s.get(Region, name) is not None:
            raise AlreadyExists(f"region {name!r} was added by another process just now")
        s.add(Region(name=name))
        s.flush()
        s.add(
            Server(
                name=server, region=name, provider=provider, provider_region=provider_region,
                provider_org=org,
            )
        )  # fmt: skip
    handle = ServerHandle(
        name=server, region=name, provider=provider, provider_region=provider_region,
        provider_org=org,
    )  # fmt: skip
    return RegionPublic(
        name=name,
        servers=[ServerPublic(name=server, provider=provider, url=handle.display_url())],
    )


def require_cloud_tier(handle: ServerHandle, tier: str) -> None:
    if handle.is_account and tier != "isolated":
        raise InvalidInput(
            f"region {handle.region!r} is on {handle.provider}: only --tier isolated tenants "
            "live there (a project each)"
        )


# -- making a tenant's project -------------------------------------------------------------
def owner_role(database: str) -> str:
    """The project's owner (admin) role that bizosctl asks Neon for (Supabase has its own)."""
    return f"{database}_admin"[:63]


def make_project(
    ctl: Control,
    run: OperationRun,
    *,
    account: ServerHandle,
    slug: str,
    database: str,
    tenant_id: uuid.UUID,
    reroute: bool,
    progress: Progress | None = None,
) -> str:
    """The steps ``requested``, ``project`` and ``ready`` of an operation that needs a cloud
    project for ``slug`` (a create, a move into the cloud); returns the project's server name,
    and with ``reroute`` puts the tenant's route on it (a create). ProviderError when the
    provider fails or the project is not ready in time (the same command resumes it)."""
    api = provider_for(ctl, account)
    name = project_name(slug, run.id)
    owner = owner_role(database)
    lost_reply = "requested" in run.completed and "project" not in run.completed
    try:
        if "requested" in run.completed:
            sealed = run.step_data("requested")["password_enc"]
            password = ctl.unseal(sealed, context=f"project:{name}")
        else:
            from bizosctl.tenancy.servers import new_password

            password = new_password()
            sealed = ctl.seal(password, context=f"project:{name}")
            run.step("requested", project=name, password_enc=sealed)
        project: CloudProject | None = None
        if "project" in run.completed:
            project = CloudProject(id=run.step_data("project")["project_id"], name=name)
        else:
            if lost_reply:  # an earlier run asked and died before the reply was recorded
                project = api.find(name)
            crash_point("provider.requested")
            if project is None:
                try:
                    project = api.create(
                        name=name, region=str(account.provider_region), database=database,
                        owner=owner, password=password,
                    )  # fmt: skip
                except ReplyLost:
                    project = api.find(name)  # made before the reply was lost?
                    if project is None:
                        raise
            run.step("project", project_id=project.id)
        crash_point("provider.project")
        deadline = time.monotonic() + ctl.settings.provider_ready_timeout

        def note(text: str) -> None:  # `ops show` shows it; the CLI's spinner too
            run.set_progress(0, None, text)
            if progress is not None:
                progress(text)

        project = api.wait_ready(
            project, database=database, owner=owner, password=password,
            deadline=deadline, progress=note,
        )  # fmt: skip
    finally:
        api.close()
    server = _record_project(ctl, account, slug, project, tenant_id if reroute else None)
    run.step("ready", server=server, project_id=project.id)
    return server


def make_tenant_project(
    ctl: Control, run: OperationRun, route: RouteInfo, progress: Progress | None = None
) -> RouteInfo:
    """A cloud create's project; returns the tenant's route, now on the project's server."""
    make_project(
        ctl, run, account=ctl.server(route.server), slug=route.slug, database=route.database,
        tenant_id=route.tenant_id, reroute=True, progress=progress,
    )  # fmt: skip
    return ctl.route(route.slug)


def project_url(provider: str, settings: Any, project: CloudProject) -> str:
    """The project owner's URL: TLS as the provider's sslmode setting says (verify-full by
    default, with the system CAs and channel binding), SCRAM only."""
    from sqlalchemy.engine import URL

    mode = sslmode_of(settings, provider)
    query = {"sslmode": mode, "require_auth": "scram-sha-256"}
    if mode == "verify-full":
        query |= {"sslrootcert": "system", "channel_binding": "require"}
    return URL.create(
        "postgresql+psycopg",
        username=project.user,
        password=project.password,
        host=project.host,
        port=project.port,
        database=project.database,
        query=query,
    ).render_as_string(hide_password=False)


def _record_project(
    ctl: Control,
    account: ServerHandle,
    slug: str,
    project: CloudProject,
    reroute: uuid.UUID | None,
) -> str:
    """The project as a server of the region (its owner URL sealed), and with ``reroute`` (a
    tenant id) that tenant's route on it, in one transaction. Idempotent: a resumed run
    rewrites the same row."""
    from sqlalchemy.dialects.postgresql import insert

    name = f"{account.name}-{slug}"[:63]
    url = project_url(account.provider, ctl.settings, project)
    values = {
        "name": name, "region": account.region, "provider": account.provider,
        "url_enc": ctl.seal(url, context=f"server:{name}:url"), "is_default": False,
        "provider_region": account.provider_region, "provider_org": account.provider_org,
        "project_id": project.id, "parent": account.name,
    }  # fmt: skip
    with ctl.catalog() as s:
        stmt = insert(Server).values(**values)
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=[Server.name],
                set_={k: stmt.excluded[k] for k in ("url_enc", "project_id", "parent")},
            )
        )
        if reroute is not None:
            s.execute(
                text("UPDATE routes SET server = :s, updated_at = now() WHERE tenant_id = :t"),
                {"s": name, "t": reroute},
            )
            auth_changed(s, tenant_id=reroute)
    ctl.forget_server(name)
    return name


# -- deleting -------------------------------------------------------------------------------
def drop_projects(ctl: Control, handle: ServerHandle, tenant_id: uuid.UUID) -> list[str]:
    """Delete the tenant's project(s) at the provider: the project of its server, or, for a
    tenant whose create stopped before its project was recorded as a server, any project
    its create operation made. A project already gone (deleted by hand) is fine."""
    if handle.project_id is not None:
        projects = [handle.project_id]
        account = handle
    else:
        account, projects = handle, _projects_of_create(ctl, handle, tenant_id)
    api = provider_for(ctl, account)
    try:
        for project_id in projects:
            api.delete(project_id)
    finally:
        api.close()
    return projects


def _projects_of_create(ctl: Control, account: ServerHandle, tenant_id: uuid.UUID) -> list[str]:
    """Only for a tenant whose route is still on the account (its create stopped before
    ``ready``): a move's target that never got its project recorded is left to ``provider
    orphans`` rather than guessed at here."""
    from bizosctl.catalog.models import OperationStep, Route, Tenant

    with ctl.catalog() as s:
        op_id = s.execute(
            select(Tenant.operation_id)
            .join(Route, Route.tenant_id == Tenant.id)
            .where(Tenant.id == tenant_id, Route.server == account.name)
        ).scalar()
        if op_id is None:
            return []
        data = s.execute(
            select(OperationStep.name, OperationStep.data).where(OperationStep.op_id == op_id)
        ).all()
    steps: dict[str, Any] = {name: d for name, d in data}
    if "project" in steps:
        return [steps["project"]["project_id"]]
    if "requested" not in steps:
        return []
    api = provider_for(ctl, account)  # the reply may have been lost: look for it by name
    try:
        found = api.find(steps["requested"]["project"])
    finally:
        api.close()
    return [found.id] if found else []


def drop_plan_line(handle: ServerHandle) -> str:
    what = f"project {handle.project_id}" if handle.project_id else "the project being made"
    return f"delete {handle.provider} {what} ({handle.name})"


def forget_project_server(conn: Any, name: str) -> None:
    """A project's server goes from the catalog once no route uses it (its tenant deleted,
    or moved away and the kept source purged)."""
    conn.execute(
        text(
            "DELETE FROM servers AS s WHERE s.name = :n AND s.project_id IS NOT NULL AND "
            "NOT EXISTS (SELECT 1 FROM routes AS r WHERE r.server = s.name)"
        ),
        {"n": name},
    )


# -- orphans --------------------------------------------------------------------------------
class OrphanProject(BaseModel):
    server: str  # the provider account
    provider: str
    project_id: str
    name: str
    reason: str
    deletable: bool  # no tenant at all: `--delete` removes it


class MissingProject(BaseModel):
    slug: str
    server: str
    provider: str
    project_id: str


class OrphansReport(BaseModel):
    projects: list[OrphanProject]
    missing: list[MissingProject]
    deleted: list[str] = []


def find_orphans(ctl: Control) -> OrphansReport:
    """Projects bizosctl made that no live tenant uses (or whose tenant's create failed), and
    tenants whose project is gone at the provider."""
    from bizosctl.catalog.operations import OPEN, is_alive

    with ctl.catalog() as s:
        accounts = [
            ctl.handle_for(r)
            for r in s.execute(
                select(Server).where(
                    Server.provider.in_(CLOUD_PROVIDERS), Server.project_id.is_(None)
                )
            ).scalars()
        ]
        used = s.execute(
            text(
                "SELECT s.project_id, s.parent, t.slug, t.status FROM servers AS s "
                "JOIN routes AS r ON r.server = s.name JOIN tenants AS t ON t.id = r.tenant_id "
                "WHERE s.project_id IS NOT NULL"
            )
        ).all()
        # projects a move holds: its target (in flight, also before it is recorded as a
        # server) or its kept source (until purged)
        held = set(
            s.execute(
                text(
                    "SELECT sv.project_id FROM operations AS o JOIN servers AS sv ON sv.name IN "
                    "(o.params->'source'->>'server', o.params->'target'->>'server') "
                    "WHERE o.kind = 'tenant.move' AND sv.project_id IS NOT NULL AND "
                    "(o.status IN ('queued', 'running') OR (o.status = 'done' AND "
                    "NOT COALESCE((o.params->>'source_purged')::boolean, false))) "
                    "UNION SELECT st.data->>'project_id' FROM operation_steps AS st "
                    "JOIN operations AS o ON o.id = st.op_id "
                    "WHERE st.name = 'project' AND o.kind = 'tenant.move' "
                    "AND o.status IN ('queued', 'running')"
                )
            ).scalars()
        )
        creating = s.execute(
            text(
                "SELECT t.slug, t.status, o.id, o.status AS op_status FROM tenants AS t "
                "JOIN operations AS o ON o.id = t.operation_id WHERE t.status = 'provisioning'"
            )
        ).all()
    by_project = {u.project_id: u for u in used}
    by_op = {c.id.hex: c for c in creating}
    report = OrphansReport(projects=[], missing=[])
    for account in accounts:
        api = provider_for(ctl, account)
        try:
            listed = api.projects()
        finally:
            api.close()
        ids = {p.id for p in listed}
        for p in listed:
            owner = by_project.get(p.id)
            op_hex = operation_of(p.name)
            maker = by_op.get(op_hex) if op_hex else None
            if owner is not None and owner.status != "provisioning":
                continue
            if owner is None and p.id in held:
                continue  # a move's target or kept source, or being made right now
            slug = owner.slug if owner is not None else maker.slug if maker is not None else None
            if slug is None:
                reason, deletable = "no tenant", True
            else:
                stuck = maker is not None and (
                    maker.op_status not in OPEN or not is_alive(ctl, maker.id)
                )
                if not stuck:
                    continue  # its tenant is being created right now
                reason, deletable = (
                    f"tenant {slug!r} is stuck provisioning: `tenant create` again resumes it, "
                    f"`tenant delete {slug} --yes` removes both",
                    False,
                )
            report.projects.append(
                OrphanProject(
                    server=account.name, provider=account.provider, project_id=p.id,
                    name=p.name, reason=reason, deletable=deletable,
                )
            )  # fmt: skip
        for u in used:
            if u.parent == account.name and u.project_id not in ids:
                report.missing.append(
                    MissingProject(
                        slug=u.slug, server=account.name, provider=account.provider,
                        project_id=u.project_id,
                    )
                )  # fmt: skip
    return report


def delete_orphans(ctl: Control) -> OrphansReport:
    """Delete the projects that belong to no tenant (``provider orphans --delete --yes``)."""
    report = find_orphans(ctl)
    for orphan in report.projects:
        if not orphan.deletable:
            continue
        api = provider_for(ctl, ctl.server(orphan.server))
        try:
            api.delete(orphan.project_id)
        finally:
            api.close()
        report.deleted.append(orphan.project_id)
    return report


def fail_on_provider_error(run: OperationRun, exc: ProviderError) -> None:
    """A provider that failed ends the run as ``failed`` with its reason; running the same
    command again resumes it from its last step."""
    run.finish("failed", exc.message)
