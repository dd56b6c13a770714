"""One tenant's figures for one local day, in one round trip to its database.

Revenue is what was paid (``transactions`` of kind ``payment``) within the day's bounds in the
tenant's zone, against the average day of the seven days before; invoices issued that day
against the same; the customers who paid most over the eight days; invoices unpaid past their
due date at the day's end; open and overdue tasks per assignee; the day's AI calls and cost
from the usage ledger. Amounts are summed in the currency most of the window's payments are in
(the digest does not convert currencies; payments in others are counted in ``other_currencies``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlalchemy import text

from bizosctl.tenancy.zones import day_bounds

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PRIOR_DAYS = 7
TOP_CUSTOMERS = 3
TOP_OWNERS = 5
OVERDUE_SHOWN = 5


class CustomerSpend(BaseModel):
    name: str
    amount: Decimal


class OverdueInvoice(BaseModel):
    number: str
    customer: str
    total: Decimal
    days_overdue: int


class OwnerTasks(BaseModel):
    member_id: uuid.UUID | None  # None: unassigned
    name: str | None = None  # filled in (decrypted) by the caller, never stored in the query
    open: int
    overdue: int


class Figures(BaseModel):
    """What the digest rests on: every insight names one of its fields."""

    day: dt.date
    zone: str
    currency: str
    revenue: Decimal
    revenue_prior_avg: Decimal
    payments: int
    invoices_issued: int
    invoices_issued_prior_avg: Decimal
    other_currencies: int
    top_customers: list[CustomerSpend]
    overdue_invoices: int
    overdue_amount: Decimal
    overdue_oldest: list[OverdueInvoice]
    tasks_open: int
    tasks_overdue: int
    tasks_by_owner: list[OwnerTasks]
    ai_calls: int
    ai_degraded: int
    ai_tokens: int
    ai_cost: Decimal

    @property
    def empty(self) -> bool:
        """Nothing happened and nothing is pending: a quiet day."""
        return not (
            self.payments
            or self.invoices_issued
            or self.overdue_invoices
            or self.tasks_open
            or self.ai_calls
            or self.revenue_prior_avg
        )


# One statement: every aggregate as a column (the planner runs them as sub-plans; one round
# trip whatever the tenant's size). RLS confines each to the session's tenant.
_FIGURES = text(
    """
WITH pay AS (
  SELECT t.amount, t.currency, t.occurred_at, i.customer_id
  FROM transactions AS t LEFT JOIN invoices AS i ON i.id = t.invoice_id
  WHERE t.kind = 'payment' AND t.occurred_at >= :prior_start AND t.occurred_at < :end
), cur AS (
  SELECT COALESCE((SELECT currency FROM pay GROUP BY currency ORDER BY count(*) DESC, currency
                   LIMIT 1), :default_currency) AS c
)
SELECT
  (SELECT c FROM cur) AS currency,
  (SELECT COALESCE(sum(amount), 0) FROM pay
    WHERE occurred_at >= :start AND currency = (SELECT c FROM cur)) AS revenue,
  (SELECT COALESCE(sum(amount), 0) FROM pay
    WHERE occurred_at < :start AND currency = (SELECT c FROM cur)) AS revenue_prior,
  (SELECT count(*) FROM pay WHERE occurred_at >= :start) AS payments,
  (SELECT count(*) FROM pay WHERE currency <> (SELECT c FROM cur)) AS other_currencies,
  (SELECT count(*) FROM invoices WHERE issued_on = :day) AS issued,
  (SELECT count(*) FROM invoices WHERE issued_on >= :prior_day AND issued_on < :day)
    AS issued_prior,
  (SELECT COALESCE(json_agg(x), '[]') FROM (
     SELECT c.name, sum(p.amount) AS amount FROM pay AS p JOIN customers AS c
       ON c.id = p.customer_id WHERE p.currency = (SELECT c FROM cur)
     GROUP BY c.id, c.name ORDER BY 2 DESC, c.name LIMIT :top_customers) AS x) AS top_customers,
  (SELECT count(*) FROM invoices WHERE status NOT IN ('paid', 'void', 'draft')
     AND due_on < :next_day) AS overdue,
  (SELECT COALESCE(sum(total), 0) FROM invoices WHERE status NOT IN ('paid', 'void', 'draft')
     AND due_on < :next_day) AS overdue_amount,
  (SELECT COALESCE(json_agg(x), '[]') FROM (
     SELECT i.number, c.name AS customer, i.total, (:day - i.due_on) AS days_overdue
     FROM invoices AS i JOIN customers AS c ON c.id = i.customer_id
     WHERE i.status NOT IN ('paid', 'void', 'draft') AND i.due_on < :next_day
     ORDER BY i.due_on, i.number LIMIT :overdue_shown) AS x) AS overdue_oldest,
  (SELECT count(*) FROM tasks WHERE status <> 'done') AS tasks_open,
  (SELECT count(*) FROM tasks WHERE status <> 'done' AND due_on < :next_day) AS tasks_overdue,
  (SELECT COALESCE(json_agg(x), '[]') FROM (
     SELECT t.assignee_id AS member_id, m.name_enc, count(*) AS open,
            count(*) FILTER (WHERE t.due_on < :next_day) AS overdue
     FROM tasks AS t LEFT JOIN members AS m ON m.id = t.assignee_id
     WHERE t.status <> 'done' GROUP BY t.assignee_id, m.name_enc
     ORDER BY 4 DESC, 3 DESC, t.assignee_id LIMIT :top_owners) AS x) AS by_owner,
  (SELECT count(*) FROM ai_usage WHERE at >= :start AND at < :end AND status = 'done')
    AS ai_calls,
  (SELECT count(*) FROM ai_usage WHERE at >= :start AND at < :end AND degraded) AS ai_degraded,
  (SELECT COALESCE(sum(tokens_in + tokens_out), 0) FROM ai_usage
    WHERE at >= :start AND at < :end) AS ai_tokens,
  (SELECT COALESCE(sum(cost), 0) FROM ai_usage WHERE at >= :start AND at < :end) AS ai_cost
