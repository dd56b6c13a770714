"""webhook add/list, webhook-secret rotate, signing and verifying, against real PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import pytest
from sqlalchemy import text

from bizosctl.errors import InvalidInput, InvalidSignature
from bizosctl.notify.webhooks import new_secret, sign, signature, verify

SECRET = re.compile(r"^whsec_[A-Za-z0-9+/]+={0,2}$")
URL = "http://127.0.0.1:8999/hooks"
BODY = b'{"type": "invoice.paid", "data": {"id": "inv_1"}}'


def wait_for(condition, *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def add(cli, tenant: str, *, url: str = URL, events: str = "invoice.paid,task.done"):
    r = cli("webhook", "add", "--tenant", tenant, "--url", url, "--events", events, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def rotate(cli, endpoint_id: str, overlap: str = "24h"):
    r = cli("webhook-secret", "rotate", "--endpoint", endpoint_id, "--grace", overlap, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def signed(ctl, endpoint_id: str, *, timestamp: int | None = None, payload: bytes = BODY):
    ts = int(time.time()) if timestamp is None else timestamp
    return sign(ctl, endpoint_id, msg_id="msg_" + uuid.uuid4().hex, timestamp=ts, payload=payload)


def endpoint_rows(ctl) -> list[str]:
    with ctl.catalog() as s:
        return list(s.execute(text("select w::text from webhook_endpoints w")).scalars())


def bad_add(cli, tenant: str, *, url: str = URL, events: str = "invoice.paid"):
    return cli("webhook", "add", "--tenant", tenant, "--url", url, "--events", events)


# -- add and list -----------------------------------------------------------------------------
def test_add_prints_secret_once_and_signs_with_it(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    doc = add(cli, slug)
    secret, ep = doc["secret"], doc["endpoint"]
    assert SECRET.match(secret) and len(base64.b64decode(secret[6:])) == 32
    assert ep["tenant"] == slug and ep["url"] == URL
    assert ep["events"] == ["invoice.paid", "task.done"]
    assert len(ep["secrets"]) == 1 and ep["secrets"][0]["expires_at"] is None
    headers = signed(ctl, ep["id"])
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert len(headers["webhook-signature"].split()) == 1
    verify(secret, headers, BODY)


def test_add_human_output_says_secret_is_not_shown_again(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli("webhook", "add", "--tenant", slug, "--url", URL, "--events", "invoice.paid")
    assert r.exit_code == 0, r.stderr
    assert len([w for w in r.stdout.split() if SECRET.match(w)]) == 1
    assert "This signing secret will not be shown again" in r.stdout


def test_secret_is_sealed_in_the_catalog(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    doc = add(cli, slug)
    secret = doc["secret"]
    rows = endpoint_rows(ctl)
    assert not any(secret[6:] in row for row in rows)
    with ctl.catalog() as s:
        stored = s.execute(
            text("select secrets from webhook_endpoints where id = :i"),
            {"i": doc["endpoint"]["id"]},
        ).scalar_one()
    assert len(stored) == 1 and stored[0]["secret_enc"].startswith("bz1.")
    assert stored[0]["expires_at"] is None and stored[0]["created_at"]


def test_list_never_shows_secrets(cli, make_tenant):
    slug = make_tenant(tier="shared")
    doc = add(cli, slug)
    r = cli("webhook", "list", "--tenant", slug, "--json")
    assert r.exit_code == 0, r.stderr
    endpoints = json.loads(r.stdout)["endpoints"]
    assert [e["id"] for e in endpoints] == [doc["endpoint"]["id"]]
    assert set(endpoints[0]["secrets"][0]) == {"created_at", "expires_at"}
    assert doc["secret"][6:] not in r.stdout and "secret_enc" not in r.stdout
    r = cli("webhook", "list", "--tenant", slug)
    assert r.exit_code == 0 and doc["endpoint"]["id"] in r.stdout
    assert doc["secret"][6:] not in r.stdout


def test_add_dry_run_adds_nothing(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = cli(
        "webhook", "add", "--tenant", slug, "--url", URL, "--events", "invoice.paid", "--dry-run",
        "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {
        "dry_run": True,
        "endpoint": {"tenant": slug, "url": URL, "events": ["invoice.paid"]},
    }
    r = cli("webhook", "list", "--tenant", slug, "--json")
    assert json.loads(r.stdout)["endpoints"] == []


def test_add_rejects_bad_url(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, url="not a url")
    assert r.exit_code == 2
    assert "invalid webhook URL 'not a url': use https://host[:port]/path" in r.stderr


def test_add_rejects_url_without_host(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, url="https:///hooks")
    assert r.exit_code == 2
    assert "invalid webhook URL 'https:///hooks': use https://host[:port]/path" in r.stderr


def test_add_rejects_other_scheme(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, url="ftp://example.com/hooks")
    assert r.exit_code == 2
    assert "invalid webhook URL 'ftp://example.com/hooks': use https://host[:port]/path" in r.stderr


def test_add_rejects_plain_http_to_a_remote_host(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, url="http://example.com/hooks")
    assert r.exit_code == 2
    assert (
        "webhook URL 'http://example.com/hooks' must use https "
        "(plain http only for localhost or 127.0.0.1)"
    ) in r.stderr


def test_add_rejects_credentials_in_url(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, url="https://user:hunter2@example.com/hooks")
    assert r.exit_code == 2
    assert "webhook URL must not contain a user name or password" in r.stderr
    assert "hunter2" not in r.stderr + r.stdout


def test_add_rejects_bad_event_name(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, events="invoice.paid,Invoice.Paid")
    assert r.exit_code == 2
    assert (
        "invalid event name 'Invoice.Paid': use lowercase dotted names like invoice.paid"
        in r.stderr
    )


def test_add_rejects_event_without_dot(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, events="invoice")
    assert r.exit_code == 2
    assert "invalid event name 'invoice'" in r.stderr


def test_add_rejects_no_events(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = bad_add(cli, slug, events=",")
    assert r.exit_code == 2
    assert "give at least one event, e.g. invoice.paid" in r.stderr


def test_add_rejects_unknown_tenant(cli):
    r = bad_add(cli, "nobody-here")
    assert r.exit_code == 3
    assert "no tenant named 'nobody-here'" in r.stderr


def test_list_rejects_unknown_tenant(cli):
    r = cli("webhook", "list", "--tenant", "nobody-here", "--json")
    assert r.exit_code == 3
    assert json.loads(r.stdout)["error"]["message"] == "no tenant named 'nobody-here'"


# -- rotate -----------------------------------------------------------------------------------
def test_rotate_unknown_endpoint(cli):
    missing = str(uuid.uuid4())
    r = cli("webhook-secret", "rotate", "--endpoint", missing)
    assert r.exit_code == 3
    assert f"no webhook endpoint '{missing}'" in r.stderr


def test_rotate_endpoint_that_is_not_an_id(cli):
    r = cli("webhook-secret", "rotate", "--endpoint", "nope")
    assert r.exit_code == 3
    assert "no webhook endpoint 'nope'" in r.stderr


def test_rotate_rejects_bad_overlap(cli, make_tenant):
    ep = add(cli, make_tenant(tier="shared"))["endpoint"]
    r = cli("webhook-secret", "rotate", "--endpoint", ep["id"], "--overlap", "a while")
    assert r.exit_code == 2
    assert "invalid --overlap 'a while': use e.g. 500ms, 5s, 2m, 1h or 7d" in r.stderr


def test_rotate_rejects_overlap_beyond_thirty_days(cli, make_tenant):
    ep = add(cli, make_tenant(tier="shared"))["endpoint"]
    r = cli("webhook-secret", "rotate", "--endpoint", ep["id"], "--grace", "31d")
    assert r.exit_code == 2
    assert "grace period must be at most 30d" in r.stderr


def test_sign_rejects_bad_message_id(cli, ctl, make_tenant):
    ep = add(cli, make_tenant(tier="shared"))["endpoint"]
    with pytest.raises(InvalidInput) as info:
        sign(ctl, ep["id"], msg_id="msg 1.2", timestamp=1_700_000_000, payload=BODY)
    assert info.value.message == (
        "invalid webhook message id 'msg 1.2': use 1-255 letters, digits, '_' or '-'"
    )


def test_rotate_dry_run_changes_nothing(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    eid = doc["endpoint"]["id"]
    r = cli("webhook-secret", "rotate", "--endpoint", eid, "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["plan"]["endpoint"]["id"] == eid
    headers = signed(ctl, eid)
    assert len(headers["webhook-signature"].split()) == 1
    verify(doc["secret"], headers, BODY)


def test_old_and_new_secret_verify_during_the_overlap(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    old = doc["secret"]
    rotated = rotate(cli, doc["endpoint"]["id"], "1h")
    new = rotated["secret"]
    assert new != old and SECRET.match(new)
    infos = rotated["endpoint"]["secrets"]
    assert len(infos) == 2 and infos[0]["expires_at"] is None and infos[1]["expires_at"]
    headers = signed(ctl, doc["endpoint"]["id"])
    assert len(headers["webhook-signature"].split()) == 2
    verify(old, headers, BODY)
    verify(new, headers, BODY)


def test_tampered_payload_is_rejected(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    headers = signed(ctl, doc["endpoint"]["id"])
    with pytest.raises(InvalidSignature) as info:
        verify(doc["secret"], headers, BODY.replace(b"inv_1", b"inv_2"))
    assert info.value.message == "no webhook signature matches"
    assert info.value.http_status == 401


def test_wrong_secret_is_rejected(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    headers = signed(ctl, doc["endpoint"]["id"])
    with pytest.raises(InvalidSignature, match="no webhook signature matches"):
        verify(new_secret(), headers, BODY)


def test_stale_timestamp_is_rejected(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    ts = 1_700_000_000
    headers = signed(ctl, doc["endpoint"]["id"], timestamp=ts)
    verify(doc["secret"], headers, BODY, now=ts + 300)
    with pytest.raises(InvalidSignature) as info:
        verify(doc["secret"], headers, BODY, now=ts + 301)
    assert info.value.message == "webhook timestamp is too old (more than 300 s)"


def test_future_timestamp_is_rejected(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    ts = 1_700_000_000
    headers = signed(ctl, doc["endpoint"]["id"], timestamp=ts)
    with pytest.raises(InvalidSignature) as info:
        verify(doc["secret"], headers, BODY, now=ts - 301)
    assert info.value.message == "webhook timestamp is too far in the future (more than 300 s)"


def test_timestamp_header_cannot_be_changed(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    headers = signed(ctl, doc["endpoint"]["id"])
    headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + 1)
    with pytest.raises(InvalidSignature, match="no webhook signature matches"):
        verify(doc["secret"], headers, BODY)


def test_missing_signature_header_is_rejected():
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(int(time.time()))}
    with pytest.raises(InvalidSignature) as info:
        verify(new_secret(), headers, BODY)
    assert info.value.message == "missing header(s): webhook-signature"


def test_after_the_overlap_only_the_new_secret_signs(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    eid, old = doc["endpoint"]["id"], doc["secret"]
    new = rotate(cli, eid, "1s")["secret"]
    wait_for(lambda: len(signed(ctl, eid)["webhook-signature"].split()) == 1, what="end of overlap")
    headers = signed(ctl, eid)
    verify(new, headers, BODY)
    with pytest.raises(InvalidSignature, match="no webhook signature matches"):
        verify(old, headers, BODY)
    r = cli("webhook", "list", "--tenant", doc["endpoint"]["tenant"], "--json")
    assert len(json.loads(r.stdout)["endpoints"][0]["secrets"]) == 1


def test_rotation_drops_expired_secrets(cli, ctl, make_tenant):
    doc = add(cli, make_tenant(tier="shared"))
    eid = doc["endpoint"]["id"]
    rotate(cli, eid, "1s")
    wait_for(lambda: len(signed(ctl, eid)["webhook-signature"].split()) == 1, what="expiry")
    latest = rotate(cli, eid, "1h")["secret"]
    with ctl.catalog() as s:
        stored = s.execute(
            text("select secrets from webhook_endpoints where id = :i"), {"i": eid}
        ).scalar_one()
    assert len(stored) == 2  # the newest and the one it replaced; the first one is gone
    with pytest.raises(InvalidSignature):
        verify(doc["secret"], signed(ctl, eid), BODY)
    verify(latest, signed(ctl, eid), BODY)


def test_signature_matches_the_standard_webhooks_test_vector():
    # The specification's published example: any Standard Webhooks library verifies ours.
    sig = signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
        payload=b'{"test": 2432232314}',
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# -- the secret is shown once -----------------------------------------------------------------
def test_secrets_appear_only_where_they_are_shown(cli, ctl, make_tenant):
    slug = make_tenant(tier="shared")
    outputs: list[tuple[str, str]] = []

    def run(label: str, *args: str):
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        outputs.append((label, r.stdout + r.stderr))
        return r

    r = run(
        "add-json", "webhook", "add", "--tenant", slug, "--url", URL, "--events", "a.b", "--json"
    )
    first = json.loads(r.stdout)
    eid = first["endpoint"]["id"]
    r = run("add", "webhook", "add", "--tenant", slug, "--url", URL, "--events", "a.b")
    human = next(w for w in r.stdout.split() if SECRET.match(w))
    r = run("rotate-json", "webhook-secret", "rotate", "--endpoint", eid, "--json")
    rotated = json.loads(r.stdout)["secret"]
    r = run("rotate", "webhook-secret", "rotate", "--endpoint", eid, "--overlap", "1h")
    rotated_human = next(w for w in r.stdout.split() if SECRET.match(w))
    run("list-json", "webhook", "list", "--tenant", slug, "--json")
    run("list", "webhook", "list")
    run("dry-run", "webhook-secret", "rotate", "--endpoint", eid, "--dry-run", "--json")

    shown_in = {
        first["secret"]: "add-json",
        human: "add",
        rotated: "rotate-json",
        rotated_human: "rotate",
    }
    assert len(set(shown_in)) == 4
    rows = endpoint_rows(ctl)
    for secret, where in shown_in.items():
        key = secret.removeprefix("whsec_")
        seen = [label for label, out in outputs for _ in range(out.count(key))]
        assert seen == [where], (where, seen)
        assert not any(key in row for row in rows)
