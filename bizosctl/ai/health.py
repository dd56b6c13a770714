"""The gate's lines in ``bizosctl doctor``: cheap, no model is called (``ai check`` probes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bizosctl.errors import BizosError

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.doctor import Check


def ai_checks(ctl: Control) -> list[Check]:
    """The configured provider and its price, and every tenant's plan in ``ai_plans``."""
    from sqlalchemy import select

    from bizosctl.ai import ledger
    from bizosctl.ai.providers import close, configured
    from bizosctl.catalog.models import Tenant
    from bizosctl.doctor import Check

    s = ctl.settings
    checks: list[Check] = []
    try:
        provider = configured(s)
        close(provider)
        if provider is None:
            checks.append(Check(
                name="ai provider", ok=True, warning=s.env == "production",
                detail="offline: no model key is set, AI features answer with the offline "
                "provider (set BIZOS_GEMINI_API_KEY)",
            ))  # fmt: skip
        else:
            ledger.prices(s, provider.model)
            checks.append(Check(name="ai provider", ok=True,
                                detail=f"{provider.name} {provider.model}, priced"))  # fmt: skip
    except BizosError as exc:
        checks.append(Check(name="ai provider", ok=False, detail=exc.message))
    with ctl.catalog() as session:
        plans = set(session.execute(
            select(Tenant.plan).where(Tenant.status != "deleted").distinct()
        ).scalars())  # fmt: skip
    unknown = sorted(plans - set(s.ai_plans))
    checks.append(Check(
        name="ai plans", ok=not unknown,
        detail=f"tenants on plans missing from the ai_plans setting: {', '.join(unknown)}"
        if unknown else f"every tenant's plan is priced ({len(plans)} in use)",
    ))  # fmt: skip
    return checks
