"""The API's admin routes over a real socket: API keys, webhooks (endpoints, deliveries,
replay), the tenant upgrade run by a worker, and OAuth login against a loopback provider.
For every route: another tenant's ids are 404, RBAC denials 403, bad input 422."""

from __future__ import annotations

import base64
import hashlib
import signal
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from apiserver import Org, bearer, login, make_org, serve_app
from conftest import unique_slug
from fakes.oauth import Account, FakeOAuth
from sqlalchemy import func, select, text
from test_jobs import Worker, wait_for

from bizosctl.catalog.control import Control


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOAuth]:
    provider = FakeOAuth().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def orgs(fleet: Control) -> Iterator[tuple[Org, Org]]:
    a, b = make_org(fleet, unique_slug("adma")), make_org(fleet, unique_slug("admb"))
    yield a, b
    from bizosctl.tenancy.provision import delete_tenant

    for org in (a, b):
        delete_tenant(fleet, org.slug)


@pytest.fixture(scope="module")
def base_url(fleet: Control, orgs: tuple[Org, Org], fake: FakeOAuth) -> Iterator[str]:
    from bizosctl.config import Settings

    settings = Settings(
        rate_limits={"auth": "1000/minute"},
        oauth_google_client_id=fake.client_id,
        oauth_google_client_secret=fake.client_secret,
        oauth_google_issuer=fake.url,
        oauth_github_client_id=fake.client_id,
        oauth_github_client_secret=fake.client_secret,
        oauth_github_url=fake.url,
        oauth_github_api_url=fake.url,
    )
    with serve_app(Control(settings)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def tokens(base_url: str, orgs: tuple[Org, Org]) -> dict[str, str]:
    """Access tokens of A's admin, manager and staff, and B's admin (one login each)."""
    a, b = orgs
    with httpx.Client(base_url=base_url, timeout=30) as c:
        out = {role: str(login(c, a, role)["access_token"]) for role in ("Admin", "Manager")}
        out["B"] = str(login(c, b, "Admin")["access_token"])
    return out


def is_problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, object] = r.json()
    assert str(doc["type"]).endswith("/" + code), doc
    return doc


# -- API keys ---------------------------------------------------------------------------------
def test_api_keys_are_listed_without_secrets(client, orgs, tokens):
    a, _ = orgs
    r = client.get("/api/v1/api-keys", headers=bearer(tokens["Admin"]))
    assert r.status_code == 200, r.text
    names = {k["name"] for k in r.json()["items"]}
    assert {"all", "read"} <= names and all(k["tenant"] == a.slug for k in r.json()["items"])
    for token in a.keys.values():
        assert token.split("_", 2)[2] not in r.text  # the secret part of each key
    assert "secret_hash" not in r.text and "token" not in r.json()["items"][0]


def test_create_shows_the_token_once_and_it_works(client, orgs, tokens):
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "ci", "scopes": ["invoices:read"], "expires_in_seconds": 3600},
        headers=bearer(tokens["Admin"]),
    )
    assert r.status_code == 201, r.text
    key, token = r.json()["key"], r.json()["token"]
    assert token.startswith(f"bz_{key['prefix']}_") and key["expires_at"] is not None
    assert client.get("/api/v1/invoices", headers=bearer(token)).status_code == 200
    shown = client.get(f"/api/v1/api-keys/{key['prefix']}", headers=bearer(tokens["Admin"]))
    assert shown.status_code == 200 and shown.json()["id"] == key["id"]
    assert token not in shown.text
    assert token not in client.get("/api/v1/api-keys", headers=bearer(tokens["Admin"])).text


def test_rotate_then_revoke(client, tokens):
    r = client.post(
        "/api/v1/api-keys", json={"name": "rot", "scopes": ["invoices:read"]},
        headers=bearer(tokens["Admin"]),
    )  # fmt: skip
    old = r.json()
    r = client.post(
        f"/api/v1/api-keys/{old['key']['id']}/rotate",
        json={"grace_seconds": 0},
        headers=bearer(tokens["Admin"]),
    )
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["key"]["scopes"] == ["invoices:read"] and new["token"] != old["token"]
    is_problem(client.get("/api/v1/invoices", headers=bearer(old["token"])), 401, "unauthorized")
    assert client.get("/api/v1/invoices", headers=bearer(new["token"])).status_code == 200
    r = client.delete(f"/api/v1/api-keys/{new['key']['prefix']}", headers=bearer(tokens["Admin"]))
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    is_problem(client.get("/api/v1/invoices", headers=bearer(new["token"])), 401, "unauthorized")
    # the rotated key cannot be rotated again
    r = client.post(f"/api/v1/api-keys/{old['key']['id']}/rotate", headers=bearer(tokens["Admin"]))
    assert "already rotated" in str(is_problem(r, 422, "invalid-input")["detail"])


