"""``bizosctl usage``: tokens, cost and margin from the ledgers of every tenant.

Each tenant's ledger is in its own database; the report reads them with
:func:`bizosctl.fanout.for_each` over the tenants' placements (at most a few per server at
once) and adds them up, heaviest first. Revenue is the plan's monthly price prorated over the
window (a month is 365.25/12 days), so margin = revenue - cost says whether a tenant costs
more than it pays.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from bizosctl.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from sqlalchemy import TextClause

    from bizosctl.catalog.control import Control

BY = ("tenant", "member", "feature", "model")
MONTH = dt.timedelta(days=365.25 / 12)
_COLUMN = {"tenant": "''", "member": "COALESCE(member_id::text, '-')", "feature": "feature",
           "model": "model"}  # fmt: skip
CENT = Decimal("0.000001")


class UsageRow(BaseModel):
    key: str  # the tenant's slug, the member's id ("-": none), the feature or the model
    tenant: str | None  # by tenant and member: whose
    calls: int
    degraded: int
    refused: int
    tokens_in: int
    tokens_out: int
    cost: Decimal
    plan: str | None = None
    revenue: Decimal | None = None  # by tenant: the plan's price over the window
    margin: Decimal | None = None


class UsageSkipped(BaseModel):
    tenant: str
    reason: str


class UsageReport(BaseModel):
    since: dt.datetime
    until: dt.datetime
    by: str
    rows: list[UsageRow]
    total: UsageRow
    skipped: list[UsageSkipped]


def parse_until(value: str) -> dt.datetime:
    """``--until``: an ISO date or time (may be ahead), or a duration back from now."""
    from bizosctl.durations import parse_since

    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return parse_since(value, what="--until")
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def month_start(now: dt.datetime | None = None) -> dt.datetime:
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class _Target:
    slug: str
    server: str
    plan: str
    status: str


@functools.cache
def _sql(by: str) -> TextClause:
    from sqlalchemy import text

    col = _COLUMN[by]
    return text(
        f"SELECT {col} AS key, count(*) AS calls, count(*) FILTER (WHERE degraded) AS degraded,"
        " count(*) FILTER (WHERE status = 'refused') AS refused,"
        " COALESCE(sum(tokens_in), 0) AS tokens_in, COALESCE(sum(tokens_out), 0) AS tokens_out,"
        " COALESCE(sum(CASE WHEN status = 'reserved' THEN reserved ELSE cost END), 0) AS cost"
        " FROM ai_usage WHERE at >= :since AND at < :until GROUP BY 1"
    )


def usage_report(
    ctl: Control,
    *,
    tenant: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    by: str = "tenant",
) -> UsageReport:
    """Usage between ``since`` (default: the start of this month, UTC) and ``until`` (default:
    now), grouped ``by`` tenant, member, feature or model, heaviest (cost) first."""
    from sqlalchemy import select

    from bizosctl.ai.plans import plan_terms
    from bizosctl.ai.writer import flush_all
    from bizosctl.catalog.models import Route, Tenant
    from bizosctl.fanout import for_each
    from bizosctl.tenancy.router import tenant_session

    if by not in BY:
        raise InvalidInput(f"--by {by!r}: use one of {', '.join(BY)}")
    until = until or dt.datetime.now(dt.UTC)
    since = since or month_start(until)
    if since >= until:
        raise InvalidInput(f"--since ({since.isoformat()}) must be before --until")
    flush_all()  # this process's calls: settled before they are read
    with ctl.catalog() as s:
        q = (
            select(Tenant.slug, Route.server, Tenant.plan, Tenant.status)
            .join(Route, Route.tenant_id == Tenant.id)
            .where(Tenant.status.in_(("active", "read_only", "moving", "suspended")))
            .order_by(Tenant.slug)
        )
        if tenant is not None:
            q = q.where(Tenant.slug == tenant)
        targets = [_Target(*r) for r in s.execute(q).all()]
    if tenant is not None and not targets:
        raise NotFound(f"no tenant named {tenant!r}")
    skipped = [UsageSkipped(tenant=t.slug, reason="suspended: its data is not readable")
               for t in targets if t.status == "suspended"]  # fmt: skip
    live = [t for t in targets if t.status != "suspended"]

    def read(t: _Target) -> list[Any]:
        with tenant_session(ctl, t.slug, actor="bizosctl:usage", read_only=True) as session:
            return list(session.execute(_sql(by), {"since": since, "until": until}).all())

    rows: dict[tuple[str | None, str], UsageRow] = {}
    months = Decimal((until - since) / MONTH)
    for outcome in for_each(live, read, key=lambda t: t.server, parallel=8, per_key=4):
        t = outcome.item
        if not outcome.ok:
            skipped.append(UsageSkipped(tenant=t.slug, reason=str(outcome.error)))
            continue
        if by == "tenant":
            price, _ = plan_terms(ctl.settings, t.plan)
            revenue = (price * months).quantize(CENT)
            row = _add(rows, (t.slug, t.slug), t.slug, outcome.result or [])
            row.plan, row.revenue = t.plan, revenue
            row.margin = revenue - row.cost
            continue
        for r in outcome.result or []:
            who = t.slug if by == "member" else None
            _add(rows, (who, r.key), who, [r])
    ordered = sorted(rows.values(), key=lambda r: (-r.cost, -r.tokens_in - r.tokens_out, r.key))
    total = _total(ordered, with_margin=by == "tenant")
    return UsageReport(since=since, until=until, by=by, rows=ordered, total=total,
                       skipped=skipped)  # fmt: skip


def _add(
    rows: dict[tuple[str | None, str], UsageRow], key: tuple[str | None, str], tenant: str | None,
    found: list[Any],
) -> UsageRow:  # fmt: skip
    row = rows.get(key)
    if row is None:
        row = rows[key] = UsageRow(key=key[1], tenant=tenant, calls=0, degraded=0, refused=0,
                                   tokens_in=0, tokens_out=0, cost=Decimal(0))  # fmt: skip
    for r in found:
        row.calls += r.calls
        row.degraded += r.degraded
        row.refused += r.refused
        row.tokens_in += int(r.tokens_in)
        row.tokens_out += int(r.tokens_out)
        row.cost += r.cost
    return row


def _total(rows: list[UsageRow], *, with_margin: bool) -> UsageRow:
    total = UsageRow(key="total", tenant=None, calls=0, degraded=0, refused=0, tokens_in=0,
                     tokens_out=0, cost=Decimal(0))  # fmt: skip
    for r in rows:
        total.calls += r.calls
        total.degraded += r.degraded
        total.refused += r.refused
        total.tokens_in += r.tokens_in
        total.tokens_out += r.tokens_out
        total.cost += r.cost
    if with_margin:
        total.revenue = sum((r.revenue or Decimal(0) for r in rows), start=Decimal(0))
        total.margin = total.revenue - total.cost
    return total
