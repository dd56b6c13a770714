"""The digest's answer: exactly three insights, each naming the figure it rests on; the
prompt the gate masks and sends; the offline provider's rules that derive three insights
from the same figures when no model answers (or none is configured).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from bizosctl.digest.figures import Figures

FigureName = Literal[
    "revenue",
    "payments",
    "invoices_issued",
    "top_customers",
    "overdue_invoices",
    "tasks_overdue",
    "tasks_open",
    "ai_calls",
    "ai_cost",
]


class Insight(BaseModel):
    """One actionable observation on one figure."""

    figure: FigureName = Field(description="The figure (a field name above) it rests on.")
    title: str = Field(min_length=1, max_length=160)
    detail: str = Field(min_length=1, max_length=600)
    action: str = Field(min_length=1, max_length=300, description="What to do about it, today.")


class DigestInsights(BaseModel):
    """Exactly three insights."""

    insights: list[Insight] = Field(min_length=3, max_length=3)


SYSTEM = (
    "You write the morning digest for the CEO of a small business. From the figures given, "
    "return exactly three actionable insights as JSON matching the schema. Each insight names "
    "in `figure` the one figure it rests on (a field name shown in brackets), quotes its "
    "numbers exactly as given, and says in `action` what to do today. Use only the figures "
    "given; keep placeholders such as <PERSON_1> exactly as written; no greeting, no markdown."
)


def _amount(value: Decimal, currency: str) -> str:
    return f"{value:,.2f} {currency}"


def _pct(now: Decimal, before: Decimal) -> int | None:
    if before == 0:
        return None
    return round((now - before) / before * 100)


def prompt(f: Figures, owner_names: dict[str, str]) -> str:
    """The figures as text for the model (masked by the gate before it leaves).
    ``owner_names``: member id (str) -> name, for the task owners shown."""
    cur = f.currency
    lines = [
        f"Digest for {f.day.isoformat()} (time zone {f.zone}).",
        f"[revenue] paid that day: {_amount(f.revenue, cur)}; average day of the 7 before: "
        f"{_amount(f.revenue_prior_avg, cur)}.",
        f"[payments] payments received that day: {f.payments}.",
        f"[invoices_issued] invoices issued that day: {f.invoices_issued}; average day of the "
        f"7 before: {f.invoices_issued_prior_avg}.",
    ]
    if f.top_customers:
        top = "; ".join(f"{c.name}: {_amount(c.amount, cur)}" for c in f.top_customers)
        lines.append(f"[top_customers] paid most over the 8 days: {top}.")
    else:
        lines.append("[top_customers] no customer paid over the 8 days.")
    overdue = (
        f"[overdue_invoices] unpaid past due at the day's end: {f.overdue_invoices}, "
        f"{_amount(f.overdue_amount, cur)} in all"
    )
    if f.overdue_oldest:
        overdue += "; oldest: " + "; ".join(
            f"{i.number} ({i.customer}, {_amount(i.total, cur)}, {i.days_overdue} days)"
            for i in f.overdue_oldest
        )
    lines.append(overdue + ".")
    lines.append(f"[tasks_open] open tasks: {f.tasks_open}.")
    owners = "; ".join(
        f"{_owner(o.member_id, owner_names)}: {o.open} open, {o.overdue} overdue"
        for o in f.tasks_by_owner
    )
    lines.append(
        f"[tasks_overdue] overdue tasks: {f.tasks_overdue}"
        + (f"; by owner: {owners}." if owners else ".")
    )
    lines.append(f"[ai_calls] AI calls that day: {f.ai_calls} ({f.ai_degraded} answered offline).")
    lines.append(f"[ai_cost] AI cost that day: {f.ai_cost:.4f} USD, {f.ai_tokens} tokens.")
    return "\n".join(lines)


def _owner(member_id: object, names: dict[str, str]) -> str:
    if member_id is None:
        return "unassigned"
    return names.get(str(member_id), "a former member")


def offline_insights(f: Figures, owner_names: dict[str, str]) -> DigestInsights:
    """Three insights from the figures by rules, most pressing first: what the offline
    provider answers. Each candidate has a weight; the three heaviest on distinct figures win,
    and the quiet-day ones fill in so there are always three."""
    cur = f.currency
    found: list[tuple[float, Insight]] = []

    def add(weight: float, figure: FigureName, title: str, detail: str, action: str) -> None:
        found.append((weight, Insight(figure=figure, title=title, detail=detail, action=action)))

    change = _pct(f.revenue, f.revenue_prior_avg)
    if change is not None and abs(change) >= 20:
        up = change > 0
        add(
            55 + min(abs(change), 100) / 5,
            "revenue",
            f"Revenue {'up' if up else 'down'} {abs(change)}% on the 7-day average",
            f"{_amount(f.revenue, cur)} was paid on {f.day.isoformat()} against "
            f"{_amount(f.revenue_prior_avg, cur)} on an average day of the week before.",
            "Find out what drove it and repeat it."
            if up
            else "Check whether expected payments slipped and chase them today.",
        )
    elif f.revenue or f.revenue_prior_avg:
        add(
            30,
            "revenue",
            f"Revenue steady at {_amount(f.revenue, cur)}",
            f"Paid on {f.day.isoformat()}: {_amount(f.revenue, cur)}; the 7-day average is "
            f"{_amount(f.revenue_prior_avg, cur)}.",
            "Keep the collection rhythm; review the overdue list for upside.",
        )
    if f.overdue_invoices:
        oldest = f.overdue_oldest[0] if f.overdue_oldest else None
        detail = (
            f"{f.overdue_invoices} invoice(s) totalling {_amount(f.overdue_amount, cur)} are "
            "unpaid past their due date"
        )
        if oldest is not None:
            detail += (
                f"; the oldest is {oldest.number} from {oldest.customer} "
                f"({_amount(oldest.total, cur)}, {oldest.days_overdue} days overdue)"
            )
        add(
            75 + min(f.overdue_invoices, 20),
            "overdue_invoices",
            f"{f.overdue_invoices} overdue invoice(s), {_amount(f.overdue_amount, cur)}",
            detail + ".",
            f"Call {oldest.customer} about {oldest.number} today."
            if oldest
            else "Send reminders for the overdue invoices today.",
        )
    if f.tasks_overdue:
        worst = max(f.tasks_by_owner, key=lambda o: (o.overdue, o.open), default=None)
        who = _owner(worst.member_id, owner_names) if worst else "the team"
        add(
            55 + min(f.tasks_overdue, 20),
            "tasks_overdue",
            f"{f.tasks_overdue} task(s) overdue",
            f"{f.tasks_overdue} of {f.tasks_open} open task(s) are past their due date; "
            f"{who} holds the most ({worst.overdue if worst else 0} overdue).",
            f"Review {who}'s overdue tasks: re-plan or reassign them.",
        )
    if f.top_customers:
        top = f.top_customers[0]
        add(
            40,
            "top_customers",
            f"{top.name} paid most this week",
            f"{top.name} paid {_amount(top.amount, cur)} over the 8 days to "
            f"{f.day.isoformat()}"
            + (f", ahead of {f.top_customers[1].name}." if len(f.top_customers) > 1 else "."),
            f"Thank {top.name} and ask about their next order.",
        )
    issued = _pct(Decimal(f.invoices_issued), f.invoices_issued_prior_avg)
    if f.invoices_issued or f.invoices_issued_prior_avg:
        add(
            35 + (min(abs(issued), 100) / 10 if issued is not None else 0),
            "invoices_issued",
            f"{f.invoices_issued} invoice(s) issued",
            f"{f.invoices_issued} invoice(s) issued on {f.day.isoformat()} against "
            f"{f.invoices_issued_prior_avg} on an average day of the week before.",
            "Make sure finished work is invoiced promptly.",
        )
    if f.ai_degraded:
        add(
            45,
            "ai_calls",
            f"{f.ai_degraded} of {f.ai_calls} AI answers came from the offline fallback",
            "The AI model did not answer some calls in time; the offline rules answered them.",
            "Check `bizosctl ai check` and the provider's status.",
        )
    # Always available: a quiet day still gets three sensible lines.
    add(
        20 if f.tasks_open else 12,
        "tasks_open",
        f"{f.tasks_open} open task(s)" if f.tasks_open else "No open tasks",
        f"{f.tasks_open} task(s) are open, {f.tasks_overdue} of them overdue."
        if f.tasks_open
        else "The task board is empty.",
        "Check the board for blocked work."
        if f.tasks_open
        else "Plan this week's work on the board.",
    )
    add(
        15 if f.ai_calls else 10,
        "ai_cost",
        f"AI cost {f.ai_cost:.4f} USD" if f.ai_calls else "No AI use",
        f"{f.ai_calls} AI call(s), {f.ai_tokens} tokens, {f.ai_cost:.4f} USD on "
        f"{f.day.isoformat()}.",
        "Nothing to do: well within budget."
        if f.ai_calls
        else "Try the invoice pre-check or document search to save time.",
    )
    if not (f.revenue or f.revenue_prior_avg):
        add(
            25,
            "payments",
            "No payments in the last 8 days",
            f"No payment was recorded on {f.day.isoformat()} nor in the 7 days before.",
            "Check that payments are being recorded, and follow up on open invoices.",
        )
    chosen: list[Insight] = []
    for _, insight in sorted(found, key=lambda wi: -wi[0]):
        if all(c.figure != insight.figure for c in chosen):
            chosen.append(insight)
        if len(chosen) == 3:
            break
    return DigestInsights(insights=chosen)
