"""The LLM gate against loopback servers that answer like Gemini and an OpenAI-compatible API:
masking out and restoring back, structured output, retries, Retry-After, timeouts, the
breaker, the offline fallback, the ledger and budgets under concurrency."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import kill_tenant_backends
from pydantic import BaseModel
from sqlalchemy import text

from bizosctl.ai import ledger
from bizosctl.ai.gate import TERMS_TTL, Gate
from bizosctl.ai.plans import set_terms
from bizosctl.ai.usage import usage_report
from bizosctl.ai.writer import flush_all
from bizosctl.catalog.control import Control
from bizosctl.config import Settings
from bizosctl.errors import BudgetExceeded, InvalidInput, OperationFailed
from bizosctl.tenancy.router import tenant_session
from tests.ai_fakes import FakeModel

PROMPT = "Please remind budi.santoso@example.co.id (0812-3456-7890) about invoice INV-2026-0042."


class Clock:
    """Time for the breaker and the backoff: advanced by the gate's sleeps, never slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


class Verdict(BaseModel):
    valid: bool
    reason: str


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModel]:
    fake = FakeModel()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def tenant(fleet: Control) -> str:
    from bizosctl.tenancy.provision import create_tenant

    slug = "aigate"
    create_tenant(fleet, slug=slug, name="AI gate", tier="schema", region="id")
    set_terms(fleet, slug, plan="pro")
    return slug


_open: list[Gate] = []


@pytest.fixture(autouse=True)
def _close_gates() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def make_gate(
    ctl: Control, fake: FakeModel, *, kind: str = "gemini", clock: Clock | None = None, **kw: Any
) -> Gate:
    options: dict[str, Any] = {
        "ai_timeout": 5,  # generous: a loaded machine must not turn answers into timeouts
        "ai_deadline": 30,
        "ai_backoff": 0.1,
        "ai_retries": 2,
        "ai_breaker_failures": 3,
        "ai_breaker_cooldown": 30,
        "ai_max_output_tokens": 50,
    }
    if kind == "gemini":
        options |= {"ai_provider": "gemini", "gemini_api_key": "k", "gemini_base_url": fake.url}
    elif kind == "openai":
        options |= {"ai_provider": "openai", "openai_api_key": "k",
                    "openai_base_url": fake.url + "/v1"}  # fmt: skip
    else:
        options |= {"ai_provider": "offline"}
    clock = clock or Clock()
    gate = Gate(ctl, settings=Settings(**(options | kw)), clock=clock, sleep=clock.sleep)
    _open.append(gate)
    return gate


def rows(ctl: Control, slug: str, usage_id: Any = None) -> list[Any]:
    sql = "SELECT * FROM ai_usage" + (" WHERE id = :id" if usage_id else "") + " ORDER BY at"
    assert flush_all()  # the settlements are written in the background
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        return list(s.execute(text(sql), {"id": usage_id}).mappings())