def test_another_tenants_key_is_404(client, orgs, tokens, fleet):
    from bizosctl.security.apikeys import get_api_key

    _, b = orgs
    prefix = b.keys["read"].split("_")[1]
    admin = bearer(tokens["Admin"])
    is_problem(client.get(f"/api/v1/api-keys/{prefix}", headers=admin), 404, "not-found")
    is_problem(client.post(f"/api/v1/api-keys/{prefix}/rotate", headers=admin), 404, "not-found")
    is_problem(client.delete(f"/api/v1/api-keys/{prefix}", headers=admin), 404, "not-found")
    assert get_api_key(fleet, prefix).status == "active"  # untouched
    listed = client.get("/api/v1/api-keys", headers=admin).json()["items"]
    assert prefix not in {k["prefix"] for k in listed}


def test_api_keys_need_the_permission_or_the_scope(client, orgs, tokens):
    a, _ = orgs
    r = client.get("/api/v1/api-keys", headers=bearer(tokens["Manager"]))
    assert "api_key:manage" in str(is_problem(r, 403, "forbidden")["detail"])
    r = client.post(
        "/api/v1/api-keys", json={"name": "x", "scopes": ["*"]}, headers=bearer(a.keys["read"])
    )
    assert "api_keys:write" in str(is_problem(r, 403, "forbidden")["detail"])


def test_an_api_key_cannot_make_a_wider_key(client, orgs, tokens):
    a, _ = orgs
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "keymaker", "scopes": ["api_keys:write", "invoices:read"]},
        headers=bearer(tokens["Admin"]),
    )
    maker = bearer(r.json()["token"])
    for wider in (["*"], ["invoices:write"], ["customers:read"]):
        r = client.post("/api/v1/api-keys", json={"name": "w", "scopes": wider}, headers=maker)
        detail = str(is_problem(r, 403, "forbidden")["detail"])
        assert detail == f"an API key cannot grant scopes it does not have itself: {wider[0]}"
    r = client.post(
        "/api/v1/api-keys", json={"name": "n", "scopes": ["invoices:read"]}, headers=maker
    )
    assert r.status_code == 201, r.text
    # nor rotate a wider key into a new one
    prefix = a.keys["all"].split("_")[1]
    is_problem(client.post(f"/api/v1/api-keys/{prefix}/rotate", headers=maker), 403, "forbidden")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"name": "x", "scopes": ["nope"]}, "invalid scope 'nope'"),
        ({"name": "x", "scopes": []}, "scopes: List should have at least 1 item"),
        ({"name": "", "scopes": ["invoices:read"]}, "name: String should have at least 1"),
        ({"name": "   ", "scopes": ["invoices:read"]}, "API key name must not be empty"),
        ({"name": "x", "scopes": ["*"], "expires_in_seconds": 0}, "expires_in_seconds: Input"),
    ],
)
def test_bad_api_key_requests_are_422(client, tokens, body, detail):
    r = client.post("/api/v1/api-keys", json=body, headers=bearer(tokens["Admin"]))
    assert detail in str(is_problem(r, 422, "invalid-input")["detail"])


def test_bad_rotation_grace_is_422(client, orgs, tokens):
    prefix = orgs[0].keys["read"].split("_")[1]
    r = client.post(
        f"/api/v1/api-keys/{prefix}/rotate",
        json={"grace_seconds": -1},
        headers=bearer(tokens["Admin"]),
    )
    assert "grace_seconds" in str(is_problem(r, 422, "invalid-input")["detail"])


# -- webhooks ---------------------------------------------------------------------------------
HOOK = "http://127.0.0.1:9/hooks"


def make_endpoint(client: httpx.Client, token: str, events: list[str] | None = None) -> dict:
    r = client.post(
        "/api/v1/webhooks",
        json={"url": HOOK, "events": events or ["invoice.paid"]},
        headers=bearer(token),
    )
    assert r.status_code == 201, r.text
    doc: dict = r.json()
    return doc


