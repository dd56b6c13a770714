"""What ``init`` and ``down`` would do, changing nothing: the plans their ``--dry-run`` prints.

Neither starts a server to find out: a home server that is not running is reported as one
that would be started, and what it holds then as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from bizosctl.catalog.control import CATALOG_DB, Control
from bizosctl.db.engines import get_engine, translate_errors


@dataclass
class InitPlan:
    home: Path
    would_create: list[str] = field(default_factory=list)
    #: False when the home server is not running: what the catalog holds was not checked
    catalog_checked: bool = True


def plan_init(ctl: Control) -> InitPlan:
    """The steps ``init_home`` would take, in its order."""
    from bizosctl.db.migrate import head

    settings = ctl.settings
    plan = InitPlan(home=settings.home)
    if settings.master_key is None and not settings.key_file.exists():
        plan.would_create.append(f"master key {settings.key_file}")
    cluster = ctl.home_cluster
    if not cluster.is_running():
        plan.would_create.append(f"start the {settings.home_region} server")
        plan.would_create.append("catalog database, catalog schema and region (where missing)")
        plan.catalog_checked = False
        return plan
    with translate_errors("catalog"):
        admin = get_engine(cluster.url("postgres"), pooled=False)
        with admin.connect() as conn:
            has_db = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": CATALOG_DB}
            ).first()
        if not has_db:
            plan.would_create += [
                "catalog database",
                "catalog schema",
                f"region {settings.home_region}",
            ]
            return plan
        with get_engine(cluster.url(CATALOG_DB), pooled=False).connect() as conn:
            has_version = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
            revision = (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if has_version
                else None
            )
            if revision is None:
                plan.would_create += ["catalog schema", f"region {settings.home_region}"]
                return plan
            if revision != head("control"):
                plan.would_create.append(f"catalog schema upgrade from {revision}")
            has_region = conn.execute(
                text("SELECT 1 FROM regions WHERE name = :n"), {"n": settings.home_region}
            ).first()
    if not has_region:
        plan.would_create.append(f"region {settings.home_region}")
    return plan


def plan_down(ctl: Control) -> list[str]:
    """The embedded servers (by region directory) ``stop_embedded`` would stop: those running."""
    from bizosctl.db.embedded import EmbeddedCluster

    regions_dir = ctl.settings.regions_dir
    if not regions_dir.is_dir():
        return []
    return [
        region_dir.name
        for region_dir in sorted(regions_dir.iterdir())
        if (region_dir / "pgdata" / "PG_VERSION").exists()
        and EmbeddedCluster(region_dir).is_running()
    ]