def test_offline_by_default_masks_records_and_restores(
    ctl: Control, model: FakeModel, tenant: str
) -> None:
    model.reset()
    gate = make_gate(ctl, model, kind="offline")
    answer = gate.ask(tenant, feature="test.offline", prompt=PROMPT)
    assert model.calls == 0
    assert (answer.provider, answer.degraded, answer.reason) == ("offline", False, None)
    # The offline answer is the prompt's first sentence, restored for the tenant's eyes.
    assert "budi.santoso@example.co.id" in answer.text
    row = rows(ctl, tenant, answer.usage_id)[0]
    assert (row["provider"], row["status"], row["cost"], row["degraded"]) == (
        "offline", "done", Decimal(0), False)  # fmt: skip
    assert row["entities"] == {"EMAIL": 1, "PHONE": 1}
    assert row["feature"] == "test.offline"


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_the_model_sees_placeholders_and_the_answer_is_restored(
    ctl: Control, model: FakeModel, tenant: str, kind: str
) -> None:
    model.reset()
    gate = make_gate(ctl, model, kind=kind)
    answer = gate.ask(tenant, feature="test.echo", prompt=PROMPT, system="Be brief.")
    sent = model.raw[0].decode()
    assert "budi.santoso" not in sent and "3456" not in sent
    assert "<EMAIL_1>" in sent and "<PHONE_1>" in sent and "INV-2026-0042" in sent
    # The fake echoes the masked prompt; the gate puts the values back.
    assert answer.text == PROMPT
    assert (answer.provider, answer.degraded, answer.attempts) == (kind, False, 1)
    row = rows(ctl, tenant, answer.usage_id)[0]
    assert row["status"] == "done" and row["tokens_out"] == 50
    assert row["tokens_in"] == answer.tokens_in > 64
    expected = ledger.cost(gate.settings, gate.provider.model, answer.tokens_in, 50)  # type: ignore[union-attr]
    assert row["cost"] == answer.cost == expected > 0
    assert row["reserved"] >= row["cost"]
    assert row["overhead_ms"] > 0 and row["latency_ms"] >= row["overhead_ms"]


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_structured_output_is_validated_and_retried_once(
    ctl: Control, model: FakeModel, tenant: str, kind: str
) -> None:
    good = json.dumps({"valid": False, "reason": "mail <EMAIL_1> first"})
    model.reset("json:not a verdict", f"json:{good}")
    gate = make_gate(ctl, model, kind=kind)
    answer = gate.ask(tenant, feature="test.verdict", prompt=PROMPT, schema=Verdict)
    assert model.calls == 2 and not answer.degraded
    assert answer.data == Verdict(valid=False, reason="mail budi.santoso@example.co.id first")
    body = model.bodies[0]
    if kind == "gemini":
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert body["generationConfig"]["responseJsonSchema"]["title"] == "Verdict"
    else:
        assert body["response_format"]["json_schema"]["schema"]["title"] == "Verdict"
    # Both answers were paid for.
    assert answer.tokens_out == 100


def test_malformed_twice_falls_back_to_the_offline_rule(
    ctl: Control, model: FakeModel, tenant: str
) -> None:
    model.reset("json:nope", "json:{}", "ok")
    gate = make_gate(ctl, model)
    answer = gate.ask(
        tenant, feature="test.verdict", prompt=PROMPT, schema=Verdict,
        offline=lambda masked: Verdict(valid=True, reason=f"offline: {masked[:20]}"),
    )  # fmt: skip
    assert model.calls == 2
    assert (answer.provider, answer.degraded, answer.reason) == ("offline", True, "malformed")
    assert answer.data.valid is True and answer.data.reason.startswith("offline: Please")
    row = rows(ctl, tenant, answer.usage_id)[0]
    assert (row["degraded"], row["reason"], row["tokens_out"]) == (True, "malformed", 100)
    assert row["cost"] > 0  # the malformed answers were billed by the provider


def test_server_errors_are_retried_with_backoff(
    ctl: Control, model: FakeModel, tenant: str
) -> None:
    model.reset("500", "500", "ok")
    clock = Clock()
    gate = make_gate(ctl, model, clock=clock)
    answer = gate.ask(tenant, feature="test.retry", prompt="hello")
    assert (model.calls, answer.attempts, answer.degraded) == (3, 3, False)
    assert len(clock.waits) == 2 and 0.1 <= clock.waits[0] <= 0.11 and 0.2 <= clock.waits[1] <= 0.22
    assert gate.breaker_state().state == "closed"  # a success resets the count


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_429_retry_after_is_honoured(
    ctl: Control, model: FakeModel, tenant: str, kind: str
) -> None:
    model.reset("429:2", "ok")
    clock = Clock()
    gate = make_gate(ctl, model, kind=kind, clock=clock)
    answer = gate.ask(tenant, feature="test.429", prompt="hello")
    assert clock.waits == [2.0] and answer.attempts == 2 and not answer.degraded