def test_endpoint_lifecycle_secret_shown_once(client, tokens):
    admin = bearer(tokens["Admin"])
    created = make_endpoint(client, tokens["Admin"])
    eid, secret = created["endpoint"]["id"], created["secret"]
    assert secret.startswith("whsec_")
    listed = client.get("/api/v1/webhooks", headers=admin)
    assert eid in {e["id"] for e in listed.json()["items"]} and secret not in listed.text
    got = client.get(f"/api/v1/webhooks/{eid}", headers=admin)
    assert got.json()["events"] == ["invoice.paid"] and secret not in got.text
    r = client.patch(
        f"/api/v1/webhooks/{eid}",
        json={"events": ["invoice.paid", "invoice.created"], "enabled": False},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["events"] == ["invoice.paid", "invoice.created"]
    assert r.json()["disabled_at"] is not None
    r = client.patch(f"/api/v1/webhooks/{eid}", json={"enabled": True}, headers=admin)
    assert r.json()["disabled_at"] is None
    r = client.post(
        f"/api/v1/webhooks/{eid}/secret/rotate", json={"grace_seconds": 60}, headers=admin
    )
    assert r.status_code == 201 and r.json()["secret"] not in (secret, None)
    assert len(r.json()["endpoint"]["secrets"]) == 2
    assert client.delete(f"/api/v1/webhooks/{eid}", headers=admin).status_code == 204
    is_problem(client.get(f"/api/v1/webhooks/{eid}", headers=admin), 404, "not-found")


@pytest.fixture
def deliveries(fleet, orgs, client, tokens) -> dict:
    """A's endpoint with three deliveries (webhook.test events, relayed), one of them failed."""
    from bizosctl.catalog.models import WebhookDelivery
    from bizosctl.notify.deliveries import send_test
    from bizosctl.notify.relay import Relay

    eid = make_endpoint(client, tokens["Admin"])["endpoint"]["id"]
    for _ in range(3):
        send_test(fleet, eid)
    relay = Relay(fleet)
    try:
        relay.sweep()
    finally:
        relay.close()
    with fleet.catalog() as s:
        ids = list(
            s.execute(
                select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == uuid.UUID(eid))
            ).scalars()
        )
        assert len(ids) == 3
        s.execute(
            text("UPDATE webhook_deliveries SET status = 'failed', attempts = 8 WHERE id = :i"),
            {"i": ids[0]},
        )
    return {"endpoint": eid, "ids": [str(i) for i in ids], "failed": str(ids[0])}


def test_deliveries_by_cursor_and_status_and_replay(client, tokens, deliveries):
    admin = bearer(tokens["Admin"])
    q = {"endpoint_id": deliveries["endpoint"], "limit": 2}
    first = client.get("/api/v1/webhooks/deliveries", params=q, headers=admin)
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get(
        "/api/v1/webhooks/deliveries", params={**q, "cursor": page["next_cursor"]}, headers=admin
    ).json()
    assert rest["next_cursor"] is None
    seen = [d["id"] for d in page["items"] + rest["items"]]
    assert sorted(seen) == sorted(deliveries["ids"])
    failed = client.get(
        "/api/v1/webhooks/deliveries", params={**q, "status": "failed"}, headers=admin
    ).json()["items"]
    assert [d["id"] for d in failed] == [deliveries["failed"]]
    r = client.post(f"/api/v1/webhooks/deliveries/{deliveries['failed']}/replay", headers=admin)
    assert r.status_code == 202 and r.json()["deliveries"] == [deliveries["failed"]]
    again = client.get(
        "/api/v1/webhooks/deliveries", params={**q, "status": "pending", "limit": 3}, headers=admin
    ).json()["items"]
    assert sorted(d["id"] for d in again) == sorted(deliveries["ids"])
    replayed = next(d for d in again if d["id"] == deliveries["failed"])
    assert replayed["attempts"] == 0


