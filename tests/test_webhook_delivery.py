"""Outbound webhooks end to end: emit_event -> outbox -> relay -> delivery -> receiver.

The receiver is a small http.server on 127.0.0.1 that verifies every request with the real
``standardwebhooks`` package. Time is injected (``now=``) where a schedule matters.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, text
from standardwebhooks.webhooks import Webhook

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from bizosctl.notify.delivery import LEASE_S, SCHEDULE_S, attempt, deliver_due, next_delay_s
from bizosctl.notify.outbox import emit_event
from bizosctl.notify.relay import Relay
from bizosctl.tenancy.router import tenant_session


# -- the receiver -------------------------------------------------------------------------------
class Receiver:
    """Answers each request with the next planned response (default 200) and verifies it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: list[
            Any
        ] = []  # ints (status), ("body", status, bytes), "hang", ("redirect", url)
        self.secrets: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = []
                for secret in receiver.secrets:
                    try:
                        verified.append(Webhook(secret).verify(body, headers))
                    except Exception as exc:  # the package's WebhookVerificationError
                        verified.append(exc)
                with receiver.lock:
                    receiver.requests.append(
                        {"headers": headers, "body": body, "verified": verified, "path": self.path}
                    )
                    step = receiver.plan.pop(0) if receiver.plan else 200
                if step == "hang":
                    receiver.release.wait(30)
                    return
                status, extra, payload = 200, {}, b"ok"
                if isinstance(step, int):
                    status = step
                elif step[0] == "redirect":
                    status, extra = 302, {"Location": step[1]}
                elif step[0] == "body":
                    status, payload = step[1], step[2]
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        return [r["headers"]["webhook-id"] for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def endpoints(ctl: Control) -> Iterator[list[str]]:
    """Ids of the endpoints a test adds: removed afterwards, with their deliveries."""
    made: list[str] = []
    yield made
    with ctl.catalog() as s:
        s.execute(
            text("DELETE FROM webhook_endpoints WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": made},
        )


def wait_for(condition: Any, *, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def add_endpoint(cli: Any, receiver: Receiver, endpoints: list[str], slug: str, **kw: Any) -> str:
    events = kw.get("events", "invoice.paid")
    url = kw.get("url", receiver.url)
    r = cli("webhook", "add", "--tenant", slug, "--url", url, "--events", events, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    receiver.secrets.append(doc["secret"])
    endpoints.append(doc["endpoint"]["id"])
    return str(doc["endpoint"]["id"])


def emit(ctl: Control, slug: str, type_: str = "invoice.paid", data: Any = None) -> str:
    with tenant_session(ctl, slug, actor="test") as s:
        return emit_event(s, type_, data if data is not None else {"invoice": "inv_1"})


def relay_all(ctl: Control) -> int:
    relay = Relay(ctl)
    try:
        return relay.sweep()
    finally:
        relay.close()


def deliveries_of(ctl: Control, endpoint: str) -> list[WebhookDelivery]:
    with ctl.catalog() as s:
        rows = s.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == uuid.UUID(endpoint))
            .order_by(WebhookDelivery.created_at)
        ).scalars()
        out = list(rows)
        s.expunge_all()
        return out


def attempts_of(ctl: Control, delivery: uuid.UUID) -> list[WebhookAttempt]:
    with ctl.catalog() as s:
        out = list(
            s.execute(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery)
                .order_by(WebhookAttempt.at)
            ).scalars()
        )
        s.expunge_all()
        return out


def endpoint_row(ctl: Control, endpoint: str) -> WebhookEndpoint:
    with ctl.catalog() as s:
        ep = s.get(WebhookEndpoint, uuid.UUID(endpoint))
        assert ep is not None
        s.expunge(ep)
        return ep


def outbox_count(ctl: Control, slug: str) -> int:
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        return int(s.execute(text("SELECT count(*) FROM outbox")).scalar_one())