def test_429_longer_than_the_deadline_keeps_the_provider_out(
    ctl: Control, model: FakeModel, tenant: str
) -> None:
    model.reset("429:3600")
    clock = Clock()
    gate = make_gate(ctl, model, clock=clock)
    first = gate.ask(tenant, feature="test.429", prompt="hello")
    assert (first.degraded, first.reason, clock.waits) == (True, "rate-limited", [])
    state = gate.breaker_state()
    assert state.state == "open" and 3599 <= state.retry_in <= 3600
    second = gate.ask(tenant, feature="test.429", prompt="hello")
    assert model.calls == 1 and (second.reason, second.attempts) == ("breaker-open", 0)


def test_breaker_opens_skips_then_probes(ctl: Control, model: FakeModel, tenant: str) -> None:
    model.reset(default="500")
    clock = Clock()
    gate = make_gate(ctl, model, clock=clock)
    first = gate.ask(tenant, feature="test.breaker", prompt="hello")
    assert (first.reason, model.calls) == ("server-error", 3)
    assert gate.breaker_state().state == "open"
    # While open: answered offline at once, the provider is not asked.
    for _ in range(5):
        skipped = gate.ask(tenant, feature="test.breaker", prompt="hello")
        assert (skipped.reason, skipped.provider, skipped.attempts) == (
            "breaker-open",
            "offline",
            0,
        )
    assert model.calls == 3
    # After the cool-down one probe goes; it fails: open again, one attempt only.
    clock.now += 30
    probe = gate.ask(tenant, feature="test.breaker", prompt="hello")
    assert (model.calls, probe.attempts, gate.breaker_state().state) == (4, 1, "open")
    clock.now += 30
    model.reset(default="ok")
    healed = gate.ask(tenant, feature="test.breaker", prompt="hello")
    assert (healed.degraded, healed.provider, gate.breaker_state().state) == (
        False,
        "gemini",
        "closed",
    )
    row = rows(ctl, tenant, skipped.usage_id)[0]
    assert (row["degraded"], row["reason"], row["attempts"], row["cost"]) == (
        True, "breaker-open", 0, Decimal(0))  # fmt: skip
    # While open nothing is reserved: one transaction per call, the provider is not named.
    assert (row["provider"], row["reserved"], row["status"]) == ("offline", Decimal(0), "done")


def test_half_open_lets_one_probe_through_at_a_time(
    ctl: Control, model: FakeModel, tenant: str
) -> None:
    model.reset("slow")
    clock = Clock()
    gate = make_gate(ctl, model, clock=clock, ai_timeout=20)
    for _ in range(3):
        gate.breaker.failure("server-error")
    clock.now += 30
    results: list[Any] = []
    prober = threading.Thread(
        target=lambda: results.append(gate.ask(tenant, feature="test.probe", prompt="a"))
    )
    prober.start()
    deadline = 200
    while model.calls == 0 and deadline:  # wait for the probe to reach the server
        threading.Event().wait(0.05)
        deadline -= 1
    other = gate.ask(tenant, feature="test.probe", prompt="b")
    assert other.reason == "breaker-open" and model.calls == 1
    model.release.set()
    prober.join(30)
    assert results[0].degraded is False and gate.breaker_state().state == "closed"


def test_a_slow_answer_times_out_and_falls_back(
    ctl: Control, model: FakeModel, tenant: str
) -> None:
    model.reset(default="slow")
    gate = make_gate(ctl, model, ai_timeout=0.2, ai_retries=0)
    try:
        answer = gate.ask(tenant, feature="test.slow", prompt="Budget meeting at ten. Bring notes.")
    finally:
        model.release.set()
    assert (answer.degraded, answer.reason, answer.provider) == (True, "timeout", "offline")
    assert answer.text == "Budget meeting at ten. Bring notes."


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_a_body_that_is_not_json_is_retried_once(
    ctl: Control, model: FakeModel, tenant: str, kind: str
) -> None:
    model.reset(default="garbage")
    gate = make_gate(ctl, model, kind=kind)
    answer = gate.ask(tenant, feature="test.garbage", prompt="hello")
    assert (answer.reason, model.calls) == ("malformed", 2)