def test_another_tenants_webhooks_are_404(client, tokens, deliveries):
    other = bearer(tokens["B"])
    eid, did = deliveries["endpoint"], deliveries["failed"]
    is_problem(client.get(f"/api/v1/webhooks/{eid}", headers=other), 404, "not-found")
    r = client.patch(f"/api/v1/webhooks/{eid}", json={"enabled": False}, headers=other)
    is_problem(r, 404, "not-found")
    is_problem(client.delete(f"/api/v1/webhooks/{eid}", headers=other), 404, "not-found")
    r = client.post(f"/api/v1/webhooks/{eid}/secret/rotate", headers=other)
    is_problem(r, 404, "not-found")
    r = client.get("/api/v1/webhooks/deliveries", params={"endpoint_id": eid}, headers=other)
    is_problem(r, 404, "not-found")
    r = client.post(f"/api/v1/webhooks/deliveries/{did}/replay", headers=other)
    is_problem(r, 404, "not-found")
    mine = client.get("/api/v1/webhooks/deliveries", headers=other).json()["items"]
    assert not {d["id"] for d in mine} & set(deliveries["ids"])
    # still there, still A's
    r = client.get(f"/api/v1/webhooks/{eid}", headers=bearer(tokens["Admin"]))
    assert r.status_code == 200 and r.json()["disabled_at"] is None


def test_webhooks_need_the_permission_or_the_scope(client, orgs, tokens):
    a, _ = orgs
    r = client.get("/api/v1/webhooks", headers=bearer(tokens["Manager"]))
    assert "webhook:manage" in str(is_problem(r, 403, "forbidden")["detail"])
    is_problem(client.get("/api/v1/webhooks", headers=bearer(a.keys["read"])), 403, "forbidden")
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "hooks-read", "scopes": ["webhooks:read"]},
        headers=bearer(tokens["Admin"]),
    )
    reader = bearer(r.json()["token"])
    assert client.get("/api/v1/webhooks", headers=reader).status_code == 200
    r = client.post("/api/v1/webhooks", json={"url": HOOK, "events": ["a.b"]}, headers=reader)
    assert "webhooks:write" in str(is_problem(r, 403, "forbidden")["detail"])


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"url": "ftp://x.example/h", "events": ["invoice.paid"]}, "invalid webhook URL"),
        ({"url": "http://x.example/h", "events": ["invoice.paid"]}, "must use https"),
        ({"url": HOOK, "events": ["Bad Event"]}, "invalid event name 'Bad Event'"),
        ({"url": HOOK, "events": []}, "events: List should have at least 1 item"),
    ],
)
def test_bad_webhook_requests_are_422(client, tokens, body, detail):
    r = client.post("/api/v1/webhooks", json=body, headers=bearer(tokens["Admin"]))
    assert detail in str(is_problem(r, 422, "invalid-input")["detail"])


def test_bad_webhook_ids_and_filters_are_422(client, tokens):
    admin = bearer(tokens["Admin"])
    is_problem(client.get("/api/v1/webhooks/not-a-uuid", headers=admin), 422, "invalid-input")
    r = client.get("/api/v1/webhooks/deliveries", params={"status": "lost"}, headers=admin)
    assert "status" in str(is_problem(r, 422, "invalid-input")["detail"])
    r = client.get("/api/v1/webhooks/deliveries", params={"cursor": "zzz"}, headers=admin)
    assert "cursor" in str(is_problem(r, 422, "invalid-input")["detail"])
    eid = make_endpoint(client, tokens["Admin"])["endpoint"]["id"]
    r = client.patch(f"/api/v1/webhooks/{eid}", json={"url": "http://x.example/h"}, headers=admin)
    assert "must use https" in str(is_problem(r, 422, "invalid-input")["detail"])


# -- tenant upgrade ---------------------------------------------------------------------------
def test_upgrade_refusals(client, orgs, tokens):
    a, _ = orgs
    r = client.post(
        "/api/v1/tenant/upgrade", json={"tier": "isolated"}, headers=bearer(tokens["Manager"])
    )
    assert "billing:manage" in str(is_problem(r, 403, "forbidden")["detail"])
    r = client.post(
        "/api/v1/tenant/upgrade", json={"tier": "isolated"}, headers=bearer(a.keys["read"])
    )
    assert "tenant:write" in str(is_problem(r, 403, "forbidden")["detail"])
    for bad in ({"tier": "shared"}, {"tier": "gold"}, {}):
        r = client.post("/api/v1/tenant/upgrade", json=bad, headers=bearer(tokens["Admin"]))
        assert "tier" in str(is_problem(r, 422, "invalid-input")["detail"])
    r = client.post(
        "/api/v1/tenant/upgrade", json={"tier": "schema"}, headers=bearer(tokens["Admin"])
    )
    detail = str(is_problem(r, 422, "invalid-input")["detail"])
    assert (
        detail
        == f"tenant {a.slug!r} is on the schema tier: an upgrade goes to a higher tier (isolated)"
    )


