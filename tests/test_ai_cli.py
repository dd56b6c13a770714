"""``bizosctl usage``, ``bizosctl ai check`` and ``bizosctl ai budget``: output and bad input."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert

from bizosctl.ai.gate import Gate
from bizosctl.ai.plans import set_terms
from bizosctl.catalog.control import Control
from bizosctl.config import Settings
from bizosctl.security.fields import blind_index, encrypt
from bizosctl.tenancy.router import tenant_session
from tenant_schema.models import Member
from tests.ai_fakes import FakeModel


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModel]:
    fake = FakeModel()
    yield fake
    fake.close()


def gemini(ctl: Control, fake: FakeModel) -> Gate:
    s = Settings(ai_provider="gemini", gemini_api_key="k", gemini_base_url=fake.url,
                 ai_max_output_tokens=40)  # fmt: skip
    return Gate(ctl, settings=s)


def add_member(ctl: Control, slug: str, name: str) -> uuid.UUID:
    route = ctl.route(slug)
    ring = ctl.keyring
    mid = uuid.uuid4()
    with tenant_session(ctl, slug, actor="test") as s:
        s.execute(insert(Member).values(
            tenant_id=route.tenant_id, id=mid,
            email_enc=encrypt(ring, f"{mid.hex}@x.example", tenant_id=route.tenant_id,
                              table="members", column="email", row=mid),
            email_bidx=blind_index(ring, f"{mid.hex}@x.example"),
            name_enc=encrypt(ring, name, tenant_id=route.tenant_id, table="members",
                             column="name", row=mid),
        ))  # fmt: skip
    return mid


@pytest.fixture(scope="module")
def two(fleet: Control, model: FakeModel) -> dict[str, Any]:
    """Two tenants with usage: the heavy one on pro, the light one on free."""
    from bizosctl.tenancy.provision import create_tenant

    heavy, light = f"h{uuid.uuid4().hex[:8]}", f"l{uuid.uuid4().hex[:8]}"
    create_tenant(fleet, slug=heavy, name="Heavy", tier="schema", region="global")
    create_tenant(fleet, slug=light, name="Light", tier="isolated", region="id")
    set_terms(fleet, heavy, plan="pro")
    member = add_member(fleet, heavy, "Sri Wahyuni")
    gate = gemini(fleet, model)
    try:
        for _ in range(3):
            gate.ask(heavy, feature="digest", prompt="A long prompt about revenue. " * 20,
                     member=member)  # fmt: skip
        gate.ask(heavy, feature="precheck", prompt="short")
        gate.ask(light, feature="digest", prompt="tiny")
    finally:
        gate.close()
    return {"heavy": heavy, "light": light, "member": member}


def test_usage_json_heaviest_first_with_margin(cli: Any, two: dict[str, Any]) -> None:
    r = cli("usage", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    keys = [row["key"] for row in doc["rows"]]
    assert keys.index(two["heavy"]) < keys.index(two["light"])
    heavy = next(row for row in doc["rows"] if row["key"] == two["heavy"])
    assert (heavy["calls"], heavy["plan"], heavy["tokens_out"]) == (4, "pro", 160)
    cost, revenue = Decimal(heavy["cost"]), Decimal(heavy["revenue"])
    assert cost > 0 and revenue > 0 and Decimal(heavy["margin"]) == revenue - cost
    light = next(row for row in doc["rows"] if row["key"] == two["light"])
    assert (light["calls"], Decimal(light["revenue"])) == (1, Decimal(0))
    assert Decimal(light["margin"]) == -Decimal(light["cost"]) < 0  # free plan: costs us
    assert doc["by"] == "tenant" and doc["total"]["calls"] >= 5


def test_usage_by_feature_member_and_model(cli: Any, two: dict[str, Any]) -> None:
    by_feature = json.loads(
        cli("usage", "--tenant", two["heavy"], "--by", "feature", "--json").stdout
    )
    assert [(r["key"], r["calls"]) for r in by_feature["rows"]] == [("digest", 3), ("precheck", 1)]
    assert by_feature["rows"][0]["margin"] is None
    by_member = json.loads(
        cli("usage", "--tenant", two["heavy"], "--by", "member", "--json").stdout
    )
    assert {r["key"]: r["calls"] for r in by_member["rows"]} == {str(two["member"]): 3, "-": 1}
    by_model = json.loads(cli("usage", "--tenant", two["light"], "--by", "model", "--json").stdout)
    assert [r["key"] for r in by_model["rows"]] == ["gemini-2.5-flash"]


def test_usage_csv(cli: Any, two: dict[str, Any]) -> None:
    r = cli("usage", "--tenant", two["heavy"], "--csv")
    assert r.exit_code == 0
    lines = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [line["key"] for line in lines] == [two["heavy"], "total"]
    assert lines[0]["calls"] == "4" and lines[0]["plan"] == "pro"


def test_usage_window_before_any_call_is_empty(cli: Any, two: dict[str, Any]) -> None:
    doc = json.loads(cli("usage", "--tenant", two["heavy"], "--since", "2020-01-01",
                         "--until", "2020-02-01", "--json").stdout)  # fmt: skip
    assert doc["rows"][0]["calls"] == 0 and Decimal(doc["rows"][0]["revenue"]) > 40


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--by", "colour"], 2, "--by 'colour': use one of tenant, member, feature, model"),
        (["--since", "yesterday"], 2, "--since must be a duration back from now (2h, 7d) or an "
         "ISO date, not 'yesterday'"),
        (["--csv", "--json"], 2, "--csv and --json: choose one"),
        (["--tenant", "nosuchtenant"], 3, "no tenant named 'nosuchtenant'"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], 2,
         "--since (2026-01-02T00:00:00+00:00) must be before --until"),
    ],
)  # fmt: skip
def test_usage_bad_input(cli: Any, args: list[str], code: int, message: str) -> None:
    r = cli("usage", *args)
    assert r.exit_code == code
    assert r.stderr.strip() == f"error: {message}"


def test_ai_budget_show_set_and_dry_run(cli: Any, make_tenant: Any) -> None:
    slug = make_tenant(tier="shared")
    shown = json.loads(cli("ai", "budget", slug, "--json").stdout)["plan"]
    assert (shown["plan"], shown["budget_from"], shown["over_budget"]) == ("free", "plan", "refuse")
    dry = json.loads(cli("ai", "budget", slug, "--plan", "pro", "--budget", "25", "--dry-run",
                         "--json").stdout)  # fmt: skip
    assert dry["dry_run"] is True and dry["plan"]["plan"] == "pro"
    assert json.loads(cli("ai", "budget", slug, "--json").stdout)["plan"]["plan"] == "free"
    r = cli("ai", "budget", slug, "--plan", "pro", "--budget", "25", "--over-budget", "offline")
    assert r.exit_code == 0 and "plan pro" in r.stdout
    now = json.loads(cli("ai", "budget", slug, "--json").stdout)["plan"]
    assert (Decimal(now["ai_budget"]), now["budget_from"], now["over_budget"]) == (
        Decimal(25), "tenant", "offline")  # fmt: skip
    back = json.loads(cli("ai", "budget", slug, "--budget", "plan", "--json").stdout)["plan"]
    assert (Decimal(back["ai_budget"]), back["budget_from"]) == (Decimal(10), "plan")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--plan", "gold"], 2, "plan 'gold' is not in the ai_plans setting "
         "(['enterprise', 'free', 'pro'])"),
        (["--budget", "-1"], 2, "--budget '-1': between 0 and 100000000 USD a month"),
        (["--budget", "lots"], 2, "--budget 'lots': a number of USD a month, or 'plan'"),
        (["--over-budget", "maybe"], 2, "--over-budget 'maybe': refuse or offline"),
    ],
)  # fmt: skip
def test_ai_budget_bad_input(cli: Any, make_tenant: Any, args: list[str], code: int,
                             message: str) -> None:  # fmt: skip
    slug = make_tenant(tier="shared")
    r = cli("ai", "budget", slug, *args)
    assert r.exit_code == code and r.stderr.strip() == f"error: {message}"


def test_ai_budget_unknown_tenant(cli: Any) -> None:
    r = cli("ai", "budget", "nosuchtenant", "--plan", "pro")
    assert r.exit_code == 3 and r.stderr.strip() == "error: no tenant named 'nosuchtenant'"


def test_ai_check_offline_by_default(cli: Any) -> None:
    r = cli("ai", "check", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert (doc["provider"], doc["reachable"], doc["breaker"]["state"]) == (
        "offline",
        True,
        "closed",
    )
    assert "BIZOS_GEMINI_API_KEY" in doc["note"]


def test_ai_check_reaches_the_model_and_reports_a_dead_one(cli: Any, model: FakeModel) -> None:
    model.reset()
    env = {"BIZOS_GEMINI_API_KEY": "k", "BIZOS_GEMINI_BASE_URL": model.url}
    r = cli("ai", "check", "--json", env=env)
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and (doc["provider"], doc["reachable"]) == ("gemini", True)
    assert model.calls == 1 and doc["endpoint"] == model.url
    dead = FakeModel()
    dead.close()
    leaky = dead.url.replace("http://", "http://user:pw@") + "?key=secret"
    env = {"BIZOS_GEMINI_API_KEY": "k", "BIZOS_GEMINI_BASE_URL": leaky, "BIZOS_AI_RETRIES": "0"}
    r = cli("ai", "check", "--json", env=env)
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and (doc["reachable"], doc["error"]) == (False, "connect")
    assert doc["endpoint"] == dead.url and "secret" not in r.stdout and "pw" not in r.stdout
    assert doc["breaker"]["failures"] == 1


def test_ai_check_model_without_a_price(cli: Any) -> None:
    env = {"BIZOS_GEMINI_API_KEY": "k", "BIZOS_GEMINI_MODEL": "gemini-9-ultra"}
    r = cli("ai", "check", env=env)
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: model 'gemini-9-ultra' has no price in the "
                                       "ai_prices setting")  # fmt: skip


def test_doctor_names_plans_the_settings_do_not_price(cli: Any, two: dict[str, Any]) -> None:
    env = {"BIZOS_AI_PLANS": '{"free": {"price": 0, "ai_budget": 1}}'}
    r = cli("doctor", "--json", env=env)
    doc = json.loads(r.stdout)
    assert "checks" in doc, doc
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["ai provider"]["ok"] and checks["ai provider"]["detail"].startswith("offline")
    assert checks["ai plans"] == {
        "name": "ai plans", "ok": False, "warning": False,
        "detail": "tenants on plans missing from the ai_plans setting: pro",
    }  # fmt: skip
    assert r.exit_code == 1


def test_usage_skips_a_suspended_tenant_and_says_so(cli: Any, make_tenant: Any) -> None:
    slug = make_tenant(tier="shared")
    assert cli("tenant", "lock", slug, "--mode", "suspended").exit_code == 0
    try:
        r = cli("usage", "--tenant", slug, "--json")
    finally:
        assert cli("tenant", "unlock", slug).exit_code == 0
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["rows"] == []
    assert doc["skipped"] == [{"tenant": slug, "reason": "suspended: its data is not readable"}]
    assert f"skipped {slug}: suspended" in r.stderr