def test_an_unreachable_provider_is_a_connect_failure(ctl: Control, tenant: str) -> None:
    dead = FakeModel()
    dead.close()
    gate = make_gate(ctl, dead, ai_retries=0)
    answer = gate.ask(tenant, feature="test.dead", prompt="hello")
    assert (answer.degraded, answer.reason) == (True, "connect")


# -- budgets ----------------------------------------------------------------------------------
@pytest.fixture
def budget_tenant(ctl: Control, make_tenant: Any) -> str:
    return make_tenant(tier="shared", region="global")  # type: ignore[no-any-return]


def one_call_cost(gate: Gate, prompt: str) -> Decimal:
    """What the fake bills for ``prompt``: exactly the gate's worst case (no placeholders)."""
    assert gate.provider is not None
    return ledger.cost(gate.settings, gate.provider.model,
                       ledger.worst_case_tokens(prompt, None), 50)  # fmt: skip


def test_over_budget_is_refused_with_a_clear_error(
    ctl: Control, model: FakeModel, budget_tenant: str
) -> None:
    model.reset()
    clock = Clock()
    gate = make_gate(ctl, model, gemini_model="gemini-2.5-pro", clock=clock)
    price = one_call_cost(gate, "hello")
    set_terms(ctl, budget_tenant, budget=price * 2)
    gate.ask(budget_tenant, feature="test.budget", prompt="hello")
    gate.ask(budget_tenant, feature="test.budget", prompt="hello")
    with pytest.raises(BudgetExceeded, match=r"has spent its AI budget for this month"):
        gate.ask(budget_tenant, feature="test.budget", prompt="hello")
    assert model.calls == 2
    statuses = [r["status"] for r in rows(ctl, budget_tenant)]
    assert statuses == ["done", "done", "refused"]
    set_terms(ctl, budget_tenant, over_budget="offline")
    clock.now += TERMS_TTL  # a gate keeps a tenant's terms that long
    answer = gate.ask(budget_tenant, feature="test.budget", prompt="hello")
    assert (answer.provider, answer.degraded, answer.reason) == ("offline", True, "over-budget")
    assert model.calls == 2


def test_racing_threads_never_overspend(ctl: Control, model: FakeModel, budget_tenant: str) -> None:
    model.reset()
    gate = make_gate(ctl, model, gemini_model="gemini-2.5-pro")
    prompt = "Summarise the week."
    price = one_call_cost(gate, prompt)
    set_terms(ctl, budget_tenant, budget=price * Decimal("5.5"))
    start = threading.Barrier(16)
    outcomes: list[str] = []

    def call() -> None:
        start.wait()
        try:
            gate.ask(budget_tenant, feature="test.race", prompt=prompt)
            outcomes.append("ok")
        except BudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes).count("ok") == 5 and outcomes.count("refused") == 11
    assert flush_all()  # the settlements are written in the background
    with tenant_session(ctl, budget_tenant, actor="test", read_only=True) as s:
        total = s.execute(text("SELECT sum(cost) FROM ai_usage WHERE status = 'done'")).scalar_one()
        counter = s.execute(text("SELECT spent FROM ai_spend")).scalar_one()
    assert total == counter == price * 5 <= price * Decimal("5.5")


