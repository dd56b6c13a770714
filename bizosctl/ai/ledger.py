"""The usage ledger and the budgets: one ``ai_usage`` row per call in the tenant's own
database (its region), and the month's running total in ``ai_spend``.

A call to a priced model first *reserves* its worst-case cost (the masked prompt's bytes as
input tokens, ``max_output_tokens`` as output) in one statement: an upsert of the month's
``ai_spend`` row that only applies while the total stays within the budget, and the ledger row
(status ``reserved``) in the same transaction. The row lock of the upsert orders concurrent
callers of one tenant, and each re-checks the total it finds after the other committed, so
no number of threads or processes racing can spend past the budget. After the call the row is
*settled* (real tokens and cost; the difference goes back to the month's total). A process
that dies in between leaves its reservation counted: the budget errs on the safe side.
The ledger never holds the text, only counts.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING

from bizosctl.ai.plans import TenantPlan
from bizosctl.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import TextClause
    from sqlalchemy.orm import Session

    from bizosctl.config import Settings

MICRO = Decimal("0.000001")
UNLIMITED = Decimal("1000000000")
MILLION = Decimal(1_000_000)
MONTH_SQL = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"


def prices(settings: Settings, model: str) -> tuple[Decimal, Decimal]:
    """USD per token in and out for ``model`` (the ``ai_prices`` setting is per million)."""
    p = settings.ai_prices.get(model)
    if p is None:
        raise ConfigError(
            f"model {model!r} has no price in the ai_prices setting: add "
            f'"{model}": {{"input": USD, "output": USD}} per million tokens'
        )
    return Decimal(str(p.get("input", 0))) / MILLION, Decimal(str(p.get("output", 0))) / MILLION


def cost(settings: Settings, model: str, tokens_in: int, tokens_out: int) -> Decimal:
    p_in, p_out = prices(settings, model)
    return (p_in * tokens_in + p_out * tokens_out).quantize(MICRO, rounding=ROUND_CEILING)


def worst_case_tokens(text: str, system: str | None) -> int:
    """An upper bound of the input tokens: a token is at least one byte of UTF-8, and the
    request's framing (roles, schema) is a few dozen more."""
    return len(text.encode()) + len((system or "").encode()) + 64


@dataclass(frozen=True)
class Reservation:
    id: uuid.UUID
    amount: Decimal


@functools.cache
def _sql() -> dict[str, TextClause]:
    from sqlalchemy import text

    usage_cols = "tenant_id, period, member_id, feature, provider, model, status"
    return {
        "reserve": text(
            "WITH s AS ("
            " INSERT INTO ai_spend AS s (tenant_id, period, spent, calls)"
            f" SELECT :tid, {MONTH_SQL}, :amount, 1 WHERE :amount <= :budget"
            " ON CONFLICT (tenant_id, period) DO UPDATE"
            " SET spent = s.spent + EXCLUDED.spent, calls = s.calls + 1"
            " WHERE s.spent + EXCLUDED.spent <= :budget RETURNING s.period)"
            f" INSERT INTO ai_usage ({usage_cols}, reserved, entities)"
            " SELECT :tid, s.period, CAST(:member AS uuid), :feature, :provider, :model,"
            " 'reserved', :amount, CAST(:entities AS jsonb) FROM s RETURNING id"
        ),
        "spent": text(
            f"SELECT COALESCE((SELECT spent FROM ai_spend WHERE tenant_id = :tid AND period = "
            f"{MONTH_SQL}), 0)"
        ),
        "settle": text(
            "WITH u AS ("
            " UPDATE ai_usage SET status = 'done', provider = :provider, model = :model,"
            " tokens_in = :tokens_in, tokens_out = :tokens_out, cost = :cost,"
            " latency_ms = :latency_ms, overhead_ms = :overhead_ms, attempts = :attempts,"
            " degraded = :degraded, reason = :reason"
            " WHERE tenant_id = :tid AND id = :id AND status = 'reserved'"
            " RETURNING period, reserved)"
            " UPDATE ai_spend AS s SET spent = s.spent - u.reserved + :cost FROM u"
            " WHERE s.tenant_id = :tid AND s.period = u.period"
        ),
        "record": text(
            f"INSERT INTO ai_usage ({usage_cols}, tokens_in, tokens_out, latency_ms,"
            " overhead_ms, attempts, degraded, reason, entities)"
            f" VALUES (:tid, {MONTH_SQL}, CAST(:member AS uuid), :feature, :provider, :model,"
            " :status, :tokens_in, :tokens_out, :latency_ms, :overhead_ms, :attempts, :degraded,"
            " :reason, CAST(:entities AS jsonb)) RETURNING id"
        ),
    }


def reserve(
    session: Session,
    *,
    plan: TenantPlan,
    amount: Decimal,
    member: uuid.UUID | None,
    feature: str,
    provider: str,
    model: str,
    entities: dict[str, int],
) -> Reservation | None:
    """Hold ``amount`` against the month's budget and write the call's row; None (nothing
    written) when the budget would be exceeded."""
    row = session.execute(
        _sql()["reserve"],
        {
            "tid": plan.tenant_id,
            "amount": amount,
            "budget": UNLIMITED if plan.budget is None else plan.budget,
            "member": member,
            "feature": feature,
            "provider": provider,
            "model": model,
            "entities": json.dumps(entities),
        },
    ).one_or_none()
    return None if row is None else Reservation(id=row.id, amount=amount)


def spent(session: Session, *, tenant_id: uuid.UUID) -> Decimal:
    value: Decimal = session.execute(_sql()["spent"], {"tid": tenant_id}).scalar_one()
    return value


@dataclass(frozen=True)
class Outcome:
    """What a call came to, for its ledger row."""

    provider: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal = Decimal(0)
    latency_ms: float = 0.0
    overhead_ms: float = 0.0
    attempts: int = 0
    degraded: bool = False
    reason: str | None = None


def settle(
    session: Session, *, tenant_id: uuid.UUID, reservation: Reservation, outcome: Outcome
) -> None:
    session.execute(
        _sql()["settle"],
        {"tid": tenant_id, "id": reservation.id, **_values(outcome), "cost": outcome.cost},
    )


def record(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    member: uuid.UUID | None,
    feature: str,
    outcome: Outcome,
    entities: dict[str, int],
    status: str = "done",
) -> uuid.UUID:
    """A row for a call that reserved nothing (offline, or refused over budget)."""
    row_id: uuid.UUID = session.execute(
        _sql()["record"],
        {
            "tid": tenant_id,
            "member": member,
            "feature": feature,
            "status": status,
            "entities": json.dumps(entities),
            **_values(outcome),
        },
    ).scalar_one()
    return row_id


def _values(o: Outcome) -> dict[str, object]:
    return {
        "provider": o.provider,
        "model": o.model,
        "tokens_in": o.tokens_in,
        "tokens_out": o.tokens_out,
        "latency_ms": round(o.latency_ms, 3),
        "overhead_ms": round(o.overhead_ms, 3),
        "attempts": o.attempts,
        "degraded": o.degraded,
        "reason": o.reason,
    }
