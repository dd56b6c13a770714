"""Tenants' plans and AI budgets: the plan's monthly price and AI budget come from the
``ai_plans`` setting; a tenant may have a budget of its own and says what happens once the
month's budget is spent (``refuse``, or answer ``offline``). Kept in the catalog (control
revision 0010); the spending itself is in the tenant's own database (``bizosctl.ai.ledger``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from pydantic import BaseModel

from bizosctl.errors import ConfigError, InvalidInput, NotFound

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings

OVER_BUDGET = ("refuse", "offline")


@dataclass(frozen=True)
class TenantPlan:
    """A tenant's commercial terms, from the catalog and the ``ai_plans`` setting."""

    tenant_id: uuid.UUID
    slug: str
    plan: str
    price: Decimal  # USD a month
    budget: Decimal | None  # USD a month for AI; None: no limit
    over_budget: str  # refuse | offline
    own_budget: bool = False  # the budget is the tenant's own, not the plan's


def plan_terms(settings: Settings, plan: str) -> tuple[Decimal, Decimal | None]:
    terms = settings.ai_plans.get(plan)
    if terms is None:
        raise ConfigError(
            f"plan {plan!r} is not in the ai_plans setting ({sorted(settings.ai_plans)})"
        )
    budget = terms.get("ai_budget")
    return Decimal(str(terms.get("price", 0))), None if budget is None else Decimal(str(budget))


def tenant_plan(ctl: Control, slug: str, settings: Settings | None = None) -> TenantPlan:
    from sqlalchemy import select

    from bizosctl.catalog.models import Tenant

    with ctl.catalog() as s:
        row = s.execute(
            select(Tenant.id, Tenant.slug, Tenant.plan, Tenant.ai_budget, Tenant.ai_over_budget)
            .where(Tenant.slug == slug, Tenant.status != "deleted")
        ).one_or_none()  # fmt: skip
    if row is None:
        raise NotFound(f"no tenant named {slug!r}")
    price, budget = plan_terms(settings or ctl.settings, row.plan)
    return TenantPlan(
        tenant_id=row.id,
        slug=row.slug,
        plan=row.plan,
        price=price,
        budget=row.ai_budget if row.ai_budget is not None else budget,
        over_budget=row.ai_over_budget,
        own_budget=row.ai_budget is not None,
    )


class PlanPublic(BaseModel):
    tenant: str
    plan: str
    price: Decimal
    ai_budget: Decimal | None
    budget_from: str  # plan | tenant
    over_budget: str


def public(t: TenantPlan, *, own_budget: bool) -> PlanPublic:
    return PlanPublic(
        tenant=t.slug,
        plan=t.plan,
        price=t.price,
        ai_budget=t.budget,
        budget_from="tenant" if own_budget else "plan",
        over_budget=t.over_budget,
    )


def parse_budget(value: str) -> Decimal | None:
    """``--budget``: USD a month (``5``, ``12.50``), or ``plan`` for the plan's."""
    if value.strip().lower() == "plan":
        return None
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise InvalidInput(f"--budget {value!r}: a number of USD a month, or 'plan'") from None
    if not amount.is_finite() or amount < 0 or amount >= 10**8:
        raise InvalidInput(f"--budget {value!r}: between 0 and 100000000 USD a month")
    return amount


_KEEP = object()


def set_terms(
    ctl: Control,
    slug: str,
    *,
    plan: str | None = None,
    budget: Decimal | object | None = _KEEP,
    over_budget: str | None = None,
    dry_run: bool = False,
) -> PlanPublic:
    """Change a tenant's plan, own AI budget (None: the plan's) or over-budget behaviour."""
    from sqlalchemy import select

    from bizosctl.catalog.models import Tenant

    if plan is not None:
        plan_terms(ctl.settings, plan)
    if over_budget is not None and over_budget not in OVER_BUDGET:
        raise InvalidInput(f"--over-budget {over_budget!r}: refuse or offline")
    with ctl.catalog() as s:
        row = s.execute(
            select(Tenant).where(Tenant.slug == slug, Tenant.status != "deleted").with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no tenant named {slug!r}")
        new_plan = plan or row.plan
        new_budget = row.ai_budget if budget is _KEEP else budget
        new_over = over_budget or row.ai_over_budget
        if not dry_run:
            row.plan, row.ai_budget, row.ai_over_budget = new_plan, new_budget, new_over  # type: ignore[assignment]
        price, plan_budget = plan_terms(ctl.settings, new_plan)
        terms = TenantPlan(
            tenant_id=row.id,
            slug=row.slug,
            plan=new_plan,
            price=price,
            budget=new_budget if new_budget is not None else plan_budget,  # type: ignore[arg-type]
            over_budget=new_over,
        )
    return public(terms, own_budget=new_budget is not None)