def test_the_ledger_moves_with_its_tenant(
    ctl: Control, model: FakeModel, make_tenant: Any, cli: Any
) -> None:
    model.reset()
    slug = make_tenant(tier="shared", region="id")
    gate = make_gate(ctl, model)
    first = gate.ask(slug, feature="test.move", prompt="before the move")
    r = cli("tenant", "move", slug, "--to-tier", "isolated", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["tables"]["ai_usage"]["match"] and report["tables"]["ai_spend"]["match"]
    second = gate.ask(slug, feature="test.move", prompt="after the move")
    moved = rows(ctl, slug)
    assert [row["id"] for row in moved] == [first.usage_id, second.usage_id]
    assert flush_all()  # the settlements are written in the background
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        spent = s.execute(text("SELECT spent FROM ai_spend")).scalar_one()
    assert spent == first.cost + second.cost


def test_a_feature_name_must_be_plain(ctl: Control, model: FakeModel, tenant: str) -> None:
    gate = make_gate(ctl, model, kind="offline")
    with pytest.raises(InvalidInput, match=r"^feature 'Digest!': lower-case letters, digits"):
        gate.ask(tenant, feature="Digest!", prompt="x")


RACER = """
import sys
from bizosctl.ai.gate import ask
from bizosctl.catalog.control import get_control
from bizosctl.errors import BudgetExceeded
ctl = get_control()
ctl.route(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
ok = refused = 0
for _ in range(2):
    try:
        ask(ctl, sys.argv[1], feature="test.race", prompt="Summarise the week.")
        ok += 1
    except BudgetExceeded:
        refused += 1
print(ok, refused, flush=True)
"""


def pro_gate(ctl: Control, model: FakeModel, prompt: str) -> tuple[Gate, Decimal]:
    """A gate on ``model`` (reset) as gemini-2.5-pro, as in :func:`child_gate`, and what one
    call of ``prompt`` costs."""
    model.reset()
    gate = make_gate(ctl, model, gemini_model="gemini-2.5-pro")
    return gate, one_call_cost(gate, prompt)


def child_gate(script: str, slug: str, model: FakeModel, **kw: Any) -> Any:
    """``python -c script slug`` with this home, its gate on ``model`` (gemini-2.5-pro)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "BIZOS_AI_PROVIDER": "gemini", "BIZOS_GEMINI_API_KEY": "k",
           "BIZOS_GEMINI_BASE_URL": model.url, "BIZOS_GEMINI_MODEL": "gemini-2.5-pro",
           "BIZOS_AI_MAX_OUTPUT_TOKENS": "50"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", script, slug], env=env, text=True, stdout=subprocess.PIPE, **kw
    )


def test_racing_processes_never_overspend(
    ctl: Control, model: FakeModel, budget_tenant: str
) -> None:
    import subprocess

    _, price = pro_gate(ctl, model, "Summarise the week.")
    set_terms(ctl, budget_tenant, budget=price * Decimal("3.5"))
    procs = [child_gate(RACER, budget_tenant, model, stdin=subprocess.PIPE) for _ in range(3)]
    try:
        for p in procs:  # every process is connected and waits: then all go at once
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        counts = [tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert sum(ok for ok, _ in counts) == 3 and sum(r for _, r in counts) == 3
    assert flush_all()  # the settlements are written in the background
    with tenant_session(ctl, budget_tenant, actor="test", read_only=True) as s:
        total = s.execute(text("SELECT sum(cost) FROM ai_usage WHERE status = 'done'")).scalar_one()
        counter = s.execute(text("SELECT spent FROM ai_spend")).scalar_one()
    assert total == counter == price * 3


def test_a_feature_without_a_valid_offline_answer_fails_and_releases_its_reservation(
    ctl: Control, model: FakeModel, budget_tenant: str
) -> None:
    model.reset("json:nope", "json:nope")
    gate = make_gate(ctl, model)
    with pytest.raises(OperationFailed, match=r"^the offline answer is not a valid Verdict"):
        gate.ask(budget_tenant, feature="test.norule", prompt="hello", schema=Verdict)
    (row,) = rows(ctl, budget_tenant)
    assert (row["status"], row["degraded"], row["reason"]) == ("done", True, "malformed")
    assert flush_all()  # the settlements are written in the background
    with tenant_session(ctl, budget_tenant, actor="test", read_only=True) as s:
        spent = s.execute(text("SELECT spent FROM ai_spend")).scalar_one()
    assert spent == row["cost"] > 0  # the two malformed answers, billed; nothing held


def spend(ctl: Control, slug: str, *, flush: bool = True) -> tuple[Decimal, int]:
    """The month's counter: (spent, calls); ``flush``: this process's settlements first."""
    if flush:
        assert flush_all()  # the settlements are written in the background
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        spent, calls = s.execute(text("SELECT spent, calls FROM ai_spend")).one()
    return spent, calls


def test_a_ledger_connection_the_server_closed_is_replaced_and_counted_once(
    ctl: Control, model: FakeModel, make_tenant: Any
) -> None:
    # The ledger's writes skip the ping at checkout: a pooled connection that a restart (here:
    # pg_terminate_backend) killed fails on use, and the write is sent again on a new one.
    model.reset()
    slug = make_tenant(tier="schema", region="id")
    gate = make_gate(ctl, model)
    first = gate.ask(slug, feature="test.dead", prompt="hello")
    assert kill_tenant_backends(ctl, slug) >= 1
    second = gate.ask(slug, feature="test.dead", prompt="hello again")
    assert not second.degraded
    done = rows(ctl, slug)
    assert [(r["id"], r["status"]) for r in done] == [
        (first.usage_id, "done"),
        (second.usage_id, "done"),
    ]
    assert spend(ctl, slug) == (first.cost + second.cost, 2)


def test_a_reservation_sent_twice_is_held_once(
    ctl: Control, model: FakeModel, make_tenant: Any
) -> None:
    # What a retry after a lost connection does when the first run had committed.
    from bizosctl.ai.plans import tenant_plan

    slug = make_tenant(tier="schema", region="id")
    gate = make_gate(ctl, model, kind="offline")
    plan = tenant_plan(ctl, slug, gate.settings)
    run = gate._runner(gate.tenant_route(slug), "test.twice")
    sent: list[Any] = []

    def twice(sql: Any, params: Any) -> Any:
        sent.append(params)
        return [run(sql, params) for _ in range(2)][-1]

    held = ledger.reserve(twice, plan=plan, amount=Decimal("0.5"), member=None,
                          feature="test.twice", provider="gemini", model="m",
                          entities={})  # fmt: skip
    assert held is not None and held.id == sent[0]["id"]
    assert spend(ctl, slug) == (Decimal("0.5"), 1)
    assert [r["id"] for r in rows(ctl, slug)] == [held.id]


def test_a_tenant_suspended_while_its_route_is_kept_is_refused(
    ctl: Control, model: FakeModel, make_tenant: Any, cli: Any
) -> None:
    from bizosctl.errors import TenantSuspended

    model.reset()
    slug = make_tenant(tier="schema", region="id")
    gate = make_gate(ctl, model)
    gate.ask(slug, feature="test.suspend", prompt="hello")  # the route is kept now
    assert cli("tenant", "lock", slug, "--mode", "suspended").exit_code == 0
    with pytest.raises(TenantSuspended, match="is suspended"):
        gate.ask(slug, feature="test.suspend", prompt="hello")
    assert model.calls == 1


# -- settlement in the background ------------------------------------------------------------
def ledger_rows(ctl: Control, slug: str) -> list[Any]:
    """The rows as they are now: no flush (what a reader in another process sees)."""
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        sql = "SELECT id, status, reserved, cost FROM ai_usage ORDER BY at"
        return list(s.execute(text(sql)).mappings())


def test_usage_shows_a_call_right_after_flush(
    ctl: Control, model: FakeModel, make_tenant: Any
) -> None:
    model.reset()
    gate, slug = make_gate(ctl, model), make_tenant(tier="schema", region="id")
    answer = gate.ask(slug, feature="test.flush", prompt="hello")
    assert gate.flush(30)
    assert [(r["id"], r["status"], r["cost"]) for r in ledger_rows(ctl, slug)] == [
        (answer.usage_id, "done", answer.cost)
    ]
    second = gate.ask(slug, feature="test.flush", prompt="hello")
    report = usage_report(ctl, tenant=slug)  # flushes this process's gates itself
    (row,) = report.rows
    assert (row.key, row.calls, row.cost) == (slug, 2, answer.cost + second.cost)
    assert [r["status"] for r in ledger_rows(ctl, slug)] == ["done", "done"]


def test_an_unsettled_reservation_counts_against_the_budget(
    ctl: Control, model: FakeModel, budget_tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A structured answer reserves twice the fake's bill (a malformed one is asked twice):
    # settled, the call costs half its reservation. The budget fits one held reservation and
    # one settled call with a second reservation, but not two held reservations.
    from bizosctl.ai import gate as gate_module

    model.reset(default='json:{"valid": true, "reason": "ok"}')
    real_settle = gate_module._Settlement.__call__
    go = threading.Event()

    def held_back(self: Any) -> None:
        assert go.wait(30)
        real_settle(self)

    monkeypatch.setattr(gate_module._Settlement, "__call__", held_back)
    other = make_gate(ctl, model)  # as another process's gate
    assert other.provider is not None
    reserve = ledger.cost(other.settings, other.provider.model,
                          ledger.worst_case_tokens("hello", None) * 2, 100)  # fmt: skip
    set_terms(ctl, budget_tenant, budget=reserve * Decimal("1.75"))
    gate = make_gate(ctl, model)
    first = gate.ask(budget_tenant, feature="test.held", prompt="hello", schema=Verdict)
    assert first.cost < reserve
    assert not gate.flush(0.2)  # the settlement waits, the caller did not
    assert [(r["status"], r["reserved"]) for r in ledger_rows(ctl, budget_tenant)] == [
        ("reserved", reserve)
    ]
    assert spend(ctl, budget_tenant, flush=False) == (reserve, 1)
    with pytest.raises(BudgetExceeded):  # the held worst case counts, not the real cost
        other.ask(budget_tenant, feature="test.held", prompt="hello", schema=Verdict)
    go.set()
    assert gate.flush(30)
    assert spend(ctl, budget_tenant) == (first.cost, 1)
    third = other.ask(budget_tenant, feature="test.held", prompt="hello", schema=Verdict)
    assert other.flush(30)
    assert spend(ctl, budget_tenant) == (first.cost + third.cost, 2)
    assert [r["status"] for r in ledger_rows(ctl, budget_tenant)] == ["done", "refused", "done"]


def test_a_reservation_carries_the_settlements_that_wait(
    ctl: Control, model: FakeModel, make_tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bizosctl.ai import gate as gate_module

    def never(self: Any) -> None:
        raise AssertionError("the writer wrote a settlement a reservation should carry")

    model.reset()
    slug, other = make_tenant(tier="schema", region="id"), make_tenant(tier="shared")
    gate = make_gate(ctl, model)
    gate.writer._idle = 60  # no turn but the model's: the writer does not write on its own
    monkeypatch.setattr(gate.writer, "waiting", lambda: None)
    monkeypatch.setattr(gate_module._Settlement, "__call__", never)
    first = gate.ask(slug, feature="test.ride", prompt="hello")
    elsewhere = gate.ask(other, feature="test.ride", prompt="hello")  # another tenant's: stays
    assert [r["status"] for r in ledger_rows(ctl, slug)] == ["reserved"]
    second = gate.ask(slug, feature="test.ride", prompt="hello again")
    assert [(r["id"], r["status"]) for r in ledger_rows(ctl, slug)] == [
        (first.usage_id, "done"), (second.usage_id, "reserved")]  # fmt: skip
    assert spend(ctl, slug, flush=False) == (first.cost + second.cost, 2)
    assert [r["status"] for r in ledger_rows(ctl, other)] == ["reserved"]
    assert gate.writer.pending == 2  # the other tenant's and the second call's
    monkeypatch.undo()
    assert gate.flush(30)
    assert [r["status"] for r in ledger_rows(ctl, other)] == ["done"]
    assert ledger_rows(ctl, other)[0]["id"] == elsewhere.usage_id


KILLED = """
import sys, threading
from bizosctl.ai.gate import _Settlement, get_gate
from bizosctl.catalog.control import get_control
gate = get_gate(get_control())
first = gate.ask(sys.argv[1], feature="test.kill", prompt="hello")
assert gate.flush(30)
_Settlement.__call__ = lambda self: threading.Event().wait()  # the writer never gets to it
second = gate.ask(sys.argv[1], feature="test.kill", prompt="hello")
print(first.usage_id, first.cost, second.usage_id, flush=True)
threading.Event().wait()
"""


def test_a_process_killed_before_its_settlement_leaves_the_reservation_counted(
    ctl: Control, model: FakeModel, budget_tenant: str
) -> None:
    import os
    import signal
    import uuid

    gate, price = pro_gate(ctl, model, "hello")
    child = child_gate(KILLED, budget_tenant, model)
    try:
        assert child.stdout is not None
        first_id, first_cost, second_id = child.stdout.readline().split()
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert first_cost == str(price)
    found = [(r["id"], r["status"], r["reserved"]) for r in ledger_rows(ctl, budget_tenant)]
    assert found == [(uuid.UUID(first_id), "done", price),
                     (uuid.UUID(second_id), "reserved", price)]  # fmt: skip
    assert spend(ctl, budget_tenant) == (price * 2, 2)
    # The budget has room for one more call only if the held reservation were forgotten.
    set_terms(ctl, budget_tenant, budget=price * Decimal("2.5"))
    with pytest.raises(BudgetExceeded):
        gate.ask(budget_tenant, feature="test.kill", prompt="hello")
    # Settled late (twice, as a retry would), the reservation is replaced by the cost once.
    plan = gate.tenant_terms(budget_tenant)
    run = gate._runner(gate.tenant_route(budget_tenant), "test.kill")
    half = (price / 2).quantize(ledger.MICRO)
    late = ledger.Outcome(provider="gemini", model="gemini-2.5-pro", cost=half)
    held = ledger.Reservation(id=uuid.UUID(second_id), amount=price)
    for _ in range(2):
        ledger.settle(run, tenant_id=plan.tenant_id, reservation=held, outcome=late)
    assert spend(ctl, budget_tenant) == (price + half, 2)
    answer = gate.ask(budget_tenant, feature="test.kill", prompt="hello")  # room again
    assert gate.flush(30)
    assert spend(ctl, budget_tenant) == (price * 2 + half, 3)
    assert [r["status"] for r in ledger_rows(ctl, budget_tenant)] == [
        "done", "done", "refused", "done"]  # fmt: skip
    assert answer.cost == price


def test_the_compiled_names_are_kept_until_the_names_change(
    ctl: Control, model: FakeModel, make_tenant: Any
) -> None:
    from test_ai_cli import add_member

    slug = make_tenant(tier="schema", region="id")
    add_member(ctl, slug, "Sukarti Wulandari")
    clock = Clock()
    gate = make_gate(ctl, model, kind="offline", clock=clock, ai_names_ttl=60)
    kept = gate.tenant_dictionary(slug)
    assert "Sukarti" in kept.known
    add_member(ctl, slug, "Margono Hadiwijaya")
    assert gate.tenant_dictionary(slug) is kept  # within the TTL: kept, names and all
    clock.now += 61
    clock_names = gate.tenant_names(slug)
    fresh = gate.tenant_dictionary(slug)
    assert fresh is not kept and "Margono" in fresh.known and "Margono Hadiwijaya" in clock_names
    clock.now += 61  # read again, the same names: the same compiled dictionary
    assert gate.tenant_dictionary(slug) is fresh
    answer = gate.ask(slug, feature="test.names", prompt="call Margono Hadiwijaya today")
    assert answer.entities == {"PERSON": 1}
