"""``bizosctl ai`` (check, budget) and ``bizosctl usage``: the LLM gate's face."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from bizosctl.cli.output import (
    DryRunOpt,
    JsonOpt,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
    table,
)

if TYPE_CHECKING:
    from bizosctl.ai.plans import PlanPublic
    from bizosctl.catalog.control import Control

app = typer.Typer(
    help="The LLM gate: which provider answers, whether it is reachable, tenants' AI budgets.\n\n"
    "Example: bizosctl ai check --json",
    no_args_is_help=True,
)


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


@app.command("check")
@handle_errors
def check(
    probe: bool = typer.Option(
        True, "--probe/--no-probe", help="Send one tiny request (no tenant data) to the model."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Which provider the gate calls, whether it answers, and its breaker's state.

    Exit 1 when a configured model does not answer (the gate then answers offline, degraded).

    Example: bizosctl ai check --json
    """
    from bizosctl.ai.gate import get_gate

    ctl = _ctl()
    gate = get_gate(ctl)
    s = gate.settings
    provider = gate.provider
    reachable, reason, ms = gate.probe() if probe else (None, None, 0.0)
    state = gate.breaker_state()
    if provider is None:
        endpoint = None
    elif provider.name == "gemini":
        endpoint = _shown(s.gemini_base_url or "https://generativelanguage.googleapis.com")
    else:
        endpoint = _shown(s.openai_base_url)
    doc: dict[str, Any] = {
        "provider": provider.name if provider else "offline",
        "model": provider.model if provider else "offline",
        "endpoint": endpoint,
        "key_set": provider is not None,
        "reachable": reachable,
        "error": reason,
        "probe_ms": ms if probe and provider else None,
        "breaker": {
            "state": state.state,
            "failures": state.failures,
            "retry_in": round(state.retry_in, 3),
        },
        "timeout": s.ai_timeout,
        "deadline": s.ai_deadline,
    }
    if provider is None:
        doc["note"] = (
            "no model key is set: every AI feature answers with the offline provider; set "
            "BIZOS_GEMINI_API_KEY (or BIZOS_OPENAI_API_KEY and BIZOS_OPENAI_BASE_URL)"
        )
    if json_out:
        print_json(doc)
    else:
        out = stdout_console()
        out.print(f"provider  {doc['provider']} ({doc['model']})", markup=False)
        if doc["endpoint"]:
            out.print(f"endpoint  {doc['endpoint']}", markup=False)
        if probe and provider:
            verdict = "yes" if reachable else f"no ({reason})"
            out.print(f"reachable {verdict} in {ms:.0f} ms", markup=False)
        out.print(f"breaker   {state.state} (failures {state.failures})", markup=False)
        if "note" in doc:
            stderr_console().print(f"[yellow]note:[/] {doc['note']}")
    if probe and provider and not reachable:
        raise typer.Exit(1)


def _shown(url: str) -> str:
    """A base URL without user info, query or fragment (where a key could hide)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@app.command("budget")
@handle_errors
def budget(
    tenant: str = typer.Argument(..., help="The tenant's slug."),
    plan: str | None = typer.Option(None, "--plan", help="A plan of the ai_plans setting."),
    amount: str | None = typer.Option(
        None, "--budget", help="USD a month for AI (e.g. 25), or 'plan' for the plan's budget."
    ),
    over_budget: str | None = typer.Option(
        None, "--over-budget", help="Once the month's budget is spent: refuse | offline."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Show or change a tenant's plan, AI budget and what happens over budget.

    Example: bizosctl ai budget acme --plan pro --budget 25 --over-budget offline
    """
    from bizosctl.ai.plans import parse_budget, set_terms, tenant_plan

    ctl = _ctl()
    if plan is None and amount is None and over_budget is None:
        t = tenant_plan(ctl, tenant)
        from bizosctl.ai.plans import public

        result = public(t, own_budget=t.own_budget)
    else:
        kw: dict[str, Any] = {"plan": plan, "over_budget": over_budget, "dry_run": dry_run}
        if amount is not None:
            kw["budget"] = parse_budget(amount)
        result = set_terms(ctl, tenant, **kw)
    _render_plan(result, dry_run=dry_run, json_out=json_out)


def _render_plan(p: PlanPublic, *, dry_run: bool, json_out: bool) -> None:
    if json_out:
        print_json({"dry_run": True, "plan": p} if dry_run else {"plan": p})
        return
    budget = "no limit" if p.ai_budget is None else f"{p.ai_budget:.2f} USD a month"
    prefix = "would set: " if dry_run else ""
    stdout_console().print(
        f"{prefix}{p.tenant}: plan {p.plan} ({p.price:.2f} USD a month), AI budget {budget} "
        f"(from the {p.budget_from}), over budget: {p.over_budget}",
        markup=False,
    )


def usage(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant."),
    since: str | None = typer.Option(
        None, "--since", help="From (ISO date/time, or 7d back); default: this month's start."
    ),
    until: str | None = typer.Option(None, "--until", help="Until (ISO date/time); default: now."),
    by: str = typer.Option("tenant", "--by", help="Group by tenant, member, feature or model."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV on stdout."),
    json_out: bool = JsonOpt,
) -> None:
    """AI tokens, cost and margin (against the plan's price) from every tenant's ledger,
    heaviest first.

    Example: bizosctl usage --since 2026-11-01 --until 2026-12-01 --by tenant --json
    """
    from bizosctl.ai.usage import usage_report
    from bizosctl.durations import parse_since
    from bizosctl.errors import InvalidInput

    if csv_out and json_out:
        raise InvalidInput("--csv and --json: choose one")
    report = usage_report(
        _ctl(),
        tenant=tenant,
        since=parse_since(since) if since else None,
        until=_until(until) if until else None,
        by=by,
    )
    for s in report.skipped:
        stderr_console().print(f"[yellow]skipped[/] {s.tenant}: {s.reason}", markup=True)
    if json_out:
        print_json(report)
        return
    columns = ["key", "tenant", "plan", "calls", "degraded", "refused", "tokens_in",
               "tokens_out", "cost", "revenue", "margin"]  # fmt: skip
    lines = [[getattr(r, c) for c in columns] for r in [*report.rows, report.total]]
    if csv_out:
        import csv
        import sys

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(columns)
        w.writerows([["" if v is None else v for v in line] for line in lines])
        return
    span = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC"
    title = f"AI usage by {report.by}, {span}"
    stdout_console().print(table(title, columns, lines))


def _until(value: str) -> Any:
    from bizosctl.ai.usage import parse_until

    return parse_until(value)


def register(root: typer.Typer) -> None:
    root.command("usage")(handle_errors(usage))