def one_delivery(ctl: Control, cli: Any, receiver: Receiver, endpoints: list[str], slug: str):
    ep = add_endpoint(cli, receiver, endpoints, slug)
    event = emit(ctl, slug)
    relay_all(ctl)
    (d,) = deliveries_of(ctl, ep)
    assert d.event_id == event
    return ep, d


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["shared", "schema", "isolated"])
def test_event_goes_from_outbox_to_a_verified_delivery(
    ctl, cli, make_tenant, receiver, endpoints, tier
):
    slug = make_tenant(tier=tier)
    ep = add_endpoint(cli, receiver, endpoints, slug)
    event = emit(ctl, slug, data={"invoice": "inv_42", "total": "11.00"})
    assert event.startswith("evt_") and outbox_count(ctl, slug) == 1
    assert relay_all(ctl) >= 1
    assert outbox_count(ctl, slug) == 0
    (d,) = deliveries_of(ctl, ep)
    assert (d.status, d.event_id, d.event_type) == ("pending", event, "invoice.paid")
    out = attempt(ctl, d.id)
    assert out.result == "delivered" and out.status_code == 200
    (req,) = receiver.requests
    assert req["headers"]["webhook-id"] == event
    body = req["verified"][-1]  # standardwebhooks returns the parsed payload
    assert body["type"] == "invoice.paid" and body["data"] == {
        "invoice": "inv_42",
        "total": "11.00",
    }
    (a,) = attempts_of(ctl, d.id)
    assert a.status_code == 200 and a.error is None and a.latency_ms >= 0
    assert a.response_excerpt == "ok"
    assert deliveries_of(ctl, ep)[0].status == "delivered"


def test_an_event_rolls_back_with_its_transaction(ctl, make_tenant):
    slug = make_tenant(tier="shared")
    with pytest.raises(RuntimeError), tenant_session(ctl, slug, actor="test") as s:
        emit_event(s, "invoice.paid", {"n": 1})
        raise RuntimeError("the change failed")
    assert outbox_count(ctl, slug) == 0


def test_outbox_rows_are_confined_to_their_tenant(ctl, make_tenant):
    a, b = make_tenant(tier="shared"), make_tenant(tier="shared")
    emit(ctl, a)
    assert outbox_count(ctl, a) == 1 and outbox_count(ctl, b) == 0
    from bizosctl.errors import QueryFailed

    # Only the relay (as the operator) deletes events: the application may not, even its own.
    with pytest.raises(QueryFailed, match="permission denied for table outbox"):
        with tenant_session(ctl, a, actor="test") as s:
            s.execute(text("DELETE FROM outbox"))
    assert outbox_count(ctl, a) == 1
    relay_all(ctl)


def test_only_subscribed_live_endpoints_get_a_delivery(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="schema")
    paid = add_endpoint(cli, receiver, endpoints, slug, events="invoice.paid")
    done = add_endpoint(cli, receiver, endpoints, slug, events="task.done")
    other = make_tenant(tier="schema")
    foreign = add_endpoint(cli, receiver, endpoints, other, events="invoice.paid")
    emit(ctl, slug, "invoice.paid")
    relay_all(ctl)
    assert len(deliveries_of(ctl, paid)) == 1
    assert deliveries_of(ctl, done) == [] and deliveries_of(ctl, foreign) == []


def test_bad_event_input_is_refused(ctl, make_tenant):
    from bizosctl.errors import InvalidInput

    slug = make_tenant(tier="shared")
    with tenant_session(ctl, slug, actor="test") as s:
        with pytest.raises(InvalidInput, match="invalid event name 'Invoice Paid'"):
            emit_event(s, "Invoice Paid", {})
        with pytest.raises(InvalidInput, match="event data is not JSON"):
            emit_event(s, "invoice.paid", {"x": object()})


def test_relay_wakes_on_notify_without_polling(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="schema")
    ep = add_endpoint(cli, receiver, endpoints, slug)
    got: queue.Queue[list[uuid.UUID]] = queue.Queue()
    # Polls once at start, then not for an hour: only a NOTIFY can bring the event in.
    relay = Relay(ctl, on_deliveries=got.put, min_interval=3600, max_interval=3600)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: relay.stats.polls > 0, what="the first poll")
        event = emit(ctl, slug)
        ids = got.get(timeout=15)
        (d,) = deliveries_of(ctl, ep)
        assert d.id in ids and d.event_id == event
    finally:
        stop.set()
        thread.join(10)


