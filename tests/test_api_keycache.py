"""The API's per-process cache of API key records (``BIZOS_API_AUTH_CACHE_SECONDS``), from an
attacker's side: a real server, real httpx, and changes made by the CLI in another process.

A revoked key or a suspended tenant is refused within a second (the NOTIFY), a wrong secret
is refused for a key the cache holds, a change whose notification is lost (made behind
bizosctl's back, or while the listener is down) is picked up within the time limit, and 0
turns the cache off."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from apiserver import Org, bearer, new_key, serve_app, temporary_org
from children import wait_for
from sqlalchemy import text

from bizosctl.catalog.control import Control
from bizosctl.config import Settings
from bizosctl.security.keycache import LISTENER_NAME, KeyCache, key_cache

#: How long a change another process makes may take to reach the server.
WINDOW_S = 1.0
KILL_LISTENERS = text(
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :n"
)


@pytest.fixture(scope="module")
def org(fleet: Control) -> Iterator[Org]:
    with temporary_org(fleet, "kc") as made:
        yield made


def prefix_of(token: str) -> str:
    return token.split("_")[1]


def cached(server: Control, client: httpx.Client, token: str) -> KeyCache:
    """Use ``token`` until the server's cache holds it (its listener is up); the cache."""
    cache = key_cache(server)
    assert cache is not None

    def held() -> bool:
        assert client.get("/api/v1/invoices", headers=bearer(token)).status_code == 200
        return cache.get(prefix_of(token)) is not None

    wait_for("the key in the server's cache", held, timeout=10)
    return cache


