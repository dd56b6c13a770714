"""Where a tenant is and where it goes (its source and target placements), validation and the
move plan."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Route, Server, Tenant
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.errors import InvalidInput, NotFound
from bizosctl.moves.copy import table_bytes
from bizosctl.moves.tables import table_infos
from bizosctl.sync.drift import diff
from bizosctl.tenancy.names import check_slug, check_tier, tenant_names
from bizosctl.tenancy.placement import Placement, placement_for
from bizosctl.tenancy.regions import default_server
from tenant_schema import TENANT_TABLES

DAY_MS = 86_400_000
#: Caps, like those of ``schema sync`` and API keys: beyond them a value is a typo.
MAX_PARALLEL = 32  # tables copied at once, two connections each
MAX_KEEP_SOURCE_MS = 90 * DAY_MS
MAX_FREEZE_MS = 60_000  # writes paused longer than a minute is an outage, not a move
#: Free space a move leaves on the target's disk beyond the tenant's own size.
RESERVE_ENV = "BIZOS_MOVE_RESERVE_BYTES"
DEFAULT_RESERVE = 256 * 1024 * 1024


@dataclass
class MoveRequest:
    slug: str
    to_tier: str
    to_region: str | None = None
    to_server: str | None = None
    keep_source_ms: int = 7 * DAY_MS
    max_freeze_ms: int = 2000
    residency_change: str | None = None
    parallel: int = 4
    #: Gentle mode: bytes a second the copy may move, all tables together (None: no cap).
    max_rate_bytes: int | None = None


@dataclass
class MovePlan:
    tenant_id: uuid.UUID
    slug: str
    source: Placement
    target: Placement
    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    revision: str | None = None
    residency_change: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "source": self.source.public(),
            "target": self.target.public(),
            "revision": self.revision,
            "rows": self.rows,
            "bytes": self.bytes,
            "total_rows": sum(self.rows.values()),
            "total_bytes": sum(self.bytes.values()),
            "residency_change": self.residency_change,
        }


def current_endpoint(ctl: Control, slug: str) -> tuple[Tenant, Placement]:
    check_slug(slug)
    with ctl.catalog() as s:
        row = s.execute(
            select(Tenant, Route)
            .join(Route, Route.tenant_id == Tenant.id)
            .where(Tenant.slug == slug, Tenant.status != "deleted")
        ).one_or_none()
    if row is None:
        raise NotFound(f"no tenant named {slug!r}")
    tenant, route = row
    return tenant, Placement(
        tenant.tier,
        tenant.region,
        route.server,
        route.database,
        route.schema,
        route.role,
        route.password_enc,
    )


def target_endpoint(ctl: Control, req: MoveRequest, source: Placement) -> Placement:
    check_tier(req.to_tier)
    region = req.to_region or source.region
    with ctl.catalog() as s:
        servers = {r.name: r.region for r in s.execute(select(Server)).scalars()}
    if region not in set(servers.values()):
        from bizosctl.catalog.reads import region_check

        region_check(ctl, region)
    if req.to_server is not None:
        if req.to_server not in servers:
            raise NotFound(f"no server named {req.to_server!r}")
        if servers[req.to_server] != region:
            raise InvalidInput(
                f"server {req.to_server!r} is in region {servers[req.to_server]!r}, not {region!r}"
            )
        server = req.to_server
    elif region == source.region and not ctl.server(source.server).is_cloud:
        server = source.server
    else:  # the region's default server (a cloud region's: its provider account)
        server = default_server(ctl, region)
    if (req.to_tier, server) == (source.tier, source.server):
        raise InvalidInput(
            f"tenant {req.slug!r} is already {source.tier} on {source.server} in {source.region}: "
            "choose another tier, region or server"
        )
    if region != source.region and not (req.residency_change or "").strip():
        raise InvalidInput(
            f"moving {req.slug!r} from region {source.region} to {region} changes where its data "
            'lives: pass --residency-change "reason" (it is recorded)'
        )
    return placement_for(ctl, slug=req.slug, tier=req.to_tier, region=region, server=server)


def _check_source(
    ctl: Control, conn: Connection, slug: str, source: Placement, revision: str | None
) -> None:
    """Refuse, before anything is made, a source the move could not finish: a revision this
    code does not know (the fleet is ahead of it), or tables that drifted from their revision
    (a hand-added column fails the copy half-way)."""
    from bizosctl.db.migrate import head, known_revision
    from bizosctl.sync.drift import expected_shape, introspect

    if revision is None or not known_revision("tenant", revision):
        raise InvalidInput(
            f"tenant {slug!r} is at revision {revision or 'none'}, which this bizosctl does not "
            f"know (its head is {head('tenant')}): upgrade bizosctl before moving it"
        )
    actual = introspect(conn, source.schema)
    conn.rollback()  # introspect pins the search_path for its transaction only
    expected = expected_shape(ctl, revision)
    # The copy reads and writes columns by name: only tables and columns must agree.
    drift = [
        line
        for line in diff(expected, actual)
        if line.split(" ", 2)[1] in ("table", "column")
        and (source.tier != "shared" or _is_tenant_table(line))
    ]
    if drift:
        shown = "; ".join(drift[:3]) + (f"; and {len(drift) - 3} more" if len(drift) > 3 else "")
        raise InvalidInput(
            f"the source of {slug!r} ({source.schema} on {source.server}) differs from revision "
            f"{revision}: {shown}. Nothing was changed; fix the drift (`bizosctl schema drift "
            f"--tenant {slug}`) and move again"
        )


def _is_tenant_table(line: str) -> bool:
    name = line.split(" ", 2)[2].split(":", 1)[0].split(".", 1)[0]
    return name in TENANT_TABLES


def _free_bytes(ctl: Control, server: str) -> int | None:
    handle = ctl.server(server)
    if handle.provider != "embedded":
        return None  # unknown for a server we do not run
    return shutil.disk_usage(handle.cluster.pgdata).free


def _check_target_names(ctl: Control, target: Placement, tenant_id: uuid.UUID, slug: str) -> None:
    """The target's names must serve no other tenant (one made under the old naming)."""
    from bizosctl.tenancy.claims import claims

    if target.tier == "shared":
        return
    for (server, kind, name), holders in sorted(
        claims(ctl, names=tenant_names(slug).all()).items()
    ):
        others = sorted(s for tid, s in holders.items() if tid != tenant_id)
        needed = kind == "schema" if target.tier == "schema" else kind != "schema"
        if server == target.server and others and needed:
            raise InvalidInput(
                f"{kind} {name} on {server} already serves tenant {others[0]!r}: "
                f"{slug!r} cannot move there (run `bizosctl doctor`)"
            )