def test_a_read_only_tenant_cannot_upgrade(client, fleet):
    from bizosctl.tenancy.lifecycle import set_status
    from bizosctl.tenancy.provision import delete_tenant

    org = make_org(fleet, unique_slug("ro"))
    try:
        admin = bearer(str(login(client, org, "Admin")["access_token"]))
        set_status(fleet, org.slug, status="read_only", reason="unpaid")
        r = client.post("/api/v1/tenant/upgrade", json={"tier": "isolated"}, headers=admin)
        doc = is_problem(r, 423, "tenant-not-writable")
        assert doc["detail"] == f"tenant {org.slug!r} is read-only: it can upgrade once unlocked"
        assert "unlock" in doc
    finally:
        delete_tenant(fleet, org.slug)


@pytest.fixture
def workers(fleet) -> Iterator[list[Worker]]:
    running: list[Worker] = []
    yield running
    for w in running:
        if not w.dead():
            w.proc.send_signal(signal.SIGTERM)
        w.finish(timeout=60)
    with fleet.catalog() as s:
        s.execute(text("DELETE FROM procrastinate_jobs WHERE queue_name = 'operations'"))
        s.execute(text("DELETE FROM procrastinate_workers"))


def test_upgrade_runs_in_the_background_to_done_and_announces_it(client, fleet, tokens, workers):
    from bizosctl.tenancy.provision import delete_tenant
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import OutboxEvent

    org = make_org(fleet, unique_slug("upg"), tier="shared")
    try:
        admin = bearer(str(login(client, org, "Admin")["access_token"]))
        r = client.post("/api/v1/tenant/upgrade", json={"tier": "schema"}, headers=admin)
        assert r.status_code == 202, r.text
        op = r.json()["operation"]
        assert r.headers["location"] == f"/api/v1/operations/{op}" == r.json()["location"]
        assert client.get(r.headers["location"], headers=admin).json()["status"] == "queued"
        # pressed twice: the move is queued already
        r = client.post("/api/v1/tenant/upgrade", json={"tier": "isolated"}, headers=admin)
        assert f"is moving already (operation {op})" in str(is_problem(r, 409, "busy")["detail"])
        # another tenant cannot follow it
        is_problem(
            client.get(f"/api/v1/operations/{op}", headers=bearer(tokens["B"])), 404, "not-found"
        )
        workers.append(Worker("operations").started())

        def done() -> bool:
            doc = client.get(f"/api/v1/operations/{op}", headers=admin).json()
            assert doc["status"] in ("queued", "running", "done"), doc
            return doc["status"] == "done"

        wait_for("the upgrade to finish", done, 120)
        assert "announce" in client.get(f"/api/v1/operations/{op}", headers=admin).json()["steps"]
        route = fleet.route(org.slug)
        assert (route.tier, route.status) == ("schema", "active")
        with tenant_session(fleet, org.slug, actor="test", read_only=True) as s:
            events = s.execute(
                select(OutboxEvent.type, OutboxEvent.data).where(
                    OutboxEvent.type == "tenant.upgraded"
                )
            ).all()
        assert len(events) == 1
        assert events[0].data == {
            "tenant": org.slug, "from_tier": "shared", "to_tier": "schema",
            "region": "global", "operation": op,
        }  # fmt: skip
        # members keep working at the new place; the same tier again is refused
        assert client.get("/api/v1/me", headers=admin).status_code == 200
        r = client.post("/api/v1/tenant/upgrade", json={"tier": "schema"}, headers=admin)
        is_problem(r, 422, "invalid-input")
    finally:
        delete_tenant(fleet, org.slug)


# -- OAuth login ------------------------------------------------------------------------------
def begin(c: httpx.Client, provider: str, tenant: str) -> tuple[str, dict[str, str]]:
    """Start a login and let the fake provider "log in": our callback URL with code and state,
    and what the start sent to the provider."""
    r = c.get(f"/api/v1/auth/oauth/{provider}/start", params={"tenant": tenant})
    assert r.status_code == 302, r.text
    sent = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}
    r = c.get(r.headers["location"])
    assert r.status_code == 302, r.text
    return r.headers["location"], sent