def refused_within(
    client: httpx.Client, token: str, status: int, seconds: float
) -> httpx.Response | None:
    """Poll until a request with ``token`` gets ``status``; the answer, None at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        r = client.get("/api/v1/invoices", headers=bearer(token))
        if r.status_code == status:
            return r
        assert r.status_code == 200, r.text
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def revoke_behind_the_back(ctl: Control, token: str) -> None:
    """Revoke a key with plain SQL: no notification, as a lost one."""
    with ctl.catalog() as s:
        s.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE prefix = :p"),
            {"p": prefix_of(token)},
        )


@pytest.mark.parametrize(
    "verb", [("revoke", "--yes"), ("rotate", "--grace", "0")], ids=["revoke", "rotate"]
)
def test_key_revoked_by_the_cli_in_another_process_is_refused_within_a_second(
    fleet, org, run_bizosctl, verb
):
    # a long time limit: only the notification can explain a refusal within the window
    server = Control(Settings(api_auth_cache_seconds=60))
    with serve_app(server) as url, httpx.Client(base_url=url) as c:
        token = new_key(fleet, org)
        cached(server, c, token)
        done = run_bizosctl("api-key", verb[0], prefix_of(token), *verb[1:])
        assert done.returncode == 0, done.stderr
        r = refused_within(c, token, 401, WINDOW_S)
        assert r is not None, f"a key was still served a second after `api-key {verb[0]}`"
        assert r.json()["detail"] == "invalid API key"


def test_key_of_a_tenant_suspended_in_another_process_is_refused_within_a_second(
    fleet, run_bizosctl
):
    from bizosctl.tenancy.lifecycle import set_status

    server = Control(Settings(api_auth_cache_seconds=60))
    with temporary_org(fleet, "kcs") as victim:
        try:
            with serve_app(server) as url, httpx.Client(base_url=url) as c:
                token = victim.keys["all"]
                cached(server, c, token)
                done = run_bizosctl("tenant", "lock", victim.slug, "--mode", "suspended")
                assert done.returncode == 0, done.stderr
                r = refused_within(c, token, 423, WINDOW_S)
                assert r is not None, "a suspended tenant's key was still served after a second"
                assert r.json()["type"].endswith("/tenant-suspended")
        finally:
            set_status(fleet, victim.slug, status="active")


def test_wrong_secret_for_a_cached_key_is_refused(fleet, org):
    server = Control(Settings(api_auth_cache_seconds=60))
    with serve_app(server) as url, httpx.Client(base_url=url) as c:
        token = new_key(fleet, org)
        cache = cached(server, c, token)
        prefix = prefix_of(token)
        secret = token.split("_", 2)[2]
        for wrong in (
            secret[:-1] + ("A" if secret[-1] != "A" else "B"),
            "x" * len(secret),
            secret[:20],
        ):
            r = c.get("/api/v1/invoices", headers=bearer(f"bz_{prefix}_{wrong}"))
            assert r.status_code == 401 and r.json()["detail"] == "invalid API key", r.text
            assert cache.get(prefix) is not None  # answered from the cache, not the catalog
        # the real key still works: a wrong try does not replace what the cache holds
        assert c.get("/api/v1/invoices", headers=bearer(token)).status_code == 200


def test_a_lost_notification_is_bounded_by_the_time_limit(fleet, org):
    ttl = 1.0
    server = Control(Settings(api_auth_cache_seconds=ttl))
    with serve_app(server) as url, httpx.Client(base_url=url) as c:
        token = new_key(fleet, org)
        cached(server, c, token)
        revoke_behind_the_back(fleet, token)
        assert refused_within(c, token, 401, ttl + WINDOW_S) is not None


def test_a_listener_that_stops_delivering_unnoticed_is_bounded_by_the_time_limit(
    fleet, org, run_bizosctl, monkeypatch
):
    ttl = 1.0
    server = Control(Settings(api_auth_cache_seconds=ttl))
    with serve_app(server) as url, httpx.Client(base_url=url) as c:
        token = new_key(fleet, org)
        cache = cached(server, c, token)
        # a hung or half-open listening connection: nothing arrives, nothing looks wrong
        monkeypatch.setattr(cache, "drop", lambda payload: None)
        done = run_bizosctl("api-key", "revoke", prefix_of(token), "--yes")
        assert done.returncode == 0, done.stderr
        assert cache.listening
        assert refused_within(c, token, 401, ttl + WINDOW_S) is not None


def test_with_the_listener_killed_changes_are_refused_and_it_reconnects(fleet, org, run_bizosctl):
    ttl = 1.0
    server = Control(Settings(api_auth_cache_seconds=ttl))
    with serve_app(server) as url, httpx.Client(base_url=url) as c:
        token, other = new_key(fleet, org), new_key(fleet, org)
        cache = cached(server, c, token)
        with fleet.catalog() as s:
            assert s.execute(KILL_LISTENERS, {"n": LISTENER_NAME}).scalar_one() >= 1
        # whatever the listener makes of it meanwhile (notifications are lost), a change
        # is refused within the time limit
        revoke_behind_the_back(fleet, token)
        assert refused_within(c, token, 401, ttl + WINDOW_S) is not None
        # it reconnects, and caches again; a notified change still arrives
        cached(server, c, other)
        assert cache.listening
        done = run_bizosctl("api-key", "revoke", prefix_of(other), "--yes")
        assert done.returncode == 0, done.stderr
        assert refused_within(c, other, 401, WINDOW_S) is not None


def test_zero_turns_the_cache_off(fleet, org):
    server = Control(Settings(api_auth_cache_seconds=0))
    assert key_cache(server) is None
    with serve_app(server) as url, httpx.Client(base_url=url) as c:
        token = new_key(fleet, org)
        for _ in range(3):
            assert c.get("/api/v1/invoices", headers=bearer(token)).status_code == 200
        revoke_behind_the_back(fleet, token)
        # the very next request: nothing was kept
        r = c.get("/api/v1/invoices", headers=bearer(token))
        assert r.status_code == 401, r.text


def test_the_listener_ends_with_its_cache(fleet):
    import functools
    import gc
    import threading

    before = set(threading.enumerate())
    server = Control(Settings(api_auth_cache_seconds=5))
    cache = key_cache(server)
    assert cache is not None
    assert cache.get("nosuchkey0") is None  # starts the listener
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == LISTENER_NAME]
    wait_for("the listener to connect", functools.partial(getattr, cache, "listening"), 10)
    del server, cache
    gc.collect()
    wait_for("the listener thread to end", lambda: not thread.is_alive(), timeout=15)
