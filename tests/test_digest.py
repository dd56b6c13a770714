"""The CEO digest: figures from a real tenant database, three insights through the gate
(model answers, timeouts, 429, 500, malformed answers, the offline rules), stored once per
day, cards for the Admins, the CLI's bad input, and the ``digest.run`` job in a real worker."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import unique_slug
from sqlalchemy import insert, text
from test_ai_gate import _open, make_gate

from bizosctl.ai.writer import flush_all
from bizosctl.catalog.control import Control
from bizosctl.digest.run import DigestPublic, TenantRef, make_digest, tenant_refs
from bizosctl.tenancy.router import tenant_session
from tests.ai_fakes import FakeModel

DAY = dt.date(2026, 11, 20)
JAKARTA_NOON = dt.datetime(2026, 11, 20, 5, 0, tzinfo=dt.UTC)  # 12:00 in Asia/Jakarta


@pytest.fixture(autouse=True)
def _close_gates() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModel]:
    fake = FakeModel()
    yield fake
    fake.close()


def seed(ctl: Control, slug: str) -> None:
    """Sample members, roles, tasks, customers and invoices, plus payments on DAY and the week
    before, an invoice issued on DAY and one long overdue."""
    from bizosctl.tenancy.sample import load_sample_data
    from tenant_schema.models import Customer, Invoice, Transaction

    load_sample_data(ctl, slug)
    with tenant_session(ctl, slug, actor="test") as s:
        tid = ctl.route(slug).tenant_id
        cust = s.execute(text("SELECT id FROM customers WHERE name = 'PT Maju Jaya'")).scalar_one()
        # Payments: 2,000,000 on DAY; 700,000 a day on the 7 days before (avg 700,000).
        s.execute(text("DELETE FROM transactions"))
        inv = uuid.uuid4()
        s.execute(
            insert(Invoice).values(
                tenant_id=tid,
                id=inv,
                customer_id=cust,
                number="INV-DAY-1",
                status="paid",
                total=2_000_000,
                issued_on=DAY,
                due_on=DAY + dt.timedelta(days=30),
            )
        )
        s.execute(
            insert(Transaction).values(
                tenant_id=tid,
                invoice_id=inv,
                kind="payment",
                amount=Decimal(2_000_000),
                occurred_at=JAKARTA_NOON,
            )
        )
        for back in range(1, 8):
            s.execute(
                insert(Transaction).values(
                    tenant_id=tid,
                    invoice_id=inv,
                    kind="payment",
                    amount=Decimal(700_000),
                    occurred_at=JAKARTA_NOON - dt.timedelta(days=back),
                )
            )
        # Outside the window: the day after (local) must not count.
        s.execute(
            insert(Transaction).values(
                tenant_id=tid,
                invoice_id=inv,
                kind="payment",
                amount=Decimal(9_999_999),
                occurred_at=JAKARTA_NOON + dt.timedelta(hours=12),
            )
        )
        other = s.execute(
            insert(Customer).values(tenant_id=tid, name="CV Lambat Bayar").returning(Customer.id)
        ).scalar_one()
        s.execute(
            insert(Invoice).values(
                tenant_id=tid,
                customer_id=other,
                number="INV-OLD-9",
                status="sent",
                total=5_550_000,
                issued_on=DAY - dt.timedelta(days=60),
                due_on=DAY - dt.timedelta(days=30),
            )
        )


@pytest.fixture(scope="module")
def shop(fleet: Control) -> str:
    from bizosctl.tenancy.provision import create_tenant

    slug = unique_slug("dg")
    create_tenant(fleet, slug=slug, name="Digest shop", tier="schema", region="id")
    seed(fleet, slug)
    return slug


def ref(ctl: Control, slug: str) -> TenantRef:
    return tenant_refs(ctl, [slug])[0]


def count(ctl: Control, slug: str, table: str, where: str = "true") -> int:
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        return int(s.execute(text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar_one())


def clear_digests(ctl: Control, slug: str) -> None:
    with tenant_session(ctl, slug, actor="test") as s:
        s.execute(text("DELETE FROM digests"))
        s.execute(text("DELETE FROM notifications WHERE kind = 'digest'"))


# -- figures and the offline rules ---------------------------------------------------------------


def test_figures_count_the_local_day_and_the_week_before(ctl: Control, shop: str) -> None:
    from zoneinfo import ZoneInfo

    from bizosctl.digest.figures import collect

    with tenant_session(ctl, shop, actor="test", read_only=True) as s:
        f, names = collect(s, day=DAY, zone=ZoneInfo("Asia/Jakarta"))
    assert (f.revenue, f.revenue_prior_avg, f.payments) == (
        Decimal("2000000.00"),
        Decimal("700000.00"),
        1,
    )
    assert f.invoices_issued == 1 and f.currency == "IDR"
    assert f.top_customers[0].name == "PT Maju Jaya"
    assert f.top_customers[0].amount == Decimal("6900000.00")
    assert f.overdue_invoices >= 1
    assert f.overdue_oldest[0].number == "INV-OLD-9" and f.overdue_oldest[0].days_overdue == 30
    assert f.tasks_open == 6  # the sample's two projects: 3 of 4 tasks each not done
    assert names  # owners' names come encrypted, for the caller to decrypt


def test_offline_digest_has_three_insights_on_real_numbers_and_is_made_once(
    ctl: Control, cli: Any, shop: str
) -> None:
    clear_digests(ctl, shop)
    r = cli(
        "digest", "run", "--tenant", shop, "--date", DAY.isoformat(), "--deliver", "card", "--json"
    )
    assert r.exit_code == 0, r.stdout
    doc = json.loads(r.stdout)
    (d,) = doc["digests"]
    assert (d["tenant"], d["date"], d["created"], d["degraded"]) == (
        shop,
        "2026-11-20",
        True,
        False,
    )
    assert len(d["insights"]) == 3
    figures = [i["figure"] for i in d["insights"]]
    assert len(set(figures)) == 3
    # The rules put the most pressing first: the overdue invoices, with the oldest named.
    assert figures[0] == "overdue_invoices"
    assert (
        "INV-OLD-9" in d["insights"][0]["detail"]
        and "CV Lambat Bayar" in d["insights"][0]["action"]
    )
    revenue = next(i for i in d["insights"] if i["figure"] == "revenue")
    assert "up 186%" in revenue["title"]  # 2,000,000 against a 700,000 average
    assert d["delivered"] == ["card"]
    # The card: one per active Admin (the sample has one).
    assert count(ctl, shop, "notifications", "kind = 'digest'") == 1
    # A second run finds it and makes nothing.
    r = cli("digest", "run", "--tenant", shop, "--date", DAY.isoformat(), "--json")
    assert r.exit_code == 0
    again = json.loads(r.stdout)["digests"][0]
    assert again["created"] is False and again["id"] == d["id"]
    assert count(ctl, shop, "digests") == 1
    assert count(ctl, shop, "notifications", "kind = 'digest'") == 1
    # --force: a new version.
    r = cli(
        "digest",
        "run",
        "--tenant",
        shop,
        "--date",
        DAY.isoformat(),
        "--force",
        "--json",
        "--deliver",
        "card",
    )
    forced = json.loads(r.stdout)["digests"][0]
    assert (forced["created"], forced["version"]) == (True, 2)
    r = cli("digest", "list", shop, "--json")
    assert [x["version"] for x in json.loads(r.stdout)["digests"]][:2] == [2, 1]
    r = cli("digest", "show", shop, "--date", DAY.isoformat(), "--version", "1", "--json")
    shown = json.loads(r.stdout)["digest"]
    assert shown["id"] == d["id"] and shown["figures"]["revenue"] == "2000000.00"


def test_a_tenant_with_no_data_gets_a_sensible_digest(
    ctl: Control, cli: Any, make_tenant: Any
) -> None:
    slug = make_tenant(region="id")
    r = cli("digest", "run", "--tenant", slug, "--json")
    assert r.exit_code == 0, r.stdout
    doc = json.loads(r.stdout)
    assert doc["notes"] == ["e-mail is off (BIZOS_SMTP_HOST is not set): cards only"]
    d = doc["digests"][0]
    assert d["created"] is True and len(d["insights"]) == 3
    titles = [i["title"] for i in d["insights"]]
    assert "No payments in the last 8 days" in titles
    assert "No open tasks" in titles
    # Yesterday in Jakarta, whatever the machine's zone.
    from zoneinfo import ZoneInfo

    from bizosctl.tenancy.zones import local_yesterday

    assert d["date"] == local_yesterday(ZoneInfo("Asia/Jakarta")).isoformat()
    assert d["delivered"] == []  # no members, so no Admin to leave a card for


def test_two_runs_at_once_make_one_digest(ctl: Control, shop: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clear_digests(ctl, shop)
    r = ref(ctl, shop)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: make_digest(ctl, r, day=DAY, deliver="card"), range(4)))
    assert sum(isinstance(g, DigestPublic) and g.created for g in got) == 1
    assert len({g.id for g in got if isinstance(g, DigestPublic)}) == 1
    assert count(ctl, shop, "digests") == 1


def test_dry_run_prints_the_masked_prompt_and_stores_nothing(
    ctl: Control, cli: Any, shop: str
) -> None:
    clear_digests(ctl, shop)
    ledger = count(ctl, shop, "ai_usage")
    r = cli("digest", "run", "--tenant", shop, "--date", DAY.isoformat(), "--dry-run", "--json")
    assert r.exit_code == 0, r.stdout
    doc = json.loads(r.stdout)
    (p,) = doc["previews"]
    assert doc["dry_run"] is True and doc["digests"] == []
    assert "INV-OLD-9" in p["masked_prompt"] and "[overdue_invoices]" in p["masked_prompt"]
    # The task owners (members) are masked: their names never leave.
    assert "Ayu Lestari" not in p["masked_prompt"] and "<PERSON_" in p["masked_prompt"]
    assert len(p["insights"]) == 3
    assert count(ctl, shop, "digests") == 0
    assert count(ctl, shop, "ai_usage") == ledger


def test_a_day_across_a_dst_change_counts_its_25_hours(
    ctl: Control, cli: Any, make_tenant: Any
) -> None:
    """2026-11-01 in New York has 25 hours (EDT to EST): a payment at 00:30 and one at 23:30
    local count for that day, one at 00:30 the next day does not."""
    from tenant_schema.models import Customer, Invoice, Transaction

    slug = make_tenant(region="id")
    with tenant_session(ctl, slug, actor="test") as s:
        tid = ctl.route(slug).tenant_id
        cust = s.execute(
            insert(Customer).values(tenant_id=tid, name="CV Waktu").returning(Customer.id)
        ).scalar_one()
        inv = s.execute(
            insert(Invoice)
            .values(tenant_id=tid, customer_id=cust, number="I-1", status="paid", total=3)
            .returning(Invoice.id)
        ).scalar_one()
        for at, amount in (
            ("2026-11-01T04:30:00+00:00", 1),  # 00:30 EDT
            ("2026-11-02T04:30:00+00:00", 10),  # 23:30 EST, hour 25
            ("2026-11-02T05:30:00+00:00", 100),
        ):  # 00:30 EST the next day
            s.execute(
                insert(Transaction).values(
                    tenant_id=tid,
                    invoice_id=inv,
                    kind="payment",
                    amount=amount,
                    occurred_at=dt.datetime.fromisoformat(at),
                )
            )
    r = cli(
        "digest",
        "run",
        "--tenant",
        slug,
        "--date",
        "2026-11-01",
        "--deliver",
        "card",
        "--json",
        env={"BIZOS_REGION_TIME_ZONES": '{"id": "America/New_York"}'},
    )
    assert r.exit_code == 0, r.stdout
    d = json.loads(r.stdout)["digests"][0]
    assert d["zone"] == "America/New_York"
    r = cli("digest", "show", slug, "--json")
    figures = json.loads(r.stdout)["digest"]["figures"]
    assert (figures["revenue"], figures["payments"]) == ("11.00", 2)


# -- the model: answers and faults -----------------------------------------------------------------

GOOD = json.dumps(
    {
        "insights": [
            {
                "figure": "revenue",
                "title": "Revenue up",
                "detail": "2,000,000.00 IDR",
                "action": "Go",
            },
            {
                "figure": "overdue_invoices",
                "title": "Chase",
                "detail": "INV-OLD-9",
                "action": "Call",
            },
            {
                "figure": "tasks_overdue",
                "title": "Tasks",
                "detail": "<PERSON_1> is late",
                "action": "Ask",
            },
        ]
    }
)


def test_a_model_answer_is_validated_stored_and_names_restored(
    ctl: Control, model: FakeModel, shop: str
) -> None:
    clear_digests(ctl, shop)
    model.reset(f"json:{GOOD}")
    gate = make_gate(ctl, model)
    d = make_digest(ctl, ref(ctl, shop), day=DAY, deliver="card", gate=gate)
    assert isinstance(d, DigestPublic)
    assert (d.provider, d.degraded, d.reason) == ("gemini", False, None)
    assert [i.figure for i in d.insights] == ["revenue", "overdue_invoices", "tasks_overdue"]
    sent = model.raw[0].decode()
    assert "Ayu Lestari" not in sent and "Budi Santoso" not in sent
    assert "<PERSON_1>" not in d.insights[2].detail  # restored for the tenant's own eyes
    row = _ledger_row(ctl, shop, d.id)
    assert (row["provider"], row["feature"], row["degraded"]) == ("gemini", "digest", False)


@pytest.mark.parametrize(
    ("script", "options", "reason"),
    [
        (("429:0", "429:0", "429:0"), {}, "rate-limited"),
        (("500", "500", "500"), {}, "server-error"),
        (("slow",), {"ai_timeout": 0.2, "ai_retries": 0}, "timeout"),
        (('json:{"insights": ["not what was asked"]}', "json:no json at all"), {}, "malformed"),
    ],
    ids=["429", "500", "timeout", "malformed"],
)
def test_model_faults_fall_back_to_the_offline_rules_degraded(
    ctl: Control,
    model: FakeModel,
    shop: str,
    script: tuple[str, ...],
    options: dict[str, Any],
    reason: str,
) -> None:
    clear_digests(ctl, shop)
    model.reset(*script, default="500")
    gate = make_gate(ctl, model, **options)
    try:
        d = make_digest(ctl, ref(ctl, shop), day=DAY, deliver="card", gate=gate)
    finally:
        model.release.set()
    assert isinstance(d, DigestPublic)
    assert (d.degraded, d.reason, d.provider) == (True, reason, "offline")
    assert len(d.insights) == 3 and d.insights[0].figure == "overdue_invoices"
    row = _ledger_row(ctl, shop, d.id)
    assert (row["status"], row["degraded"], row["reason"]) == ("done", True, reason)
    assert row["attempts"] >= 1
    if reason == "malformed":
        assert model.calls == 2  # asked again once, then the rules answered


def _ledger_row(ctl: Control, slug: str, digest_id: uuid.UUID) -> Any:
    assert flush_all()  # the gate settles its calls in the background
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        return (
            s.execute(
                text(
                    "SELECT u.* FROM ai_usage AS u JOIN digests AS d ON d.usage_id = "
                    "u.id WHERE d.id = :id"
                ),
                {"id": digest_id},
            )
            .mappings()
            .one()
        )


# -- bad input ------------------------------------------------------------------------------------


def test_unknown_time_zone_exits_2_naming_it(cli: Any, make_tenant: Any) -> None:
    slug = make_tenant(region="id")
    r = cli(
        "digest",
        "run",
        "--tenant",
        slug,
        "--json",
        env={"BIZOS_REGION_TIME_ZONES": '{"id": "Mars/Olympus_Mons"}'},
    )
    assert r.exit_code == 2
    msg = json.loads(r.stdout)["error"]["message"]
    assert "Mars/Olympus_Mons" in msg and slug in msg


def test_all_reports_one_tenants_failure_and_makes_the_others(
    ctl: Control, cli: Any, make_tenant: Any
) -> None:
    good = make_tenant(region="id")
    bad = make_tenant(region="global")
    r = cli(
        "digest",
        "run",
        "--all",
        "--deliver",
        "card",
        "--json",
        env={"BIZOS_REGION_TIME_ZONES": '{"id": "Asia/Jakarta", "global": "Nowhere/Land"}'},
    )
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    made = {d["tenant"]: d for d in doc["digests"]}
    failed = {f["tenant"]: f for f in doc["failed"]}
    assert made[good]["created"] is True
    assert "Nowhere/Land" in failed[bad]["error"] and failed[bad]["exit_code"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--all", "--tenant", "x"), "name tenants with --tenant SLUG, or use --all"),
        ((), "name tenants with --tenant SLUG, or use --all"),
        (("--all", "--date", "yesterday"), "--date 'yesterday': use an ISO date"),
        (("--all", "--deliver", "pigeon"), "--deliver 'pigeon': one of email, card, both"),
        (("--all", "--background", "--dry-run"), "--background and --dry-run: choose one"),
    ],
    ids=["tenant-and-all", "neither", "bad-date", "bad-deliver", "background-dry-run"],
)
def test_digest_run_bad_input_exits_2(cli: Any, args: tuple[str, ...], message: str) -> None:
    r = cli("digest", "run", *args, "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["message"].startswith(message)


def test_unknown_tenant_exits_3(cli: Any) -> None:
    r = cli("digest", "run", "--tenant", "nosuchtenant", "--json")
    assert r.exit_code == 3
    assert "nosuchtenant" in json.loads(r.stdout)["error"]["message"]


def test_show_without_a_digest_exits_3(cli: Any, make_tenant: Any) -> None:
    slug = make_tenant()
    r = cli("digest", "show", slug, "--date", "2020-01-01", "--json")
    assert r.exit_code == 3
    assert "has no digest for 2020-01-01" in json.loads(r.stdout)["error"]["message"]


def test_list_bad_limit_exits_2(cli: Any, make_tenant: Any) -> None:
    r = cli("digest", "list", make_tenant(), "--limit", "0", "--json")
    assert r.exit_code == 2


# -- the job ------------------------------------------------------------------------------------


def test_the_digest_job_runs_in_a_real_worker_once(
    ctl: Control, cli: Any, jobs: Any, make_tenant: Any
) -> None:
    from test_jobs import wait_for, worker

    slug = make_tenant(region="id")
    env = {"BIZOS_DIGEST_QUEUE": jobs["queue"]}
    r = cli(
        "digest", "run", "--tenant", slug, "--date", "2026-11-30", "--background", "--json", env=env
    )
    assert r.exit_code == 0, r.stdout
    (q,) = json.loads(r.stdout)["queued"]
    assert q["job"] and not q["already_queued"]
    # Queued twice: the queueing lock keeps one job.
    r = cli(
        "digest", "run", "--tenant", slug, "--date", "2026-11-30", "--background", "--json", env=env
    )
    assert json.loads(r.stdout)["queued"][0]["already_queued"] is True
    w = worker(jobs).started()
    wait_for("the digest", lambda: count(ctl, slug, "digests") == 1)
    wait_for("the job to finish", lambda: _job_status(ctl, q["job"]) == "succeeded")
    assert w.saw("digest.run")
    # The job is idempotent: run again for the same day, it makes nothing new.
    r = cli(
        "digest", "run", "--tenant", slug, "--date", "2026-11-30", "--background", "--json", env=env
    )
    job2 = json.loads(r.stdout)["queued"][0]["job"]
    wait_for("the second job", lambda: _job_status(ctl, job2) == "succeeded")
    assert count(ctl, slug, "digests") == 1


def _job_status(ctl: Control, job_id: int) -> str | None:
    with ctl.catalog() as s:
        return s.execute(
            text("SELECT status::text FROM procrastinate_jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one_or_none()


@pytest.fixture
def jobs(ctl: Control) -> Iterator[dict[str, Any]]:
    import test_jobs

    yield from test_jobs.jobs.__wrapped__(ctl)  # type: ignore[attr-defined]


# -- isolation ----------------------------------------------------------------------------------


def test_another_tenant_neither_reads_nor_writes_a_tenants_digests_and_emails(
    ctl: Control, cli: Any, make_tenant: Any
) -> None:
    """Shared tier: both tenants' rows are in the same tables; RLS (forced) keeps them apart."""
    from bizosctl.errors import BizosError

    a, b = make_tenant(tier="shared", region="id"), make_tenant(tier="shared", region="id")
    assert cli("digest", "run", "--tenant", a, "--json").exit_code == 0
    tid_a = ctl.route(a).tenant_id
    with tenant_session(ctl, b, actor="attacker", read_only=True) as s:
        for table in ("digests", "email_senders", "email_messages", "email_attempts"):
            assert s.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0
        forced = s.execute(
            text(
                "SELECT bool_and(relrowsecurity AND relforcerowsecurity) FROM pg_class WHERE "
                "relname IN ('digests', 'email_senders', 'email_messages', 'email_attempts')"
            )
        ).scalar_one()
        assert forced is True
    with pytest.raises(BizosError) as refused, tenant_session(ctl, b, actor="attacker") as s:
        s.execute(
            text(
                "INSERT INTO digests (tenant_id, day, zone, provider, model) VALUES "
                "(:t, '2026-01-01', 'UTC', 'x', 'x')"
            ),
            {"t": tid_a},
        )
    assert 'violates row-level security policy for table "digests"' in str(refused.value)
    assert count(ctl, a, "digests") == 1


def test_a_locked_tenant_is_left_out_of_all_and_named_alone_says_why(
    ctl: Control, cli: Any, make_tenant: Any
) -> None:
    slug = make_tenant(region="id")
    assert cli("tenant", "lock", slug, "--reason", "dunning").exit_code == 0
    assert slug not in {r.slug for r in tenant_refs(ctl, None)}  # what --all runs over
    r = cli("digest", "run", "--tenant", slug, "--json")
    assert r.exit_code == 1
    assert "read_only" in json.loads(r.stdout)["error"]["message"]
    assert count(ctl, slug, "digests") == 0