def member_count(fleet: Control, slug: str) -> int:
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Member

    with tenant_session(fleet, slug, actor="test", read_only=True) as s:
        return int(s.execute(select(func.count()).select_from(Member)).scalar_one())


def test_google_login_links_an_existing_member(client, orgs, fake, fleet):
    a, _ = orgs
    fake.account = Account("g-100", a.emails["Manager"].upper())
    callback, sent = begin(client, "google", a.slug)
    assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43
    assert sent["nonce"] and sent["state"] and "openid" in sent["scope"]
    r = client.get(callback)
    assert r.status_code == 200, r.text
    pair = r.json()
    verifier = fake.token_requests[-1]["code_verifier"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert challenge.rstrip(b"=").decode() == sent["code_challenge"]
    me = client.get("/api/v1/me", headers=bearer(pair["access_token"])).json()
    assert me["member_id"] == str(a.members["Manager"])
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import AuthSession, MemberIdentity

    with tenant_session(fleet, a.slug, actor="test", read_only=True) as s:
        ident = s.get(MemberIdentity, (a.tenant_id, "google", "g-100"))
        assert ident is not None and ident.member_id == a.members["Manager"]
        assert s.get(AuthSession, (a.tenant_id, uuid.UUID(pair["session_id"]))).method == (
            "oauth:google"
        )
    # the same state again: used
    r = client.get(callback)
    assert "start the login again" in str(is_problem(r, 401, "unauthorized")["detail"])
    # next time the identity names the member, through userinfo this time
    fake.account = Account("g-100", a.emails["Manager"], email_in_id_token=False)
    callback, _ = begin(client, "google", a.slug)
    r = client.get(callback)
    assert r.status_code == 200 and r.json()["session_id"] != pair["session_id"]


def test_github_login_activates_an_invited_member(client, orgs, fake, fleet):
    from bizosctl.tenancy.members import add_member, get_member
    from bizosctl.tenancy.router import tenant_session

    a, _ = orgs
    email = f"new-{uuid.uuid4().hex[:6]}@{a.slug}.example"
    with tenant_session(fleet, a.slug, actor="test") as s:
        mid = add_member(
            fleet, s, tenant_id=a.tenant_id, email=email, name="New Person", status="invited"
        )
    fake.account = Account("4242", email)
    callback, sent = begin(client, "github", a.slug)
    assert sent["code_challenge_method"] == "S256" and "user:email" in sent["scope"]
    r = client.get(callback)
    assert r.status_code == 200, r.text
    me = client.get("/api/v1/me", headers=bearer(r.json()["access_token"])).json()
    assert me["member_id"] == str(mid) and me["email"] == email
    with tenant_session(fleet, a.slug, actor="test", read_only=True) as s:
        assert get_member(s, mid).status == "active"


def test_unknown_email_is_refused_and_creates_nobody(client, orgs, fake, fleet):
    a, _ = orgs
    before = member_count(fleet, a.slug)
    for provider, subject in (("google", "g-unknown"), ("github", "777")):
        fake.account = Account(subject, f"stranger@{a.slug}.example")
        callback, _ = begin(client, provider, a.slug)
        r = client.get(callback)
        detail = str(is_problem(r, 403, "forbidden")["detail"])
        assert detail == "no member of this tenant has this e-mail: ask an admin for an invitation"
    assert member_count(fleet, a.slug) == before


@pytest.mark.parametrize("provider", ["google", "github"])
def test_unverified_email_is_refused(client, orgs, fake, provider):
    a, _ = orgs
    fake.account = Account("31337", a.emails["Staff"], verified=False)
    callback, _ = begin(client, provider, a.slug)
    detail = str(is_problem(client.get(callback), 403, "forbidden")["detail"])
    assert "not verified" in detail


def test_state_mismatch_is_refused(client, orgs, fake):
    a, _ = orgs
    fake.account = Account("g-100", a.emails["Manager"])
    callback, _ = begin(client, "google", a.slug)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    forged = f"/api/v1/auth/oauth/google/callback?code={code}&state=forged-state"
    detail = str(is_problem(client.get(forged), 401, "unauthorized")["detail"])
    assert detail == "unknown, used or expired login state: start the login again"
    # the state of one provider does not finish another's login
    state = parse_qs(urlsplit(callback).query)["state"][0]
    other = f"/api/v1/auth/oauth/github/callback?code={code}&state={state}"
    is_problem(client.get(other), 401, "unauthorized")


def test_another_browser_cannot_finish_the_login(client, base_url, orgs, fake):
    a, _ = orgs
    fake.account = Account("g-100", a.emails["Manager"])
    callback, _ = begin(client, "google", a.slug)
    with httpx.Client(base_url=base_url, timeout=30) as elsewhere:  # no binding cookie
        detail = str(is_problem(elsewhere.get(callback), 401, "unauthorized")["detail"])
    assert detail == "this login was started in another browser: start it again here"


def test_expired_state_is_refused(client, orgs, fake, fleet):
    a, _ = orgs
    fake.account = Account("g-100", a.emails["Manager"])
    callback, sent = begin(client, "google", a.slug)
    with fleet.catalog() as s:
        s.execute(
            text("UPDATE oauth_states SET expires_at = now() - interval '1 second' "
                 "WHERE state_hash = :h"),
            {"h": hashlib.sha256(sent["state"].encode()).hexdigest()},
        )  # fmt: skip
    detail = str(is_problem(client.get(callback), 401, "unauthorized")["detail"])
    assert detail == "this login took too long: start it again"


@pytest.mark.parametrize("pkce", ["missing", "forged"])
def test_a_code_not_bound_to_this_logins_verifier_is_refused(client, orgs, fake, pkce):
    """An attacker's code (from a login with their own verifier, or with none) injected into
    a victim's callback: the provider refuses the exchange, and so do we."""
    a, _ = orgs
    fake.account = Account("g-100", a.emails["Manager"])
    callback, _ = begin(client, "google", a.slug)
    parts = urlsplit(callback)
    state = parse_qs(parts.query)["state"][0]
    own = "A" * 43 if pkce == "forged" else None
    code = fake.code_for(f"{parts.scheme}://{parts.netloc}{parts.path}", challenge=own)
    r = client.get(f"{parts.path}?code={code}&state={state}")
    detail = str(is_problem(r, 401, "unauthorized")["detail"])
    assert detail == "google refused the login code: invalid_grant"


def test_oauth_bad_input(client, orgs):
    a, _ = orgs
    r = client.get("/api/v1/auth/oauth/myspace/start", params={"tenant": a.slug})
    assert "no OAuth login with 'myspace'" in str(is_problem(r, 404, "not-found")["detail"])
    r = client.get("/api/v1/auth/oauth/google/start", params={"tenant": "Bad Slug"})
    assert "tenant" in str(is_problem(r, 422, "invalid-input")["detail"])
    r = client.get("/api/v1/auth/oauth/google/start")
    is_problem(r, 422, "invalid-input")
    r = client.get("/api/v1/auth/oauth/google/callback", params={"code": "x"})
    assert str(is_problem(r, 422, "invalid-input")["detail"]).startswith("state:")


def test_provider_refusal_is_401(client, orgs, fake):
    a, _ = orgs
    _callback, sent = begin(client, "github", a.slug)
    state = sent["state"]
    r = client.get(f"/api/v1/auth/oauth/github/callback?error=access_denied&state={state}")
    assert "did not grant the login: access_denied" in str(
        is_problem(r, 401, "unauthorized")["detail"]
    )


def test_a_forged_id_token_is_refused(client, orgs, fake):
    a, _ = orgs
    fake.account = Account("g-100", a.emails["Manager"])
    callback, _ = begin(client, "google", a.slug)
    fake.forge_id_token = True
    try:
        r = client.get(callback)
    finally:
        fake.forge_id_token = False
    detail = str(is_problem(r, 401, "unauthorized")["detail"])
    assert detail.startswith("google's id_token does not verify")


def test_start_sets_a_browser_binding_cookie(client, orgs):
    a, _ = orgs
    r = client.get("/api/v1/auth/oauth/github/start", params={"tenant": a.slug})
    assert r.status_code == 302 and "RateLimit" in r.headers
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("bz_oauth=") and "HttpOnly" in cookie
    assert "Path=/api/v1/auth/oauth" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    first = client.cookies["bz_oauth"]
    client.get("/api/v1/auth/oauth/google/start", params={"tenant": a.slug})
    assert client.cookies["bz_oauth"] == first  # a second login in this browser keeps it
