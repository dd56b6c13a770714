"""Rate limits through a real server (memory and Redis, Redis killed mid-run), and the API
under a tenant move: no 5xx but the freeze's 503 with Retry-After, and every acknowledged
write present afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apiserver import Org, bearer, free_port, make_org, new_key, serve_app, temporary_org
from conftest import unique_slug

from bizosctl.catalog.control import Control
from bizosctl.config import Settings


def redis_up(port: int = 6379) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not redis_up(), reason="no Redis on 127.0.0.1:6379 (the Redis rate-limit paths need one)"
)
needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture(scope="module")
def org(fleet: Control) -> Iterator[Org]:
    with temporary_org(fleet, "rl") as made:
        yield made


def test_memory_limit_counts_per_key_with_headers(fleet, org):
    with (
        serve_app(Control(Settings(rate_limit="5/10seconds"))) as url,
        httpx.Client(base_url=url) as c,
    ):
        key, other = bearer(new_key(fleet, org)), bearer(new_key(fleet, org))
        remaining = []
        for _ in range(5):
            r = c.get("/api/v1/invoices", headers=key)
            assert r.status_code == 200, r.text
            assert r.headers["ratelimit-policy"] == '"invoices";q=5;w=10'
            remaining.append(int(r.headers["ratelimit"].split("r=")[1].split(";")[0]))
        assert remaining == [4, 3, 2, 1, 0]
        r = c.get("/api/v1/invoices", headers=key)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 10
        assert r.json()["type"].endswith("/too-many-requests")
        assert c.get("/api/v1/invoices", headers=other).status_code == 200  # per key


def test_login_is_limited_per_address_by_default(fleet, org):
    with serve_app(Control(Settings())) as url, httpx.Client(base_url=url, timeout=30) as c:
        body = {"tenant": org.slug, "email": "nobody@example.com", "password": "x" * 12}
        codes = [c.post("/api/v1/auth/login", json=body).status_code for _ in range(11)]
    # 10/minute: ten answers (401, then the throttle's 429s), then the address is limited
    assert codes[:3] == [401, 401, 401] and codes[-1] == 429


@needs_redis
def test_redis_counts_across_two_servers(fleet, org):
    settings = Settings(rate_limit="5/10seconds", redis_url="redis://127.0.0.1:6379/0")
    key = bearer(new_key(fleet, org))
    with serve_app(Control(settings)) as one, serve_app(Control(settings)) as two:
        with httpx.Client(base_url=one) as c1, httpx.Client(base_url=two) as c2:
            codes = [
                (c1 if i % 2 else c2).get("/api/v1/invoices", headers=key).status_code
                for i in range(6)
            ]
            assert codes == [200] * 5 + [429]
            assert c1.get("/readyz").json()["checks"]["rate_limit_store"] == {
                "backend": "redis",
                "ok": True,
            }


class OwnRedis:
    """A redis-server of the test's own, which it can kill and bring back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bzr", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_up(self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@needs_redis_server
def test_redis_killed_mid_run(fleet, org, monkeypatch):
    from bizosctl.api import ratelimit

    monkeypatch.setattr(ratelimit, "RETRY_STORE_AFTER", 0.2)
    redis = OwnRedis()
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    key = bearer(new_key(fleet, org))
    login = {"tenant": org.slug, "email": "x@example.com", "password": "x" * 12}
    try:
        with (
            serve_app(Control(Settings(redis_url=url))) as open_url,
            serve_app(Control(Settings(redis_url=url, rate_limit_fail_open=False))) as closed_url,
            httpx.Client(timeout=30) as c,
        ):
            assert c.get(f"{open_url}/api/v1/invoices", headers=key).status_code == 200
            redis.kill()
            # fail open (the default): served, and /readyz says the store is down
            assert c.get(f"{open_url}/api/v1/invoices", headers=key).status_code == 200
            ready = c.get(f"{open_url}/readyz").json()
            assert ready["checks"]["rate_limit_store"] == {"backend": "redis", "ok": False}
            assert ready["degraded"] == ["rate_limit_store"]
            # auth routes fail closed whatever the setting; the closed server refuses all
            r = c.post(f"{open_url}/api/v1/auth/login", json=login)
            assert r.status_code == 503 and "rate-limit store" in r.json()["detail"]
            r = c.get(f"{closed_url}/api/v1/invoices", headers=key)
            assert r.status_code == 503 and "rate-limit store" in r.json()["detail"]
            redis.start()  # back on the same port: counting resumes
            deadline = time.monotonic() + 10
            while c.get(f"{closed_url}/api/v1/invoices", headers=key).status_code != 200:
                assert time.monotonic() < deadline, "the limiter did not come back"
                time.sleep(0.1)
            assert c.get(f"{open_url}/readyz").json()["checks"]["rate_limit_store"]["ok"]
    finally:
        redis.close()