def test_a_busy_isolated_database_gets_a_listener(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="isolated")
    ep = add_endpoint(cli, receiver, endpoints, slug)
    emit(ctl, slug)  # found by the first poll, which gives the database a listener
    got: queue.Queue[list[uuid.UUID]] = queue.Queue()
    relay = Relay(ctl, on_deliveries=got.put, min_interval=3600, max_interval=3600)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        got.get(timeout=15)
        second = emit(ctl, slug)
        got.get(timeout=15)
        assert [d.event_id for d in deliveries_of(ctl, ep)][-1] == second
    finally:
        stop.set()
        thread.join(10)


# -- retries, failures, disabling -------------------------------------------------------------
def test_5xx_then_success_keeps_the_webhook_id(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [503]
    t0 = utcnow()
    first = attempt(ctl, d.id, now=t0)
    assert first.result == "retry" and first.status_code == 503 and first.error == "HTTP 503"
    delay = (first.next_attempt_at - t0).total_seconds()
    assert SCHEDULE_S[1] * 0.9 <= delay <= SCHEDULE_S[1] * 1.1
    assert attempt(ctl, d.id, now=t0).result == "skipped"  # not due yet
    second = attempt(ctl, d.id, now=t0 + dt.timedelta(seconds=6))
    assert second.result == "delivered"
    assert receiver.ids() == [d.event_id, d.event_id]
    assert all(not isinstance(v, Exception) for r in receiver.requests for v in r["verified"])
    assert [a.status_code for a in attempts_of(ctl, d.id)] == [503, 200]
    assert endpoint_row(ctl, ep).failing_since is None


def test_receiver_timeout_is_a_failed_attempt(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    _ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = ["hang"]
    out = attempt(ctl, d.id, timeout_s=0.3)
    assert out.result == "retry" and out.status_code is None
    assert "timed out after 0.3 s" in out.error
    (a,) = attempts_of(ctl, d.id)
    assert a.status_code is None and "timed out" in a.error


def test_410_disables_the_endpoint_at_once(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [410]
    out = attempt(ctl, d.id)
    assert out.result == "failed" and out.endpoint_disabled == "the receiver answered 410 Gone"
    row = endpoint_row(ctl, ep)
    assert row.disabled_at is not None and row.disabled_reason == "the receiver answered 410 Gone"
    emit(ctl, slug)
    relay_all(ctl)
    assert len(deliveries_of(ctl, ep)) == 1  # a disabled endpoint gets no new delivery


def test_a_redirect_is_not_followed_and_fails(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    _ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [("redirect", "http://169.254.169.254/latest/meta-data/")]
    out = attempt(ctl, d.id)
    assert out.result == "retry" and out.status_code == 302
    assert out.error == "HTTP 302 (redirect not followed)"
    assert len(receiver.requests) == 1


def test_a_private_destination_is_refused_at_send_time(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    _ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    prod = Control(ctl.settings.model_copy(update={"env": "production"}))
    out = attempt(prod, d.id)
    assert out.result == "retry" and out.status_code is None
    assert "is a non-public address (127.0.0.1)" in out.error
    assert receiver.requests == []
    (a,) = attempts_of(ctl, d.id)
    assert "non-public address" in a.error


def test_the_response_excerpt_is_short_and_clean(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    _ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [("body", 500, b"\x1b[31mboom\x00\r\n" + b"x" * 1000)]
    attempt(ctl, d.id)
    (a,) = attempts_of(ctl, d.id)
    assert a.response_excerpt.startswith("[31mboom") and "\x1b" not in a.response_excerpt
    assert all(c.isprintable() for c in a.response_excerpt) and len(a.response_excerpt) <= 256


def test_endpoint_disabled_after_five_days_of_failures(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [500, 500, 500]
    t0 = utcnow()
    assert attempt(ctl, d.id, now=t0).endpoint_disabled is None
    assert endpoint_row(ctl, ep).failing_since is not None
    day4 = attempt(ctl, d.id, now=t0 + dt.timedelta(days=4))
    assert day4.result == "retry" and day4.endpoint_disabled is None
    day5 = attempt(ctl, d.id, now=t0 + dt.timedelta(days=5, minutes=1))
    assert day5.endpoint_disabled.startswith("every delivery failed for 5 days")
    assert endpoint_row(ctl, ep).disabled_at is not None
    # Disabled: its pending delivery is not attempted, even when due.
    later = t0 + dt.timedelta(days=6)
    assert attempt(ctl, d.id, now=later).result == "skipped"
    r = cli("webhook", "enable", ep, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["was_disabled"] is True and doc["endpoint"]["disabled_at"] is None
    assert attempt(ctl, d.id, now=later).result == "delivered"


def test_retry_schedule_and_its_end():
    import random

    rng = random.Random(7)
    for n, base in enumerate(SCHEDULE_S[1:], start=1):
        delay = next_delay_s(n, rng=rng)
        assert delay is not None and base * 0.9 <= delay <= base * 1.1
    assert next_delay_s(len(SCHEDULE_S)) is None
    assert SCHEDULE_S == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def test_retries_run_out_into_failed(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    _ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [500] * len(SCHEDULE_S)
    at = utcnow()
    results = []
    for _ in SCHEDULE_S:
        results.append(attempt(ctl, d.id, now=at).result)
        at += dt.timedelta(hours=11)
    assert results == ["retry"] * (len(SCHEDULE_S) - 1) + ["failed"]
    assert len(attempts_of(ctl, d.id)) == len(SCHEDULE_S)


def test_deliver_due_is_safe_with_two_workers(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep = add_endpoint(cli, receiver, endpoints, slug)
    for i in range(20):
        emit(ctl, slug, data={"n": i})
    relay_all(ctl)
    counts: list[int] = []
    workers = [
        threading.Thread(target=lambda: counts.append(deliver_due(ctl, limit=100)))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    ours = deliveries_of(ctl, ep)
    assert {d.status for d in ours} == {"delivered"}
    assert sorted(receiver.ids()) == sorted(d.event_id for d in ours)  # each exactly once


# -- crashes ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_delivery_is_retried_with_the_same_webhook_id(
    ctl, cli, make_tenant, receiver, endpoints, run_bizosctl
):
    slug = make_tenant(tier="schema")
    ep = add_endpoint(cli, receiver, endpoints, slug)
    event = emit(ctl, slug)
    r = run_bizosctl("webhook", "deliver", env={"BIZOS_CRASH_AT": "webhook.deliver.sent"})
    assert r.returncode == -9, r.stderr
    assert event in receiver.ids()
    (d,) = deliveries_of(ctl, ep)
    assert d.status == "pending" and d.attempts == 1 and attempts_of(ctl, d.id) == []
    assert attempt(ctl, d.id).result == "skipped"  # the dead worker's lease still holds it
    after_lease = utcnow() + dt.timedelta(seconds=LEASE_S + 1)
    assert attempt(ctl, d.id, now=after_lease).result == "delivered"
    assert [i for i in receiver.ids() if i == event] == [event, event]


@pytest.mark.slow
def test_sigkill_between_the_relay_commits_creates_no_duplicate(
    ctl, cli, make_tenant, receiver, endpoints, run_bizosctl
):
    slug = make_tenant(tier="isolated")
    ep = add_endpoint(cli, receiver, endpoints, slug)
    emit(ctl, slug)
    r = run_bizosctl("webhook", "deliver", env={"BIZOS_CRASH_AT": "webhook.relay.inserted"})
    assert r.returncode == -9, r.stderr
    assert outbox_count(ctl, slug) == 1 and len(deliveries_of(ctl, ep)) == 1
    r = run_bizosctl("webhook", "deliver", "--json")
    assert r.returncode == 0, r.stderr
    assert outbox_count(ctl, slug) == 0
    (d,) = deliveries_of(ctl, ep)
    assert d.status == "delivered" and receiver.ids().count(d.event_id) == 1


# -- CLI --------------------------------------------------------------------------------------
def test_deliveries_lists_and_filters(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    r = cli("webhook", "deliveries", "--endpoint", ep, "--json")
    assert r.exit_code == 0, r.stderr
    (row,) = json.loads(r.stdout)["deliveries"]
    assert row["id"] == str(d.id) and row["status"] == "pending" and row["tenant"] == slug
    r = cli("webhook", "deliveries", "--endpoint", ep, "--status", "delivered", "--json")
    assert json.loads(r.stdout)["deliveries"] == []
    r = cli("webhook", "deliveries", "--endpoint", ep[:8])
    assert r.exit_code == 0 and str(d.id) in r.stdout


def test_deliveries_with_a_bad_status_exits_2(cli):
    r = cli("webhook", "deliveries", "--status", "lost")
    assert r.exit_code == 2
    assert "invalid status 'lost': use one of pending, delivered, failed" in r.stderr


def test_deliveries_of_an_unknown_endpoint_exits_3(cli):
    r = cli("webhook", "deliveries", "--endpoint", str(uuid.uuid4()))
    assert r.exit_code == 3 and "no webhook endpoint" in r.stderr


def test_replay_sends_again_with_the_same_webhook_id(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    _ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    attempt(ctl, d.id)
    r = cli("webhook", "replay", str(d.id), "--dry-run", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["deliveries"] == [str(d.id)]
    assert attempt(ctl, d.id).result == "skipped"  # the dry run changed nothing
    r = cli("webhook", "replay", str(d.id), "--json")
    assert r.exit_code == 0, r.stderr
    assert attempt(ctl, d.id).result == "delivered"
    assert receiver.ids() == [d.event_id, d.event_id]


def test_replay_since_takes_the_failed_ones(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    _ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [410]
    attempt(ctl, d.id)  # failed, endpoint disabled
    r = cli("webhook", "replay", "--since", "1h", "--json")
    assert r.exit_code == 0, r.stderr
    assert str(d.id) in json.loads(r.stdout)["waiting_for_enable"]
    assert cli("webhook", "enable", _ep).exit_code == 0
    assert attempt(ctl, d.id).result == "delivered"


def test_replay_of_an_unknown_delivery_exits_3(cli):
    missing = str(uuid.uuid4())
    r = cli("webhook", "replay", missing)
    assert r.exit_code == 3 and f"no webhook delivery '{missing}'" in r.stderr
    r = cli("webhook", "replay", "not-a-uuid")
    assert r.exit_code == 3 and "no webhook delivery 'not-a-uuid'" in r.stderr


def test_replay_with_a_bad_since_exits_2(cli):
    r = cli("webhook", "replay", "--since", "yesterday-ish")
    assert r.exit_code == 2
    assert "invalid --since 'yesterday-ish': use an ISO time" in r.stderr


def test_replay_needs_one_of_id_or_since(cli):
    r = cli("webhook", "replay")
    assert r.exit_code == 2 and "give a delivery id or --since, not both" in r.stderr
    r = cli("webhook", "replay", str(uuid.uuid4()), "--since", "1h")
    assert r.exit_code == 2 and "give a delivery id or --since, not both" in r.stderr


def test_enable_an_unknown_endpoint_exits_3(cli):
    r = cli("webhook", "enable", str(uuid.uuid4()))
    assert r.exit_code == 3 and "no webhook endpoint" in r.stderr


def test_enable_dry_run_changes_nothing(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [410]
    attempt(ctl, d.id)
    r = cli("webhook", "enable", ep, "--dry-run", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["was_disabled"] is True
    assert endpoint_row(ctl, ep).disabled_at is not None


def test_webhook_test_goes_through_the_outbox(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="isolated")
    ep = add_endpoint(cli, receiver, endpoints, slug, events="invoice.paid")
    bystander = add_endpoint(cli, receiver, endpoints, slug, events="invoice.paid")
    r = cli("webhook", "test", ep, "--json")
    assert r.exit_code == 0, r.stderr
    event = json.loads(r.stdout)["event_id"]
    assert outbox_count(ctl, slug) == 1
    r = cli("webhook", "deliver", "--json")
    assert r.exit_code == 0, r.stderr
    assert receiver.ids() == [event]
    body = next(v for v in receiver.requests[0]["verified"] if isinstance(v, dict))
    assert body["type"] == "webhook.test" and body["data"]["endpoint"] == ep
    assert deliveries_of(ctl, bystander) == []


def test_webhook_test_of_a_disabled_endpoint_exits_2(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep, d = one_delivery(ctl, cli, receiver, endpoints, slug)
    receiver.plan = [410]
    attempt(ctl, d.id)
    r = cli("webhook", "test", ep)
    assert r.exit_code == 2 and "is disabled: enable it first" in r.stderr


def test_webhook_test_of_an_unknown_endpoint_exits_3(cli):
    r = cli("webhook", "test", str(uuid.uuid4()))
    assert r.exit_code == 3 and "no webhook endpoint" in r.stderr


def test_webhook_test_dry_run_emits_nothing(ctl, cli, make_tenant, receiver, endpoints):
    slug = make_tenant(tier="shared")
    ep = add_endpoint(cli, receiver, endpoints, slug)
    r = cli("webhook", "test", ep, "--dry-run", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"dry_run": True, "event_id": None}
    assert outbox_count(ctl, slug) == 0


def test_deliver_with_a_bad_limit_exits_2(cli):
    r = cli("webhook", "deliver", "--limit", "0")
    assert r.exit_code == 2 and "--limit must be at least 1" in r.stderr


# -- on procrastinate (an App of the test's own, in a throwaway database) ---------------------
@pytest.fixture
def proc_app(ctl: Control) -> Iterator[Any]:
    import procrastinate
    import psycopg
    from psycopg.conninfo import make_conninfo

    from bizosctl.db.engines import psycopg_conninfo
    from bizosctl.notify.jobs import make_blueprint

    with ctl.catalog() as s:
        server = s.execute(text("SELECT name FROM servers ORDER BY name LIMIT 1")).scalar_one()
    handle = ctl.server(server)
    name = "bzproc_" + uuid.uuid4().hex[:10]
    admin = make_conninfo(**psycopg_conninfo(handle.admin_url("postgres")))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    conninfo = make_conninfo(**psycopg_conninfo(handle.admin_url(name)))
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    app.add_tasks_from(make_blueprint(relay_seconds=1), namespace="webhooks")
    with app.open():
        app.schema_manager.apply_schema()
        app.conninfo = conninfo  # type: ignore[attr-defined]
        yield app
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_blueprint_delivers_and_redefers_a_retry(
    ctl, cli, make_tenant, receiver, endpoints, proc_app
):
    import psycopg

    from bizosctl.notify.jobs import DELIVER, defer_deliveries

    deliver_name = f"webhooks:{DELIVER}"
    slug = make_tenant(tier="schema")
    ep = add_endpoint(cli, receiver, endpoints, slug)
    events = {emit(ctl, slug), emit(ctl, slug)}
    receiver.plan = [200, 503]  # whichever is sent second fails
    relay = Relay(ctl, on_deliveries=lambda ids: defer_deliveries(proc_app, deliver_name, ids))
    try:
        relay.sweep()
    finally:
        relay.close()
    proc_app.run_worker(queues=["webhooks"], wait=False, install_signal_handlers=False)
    ours = deliveries_of(ctl, ep)
    assert {d.event_id for d in ours} == events == set(receiver.ids())
    assert sorted(d.status for d in ours) == ["delivered", "pending"]
    (retried,) = [d for d in ours if d.status == "pending"]
    assert retried.attempts == 1 and retried.last_status == 503
    with psycopg.connect(proc_app.conninfo) as conn:
        todo = conn.execute(
            "SELECT args, scheduled_at, queueing_lock FROM procrastinate_jobs "
            "WHERE status = 'todo' AND task_name = %s",
            (deliver_name,),
        ).fetchall()
    assert [(args["delivery_id"], lock) for args, _at, lock in todo] == [
        (str(retried.id), f"webhook-delivery:{retried.id}")
    ]
    assert todo[0][1] == retried.next_attempt_at