"""
)


def collect(
    s: Session, *, day: dt.date, zone: ZoneInfo, default_currency: str = "IDR"
) -> tuple[Figures, dict[uuid.UUID, str]]:
    """The figures of ``day`` (a local calendar day in ``zone``) in ``s``'s tenant, and the
    encrypted names of the task owners shown (member id -> ``name_enc``) for the caller to
    decrypt."""
    start, end = day_bounds(day, zone)
    prior_start, _ = day_bounds(day - dt.timedelta(days=PRIOR_DAYS), zone)
    r = s.execute(
        _FIGURES,
        {
            "start": start,
            "end": end,
            "prior_start": prior_start,
            "day": day,
            "prior_day": day - dt.timedelta(days=PRIOR_DAYS),
            "next_day": day + dt.timedelta(days=1),
            "default_currency": default_currency,
            "top_customers": TOP_CUSTOMERS,
            "overdue_shown": OVERDUE_SHOWN,
            "top_owners": TOP_OWNERS,
        },
    ).one()
    owners: list[OwnerTasks] = []
    names: dict[uuid.UUID, str] = {}
    for o in r.by_owner:
        mid = uuid.UUID(o["member_id"]) if o["member_id"] else None
        if mid is not None and o.get("name_enc"):
            names[mid] = o["name_enc"]
        owners.append(OwnerTasks(member_id=mid, open=o["open"], overdue=o["overdue"]))
    figures = Figures(
        day=day,
        zone=zone.key,
        currency=r.currency,
        revenue=_money(r.revenue),
        revenue_prior_avg=_money(Decimal(r.revenue_prior) / PRIOR_DAYS),
        payments=r.payments,
        invoices_issued=r.issued,
        invoices_issued_prior_avg=(Decimal(r.issued_prior) / PRIOR_DAYS).quantize(Decimal("0.1")),
        other_currencies=r.other_currencies,
        top_customers=[CustomerSpend(**c) for c in r.top_customers],
        overdue_invoices=r.overdue,
        overdue_amount=_money(r.overdue_amount),
        overdue_oldest=[OverdueInvoice(**i) for i in r.overdue_oldest],
        tasks_open=r.tasks_open,
        tasks_overdue=r.tasks_overdue,
        tasks_by_owner=owners,
        ai_calls=r.ai_calls,
        ai_degraded=r.ai_degraded,
        ai_tokens=int(r.ai_tokens),
        ai_cost=Decimal(r.ai_cost).quantize(Decimal("0.000001")),
    )
    return figures, names


def _money(value: Any) -> Decimal:
    return Decimal(value).quantize(Decimal("0.01"))