def test_move_under_api_load_loses_no_acknowledged_write(fleet):
    """Writers keep creating invoices through the API while the tenant moves to its own
    database: the freeze answers 503 with Retry-After (the clients retry), never another 5xx,
    and every invoice the API acknowledged (201) is there afterwards."""
    from bizosctl.moves.engine import move_tenant
    from bizosctl.moves.plan import MoveRequest
    from bizosctl.tenancy.provision import delete_tenant

    org = make_org(fleet, unique_slug("mv"))
    acked: list[str] = []
    unexpected: list[str] = []
    retried = [0]
    stop = threading.Event()
    try:
        with serve_app(Control(Settings(rate_limit="100000/second"))) as url:
            key = bearer(org.keys["all"])
            with httpx.Client(base_url=url, timeout=30) as c:
                r = c.post("/api/v1/customers", json={"name": "Load"}, headers=key)
                cid = r.json()["id"]

            def writer(n: int) -> None:
                with httpx.Client(base_url=url, timeout=30) as c:
                    i = 0
                    while not stop.is_set():
                        body = {
                            "customer_id": cid,
                            "number": f"L{n}-{i}",
                            "items": [{"description": "x", "quantity": "1", "unit_price": "1"}],
                        }
                        r = c.post("/api/v1/invoices", json=body, headers=key)
                        if r.status_code == 201:
                            acked.append(r.json()["id"])
                            i += 1
                        elif r.status_code == 503 and "retry-after" in r.headers:
                            retried[0] += 1
                            time.sleep(0.05)
                        else:
                            unexpected.append(f"{r.status_code} {r.text[:200]}")
                            i += 1

            threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while len(acked) < 20:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            report = move_tenant(
                fleet, MoveRequest(slug=org.slug, to_tier="isolated", max_freeze_ms=5000)
            )
            before_stop = len(acked)
            deadline = time.monotonic() + 30
            while len(acked) < before_stop + 10:  # writes go on against the new database
                assert time.monotonic() < deadline
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join(30)
            assert report.status == "done"
            assert unexpected == []
            with httpx.Client(base_url=url, timeout=30) as c:
                seen: set[str] = set()
                cursor = None
                while True:
                    params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
                    page = c.get("/api/v1/invoices", params=params, headers=key).json()
                    seen |= {i["id"] for i in page["items"]}
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
            assert set(acked) <= seen, f"{len(set(acked) - seen)} acknowledged invoices lost"
            assert fleet.route(org.slug).tier == "isolated"
    finally:
        stop.set()
        delete_tenant(fleet, org.slug)


def test_memory_windows_count_as_limits_moving_window_does(monkeypatch):
    """The in-process windows answer what ``limits``' moving window on its memory storage
    answers (allowed or not, remaining, reset), hit for hit, on a made-up clock."""
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    from bizosctl.api.ratelimit import MemoryWindows

    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    item = parse("3/2seconds")
    theirs, ours = MovingWindowRateLimiter(MemoryStorage()), MemoryWindows()
    # (never exactly a window after a hit: there limits counts the hit for one and not the other)
    for at in (0, 0.1, 0.2, 0.3, 1.0, 1.95, 2.05, 2.15, 2.3, 4.5, 4.6, 20, 20.1):
        clock[0] = 1000.0 + at
        for who in ("a", "b") if at < 5 else ("a",):
            got = (ours.hit(item, "g", who), ours.get_window_stats(item, "g", who))
            want = (theirs.hit(item, "g", who), theirs.get_window_stats(item, "g", who))
            assert got == want, (at, who)
    ours._sweep(clock[0])  # idle keys are dropped
    assert list(ours._hits) == [item.key_for("g", "a")]