def make_plan(ctl: Control, req: MoveRequest) -> MovePlan:
    """Validate the request and measure the tenant: nothing changes."""
    import os

    from bizosctl.db.migrate import current_revision

    if req.parallel < 1:
        raise InvalidInput(f"--parallel must be at least 1, not {req.parallel}")
    if req.parallel > MAX_PARALLEL:
        raise InvalidInput(f"--parallel is capped at {MAX_PARALLEL}, not {req.parallel}")
    if req.keep_source_ms > MAX_KEEP_SOURCE_MS:
        raise InvalidInput(f"--keep-source is capped at {MAX_KEEP_SOURCE_MS // DAY_MS}d")
    if req.max_freeze_ms > MAX_FREEZE_MS:
        raise InvalidInput(f"--max-freeze is capped at {MAX_FREEZE_MS // 1000}s")
    tenant, source = current_endpoint(ctl, req.slug)
    if tenant.status == "moving":
        raise InvalidInput(
            f"tenant {req.slug!r} is already moving: `tenant move --resume {req.slug}` continues, "
            f"`tenant move --abort {req.slug}` returns it"
        )
    if tenant.status != "active":
        raise InvalidInput(f"tenant {req.slug!r} is {tenant.status}; only active tenants move")
    target = target_endpoint(ctl, req, source)
    dst = ctl.server(target.server)
    from bizosctl.providers.cloud import require_cloud_tier

    require_cloud_tier(dst, target.tier)
    if not dst.is_account:  # a cloud target is a new project: no name there is taken
        _check_target_names(ctl, target, tenant.id, req.slug)
    plan = MovePlan(tenant.id, req.slug, source, target, residency_change=req.residency_change)
    src = ctl.server(source.server)
    src.ensure_ready()
    with (
        translate_errors(f"source {source.server}"),
        get_engine(src.admin_url(source.database), pooled=False).connect() as conn,
    ):
        plan.revision = current_revision(conn, schema=source.schema)
        _check_source(ctl, conn, req.slug, source, plan.revision)
        infos = table_infos(conn, source.schema)
        sizes = table_bytes(conn, schema=source.schema, tables=[t.name for t in infos])
        union = " UNION ALL ".join(
            f'SELECT \'{t.name}\', count(*) FROM "{source.schema}"."{t.name}" WHERE tenant_id = :t'
            for t in infos
        )
        plan.rows = {name: int(n) for name, n in conn.execute(text(union), {"t": tenant.id}).all()}
        total_rows = {
            name: int(n)
            for name, n in conn.execute(text(union.replace(" WHERE tenant_id = :t", ""))).all()
        }
    for name, size in sizes.items():  # the tenant's share of each table
        total = total_rows.get(name) or 0
        plan.bytes[name] = size * plan.rows.get(name, 0) // total if total else 0
    if dst.is_account:
        return plan  # the project is made by the move's first steps
    with translate_errors(f"target {target.server}"):
        dst.ensure_ready()
        with get_engine(dst.admin_url("postgres"), pooled=False).connect() as conn:
            if (
                target.tier == "isolated"
                and conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}
                ).first()
            ):
                raise InvalidInput(
                    f"database {target.database} already exists on {target.server} (a kept "
                    f"source?): `tenant move --purge-source {req.slug}` first"
                )
        if target.tier != "isolated":
            with get_engine(dst.admin_url(target.database), pooled=False).connect() as conn:
                if (
                    target.tier == "schema"
                    and conn.execute(
                        text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": target.schema}
                    ).first()
                ):
                    raise InvalidInput(
                        f"schema {target.schema} already exists on {target.server} (a kept "
                        f"source?): `tenant move --purge-source {req.slug}` first"
                    )
                if target.tier == "shared":
                    rev = current_revision(conn, schema=target.schema)
                    if rev != plan.revision:
                        raise InvalidInput(
                            f"the shared schema on {target.server} is at {rev}, the tenant at "
                            f"{plan.revision}: run `bizosctl schema sync` first"
                        )
    free = _free_bytes(ctl, target.server)
    reserve = int(os.environ.get(RESERVE_ENV, DEFAULT_RESERVE))
    need = sum(plan.bytes.values()) * 2 + reserve  # data and indexes, plus WAL, plus reserve
    if free is not None and free < need:
        raise InvalidInput(
            f"not enough space on {target.server}: {free // 2**20} MiB free, the move needs "
            f"about {need // 2**20} MiB (tenant data x2 + {reserve // 2**20} MiB reserve)"
        )
    return plan
