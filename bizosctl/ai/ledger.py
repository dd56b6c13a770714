"""The usage ledger and the budgets: one ``ai_usage`` row per call in the tenant's own
database (its region), and the month's running total in ``ai_spend``.

A call to a priced model first *reserves* its worst-case cost (the masked prompt's bytes as
input tokens, ``max_output_tokens`` as output) in one statement: an upsert of the month's
``ai_spend`` row that only applies while the total stays within the budget, and the ledger row
(status ``reserved``) in the same transaction. The row lock of the upsert orders concurrent
callers of one tenant, and each re-checks the total it finds after the other committed, so
no number of threads or processes racing can spend past the budget. After the call the row is
*settled* (real tokens and cost; the difference goes back to the month's total): by the
gate's background writer, or sent before the tenant's next reservation in its transaction
(:mod:`bizosctl.ai.writer`); until then the worst case counts. A process
that dies in between leaves its reservation counted: the budget errs on the safe side.
The ledger never holds the text, only counts.

Each write is one statement, its own transaction, sent with the tenant context in one round
trip (``tenant_statement``), and safe to run twice: the row's id is chosen here, so a retry
after a lost connection finds the row the first run may have committed instead of reserving
again.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, LiteralString

from bizosctl.ai.plans import TenantPlan
from bizosctl.errors import ConfigError

if TYPE_CHECKING:
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
    return _per_token(p.get("input", 0), p.get("output", 0))


@functools.lru_cache(maxsize=256)
def _per_token(per_million_in: float, per_million_out: float) -> tuple[Decimal, Decimal]:
    # parsed once per price, not on every call
    return Decimal(str(per_million_in)) / MILLION, Decimal(str(per_million_out)) / MILLION


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


_USAGE_COLS = "tenant_id, period, member_id, feature, provider, model, status"
# Statements in psycopg's %(name)s style: each runs alone, in one round trip, through
# bizosctl.tenancy.router.tenant_statement.
# Every statement can run twice (tenant_statement retries one whose connection had died, not
# knowing whether it committed): the row's id is the caller's, and a second run finds it.
RESERVE: LiteralString = (
    "WITH prior AS (SELECT id FROM ai_usage WHERE tenant_id = %(tid)s AND id = %(id)s),"
    " s AS ("
    " INSERT INTO ai_spend AS s (tenant_id, period, spent, calls)"
    f" SELECT %(tid)s, {MONTH_SQL}, %(amount)s, 1"
    " WHERE %(amount)s <= %(budget)s AND NOT EXISTS (SELECT FROM prior)"
    " ON CONFLICT (tenant_id, period) DO UPDATE"
    " SET spent = s.spent + EXCLUDED.spent, calls = s.calls + 1"
    " WHERE s.spent + EXCLUDED.spent <= %(budget)s RETURNING s.period),"
    f" u AS (INSERT INTO ai_usage (id, {_USAGE_COLS}, reserved, entities)"
    " SELECT %(id)s, %(tid)s, s.period, CAST(%(member)s AS uuid), %(feature)s, %(provider)s,"
    " %(model)s, 'reserved', %(amount)s, CAST(%(entities)s AS jsonb) FROM s RETURNING id)"
    " SELECT id FROM u UNION ALL SELECT id FROM prior"
)
SPENT: LiteralString = (
    "SELECT COALESCE((SELECT spent FROM ai_spend WHERE tenant_id = %(tid)s AND period = "
    f"{MONTH_SQL}), 0)"
)
SETTLE: LiteralString = (
    "WITH u AS ("
    " UPDATE ai_usage SET status = 'done', provider = %(provider)s, model = %(model)s,"
    " tokens_in = %(tokens_in)s, tokens_out = %(tokens_out)s, cost = %(cost)s,"
    " latency_ms = %(latency_ms)s, overhead_ms = %(overhead_ms)s, attempts = %(attempts)s,"
    " degraded = %(degraded)s, reason = %(reason)s"
    " WHERE tenant_id = %(tid)s AND id = %(id)s AND status = 'reserved'"
    " RETURNING period, reserved)"
    " UPDATE ai_spend AS s SET spent = s.spent - u.reserved + %(cost)s FROM u"
    " WHERE s.tenant_id = %(tid)s AND s.period = u.period"
)
RECORD: LiteralString = (
    f"INSERT INTO ai_usage (id, {_USAGE_COLS}, tokens_in, tokens_out, latency_ms,"
    " overhead_ms, attempts, degraded, reason, entities)"
    f" VALUES (%(id)s, %(tid)s, {MONTH_SQL}, CAST(%(member)s AS uuid), %(feature)s, %(provider)s,"
    " %(model)s, %(status)s, %(tokens_in)s, %(tokens_out)s, %(latency_ms)s, %(overhead_ms)s,"
    " %(attempts)s, %(degraded)s, %(reason)s, CAST(%(entities)s AS jsonb))"
    " ON CONFLICT (tenant_id, id) DO NOTHING"
)

#: one statement and its parameters
Statement = tuple[LiteralString, Mapping[str, Any]]
#: runs one statement in the tenant's database and returns its first row: ``Run(sql, params)``
#: (bizosctl.tenancy.router.tenant_statement with the tenant's route)
Run = Callable[[LiteralString, Mapping[str, Any]], "tuple[Any, ...] | None"]


def reserve(
    run: Run,
    *,
    plan: TenantPlan,
    amount: Decimal,
    member: uuid.UUID | None,
    feature: str,
    provider: str,
    model: str,
    entities: dict[str, int],
    row_id: uuid.UUID | None = None,
) -> Reservation | None:
    """Hold ``amount`` against the month's budget and write the call's row; None (nothing
    written) when the budget would be exceeded. ``row_id``: the row's id (sent again with
    the same id, the reservation is held once)."""
    row = run(
        RESERVE,
        {
            "id": row_id or uuid.uuid4(),
            "tid": plan.tenant_id,
            "amount": amount,
            "budget": UNLIMITED if plan.budget is None else plan.budget,
            "member": member,
            "feature": feature,
            "provider": provider,
            "model": model,
            "entities": json.dumps(entities),
        },
    )
    return None if row is None else Reservation(id=row[0], amount=amount)


def spent(run: Run, *, tenant_id: uuid.UUID) -> Decimal:
    row = run(SPENT, {"tid": tenant_id})
    assert row is not None
    value: Decimal = row[0]
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


def settle(run: Run, *, tenant_id: uuid.UUID, reservation: Reservation, outcome: Outcome) -> None:
    run(*settlement(tenant_id=tenant_id, reservation=reservation, outcome=outcome))


def settlement(*, tenant_id: uuid.UUID, reservation: Reservation, outcome: Outcome) -> Statement:
    """The statement that settles ``reservation`` (what :func:`settle` runs)."""
    return SETTLE, {"tid": tenant_id, "id": reservation.id, **_values(outcome),
                    "cost": outcome.cost}  # fmt: skip


def record(
    run: Run,
    *,
    tenant_id: uuid.UUID,
    member: uuid.UUID | None,
    feature: str,
    outcome: Outcome,
    entities: dict[str, int],
    status: str = "done",
) -> uuid.UUID:
    """A row for a call that reserved nothing (offline, or refused over budget)."""
    row_id = uuid.uuid4()
    run(
        RECORD,
        {
            "id": row_id,
            "tid": tenant_id,
            "member": member,
            "feature": feature,
            "status": status,
            "entities": json.dumps(entities),
            **_values(outcome),
        },
    )
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
