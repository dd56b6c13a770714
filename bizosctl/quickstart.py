"""``bizosctl quickstart``: two regions, one tenant per tier, sample data. Idempotent."""

from __future__ import annotations

from dataclasses import dataclass, field

from bizosctl.catalog.control import Control
from bizosctl.catalog.schemas import TenantDetail
from bizosctl.tenancy.home_plans import plan_init
from bizosctl.tenancy.lifecycle import get_tenant, list_tenants
from bizosctl.tenancy.provision import create_tenant
from bizosctl.tenancy.regions import ensure_region, init_home, region_exists
from bizosctl.tenancy.sample import load_sample_data

REGIONS = ("global", "id")
TENANTS = (
    # slug, name, tier, region
    ("acme", "Acme Corp", "shared", "global"),
    ("nusantara", "Nusantara Trading", "schema", "id"),
    ("garuda", "Garuda Enterprise", "isolated", "id"),
)


@dataclass
class QuickstartResult:
    changed: list[str] = field(default_factory=list)
    tenants: list[TenantDetail] = field(default_factory=list)


def run_quickstart(ctl: Control) -> QuickstartResult:
    result = QuickstartResult()
    result.changed += init_home(ctl).created
    for region in REGIONS:
        if ensure_region(ctl, region):
            result.changed.append(f"region {region}")
    existing = {t.slug: t for t in list_tenants(ctl)}
    for slug, name, tier, region in TENANTS:
        current = existing.get(slug)
        if current is None or current.status == "provisioning":
            create_tenant(
                ctl,
                slug=slug,
                name=name,
                tier=tier,
                region=region,
                owner_email=f"owner@{slug}.example",
            )
            result.changed.append(f"tenant {slug} ({tier}, {region})")
        if load_sample_data(ctl, slug):
            result.changed.append(f"sample data for {slug}")
    result.tenants = [get_tenant(ctl, slug) for slug, *_ in TENANTS]
    return result


def plan_quickstart(ctl: Control) -> list[str]:
    """What ``run_quickstart`` would add, in its words, changing nothing (``--dry-run``)."""
    from bizosctl.tenancy.lifecycle import count_rows

    init = plan_init(ctl)
    changes = list(init.would_create)
    catalog = init.catalog_checked and not any(
        c.startswith(("catalog database", "catalog schema")) and "upgrade" not in c for c in changes
    )
    for r in REGIONS:
        if f"region {r}" not in changes and (not catalog or not region_exists(ctl, r)):
            changes.append(f"region {r}")
    existing = {t.slug: t for t in list_tenants(ctl)} if catalog else {}
    for slug, _name, tier, region in TENANTS:
        current = existing.get(slug)
        if current is None or current.status == "provisioning":
            changes += [f"tenant {slug} ({tier}, {region})", f"sample data for {slug}"]
        elif not count_rows(ctl, slug).get("members"):
            changes.append(f"sample data for {slug}")
    return changes
