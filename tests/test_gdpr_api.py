"""GET /api/v1/me/export, POST /api/v1/me/delete and /.well-known/security.txt (issue #15)."""

from __future__ import annotations

import io
import json
import signal
import uuid
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from apiserver import Org, bearer, login, make_org, serve_app
from conftest import unique_slug
from sqlalchemy import text
from test_jobs import Worker, wait_for

from bizosctl.catalog.control import Control
from bizosctl.config import Settings


@pytest.fixture(scope="module")
def org(fleet: Control) -> Org:
    return make_org(fleet, unique_slug("gd"))


@pytest.fixture(scope="module")
def url(fleet: Control) -> Iterator[str]:
    ctl = Control(
        Settings(
            rate_limit="10000/10seconds",
            security_contact=["mailto:security@example.com", "https://example.com/report"],
            security_policy_url="https://example.com/policy",
            public_url="https://api.example.com",
        )
    )
    with serve_app(ctl) as u:
        yield u


def test_export_me_is_my_data_as_a_zip(url: str, org: Org) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        token = str(login(c, org, "Staff")["access_token"])
        r = c.get("/api/v1/me/export", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        (member,) = json.loads(zf.read(f"tenants/{org.slug}/members.json"))
    assert member["email"] == org.emails["Staff"]
    assert [t["tenant"] for t in manifest["tenants"]] == [org.slug]


def test_export_me_refuses_an_api_key(url: str, org: Org) -> None:
    r = httpx.get(f"{url}/api/v1/me/export", headers=bearer(org.keys["all"]), timeout=30)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")


def test_export_me_needs_a_token(url: str) -> None:
    assert httpx.get(f"{url}/api/v1/me/export", timeout=30).status_code == 401


def test_delete_me_needs_confirmation(url: str, org: Org) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        token = str(login(c, org, "Manager")["access_token"])
        r = c.post("/api/v1/me/delete", headers=bearer(token), json={})
    assert r.status_code == 422


def test_delete_me_only_admin_is_refused(url: str, org: Org) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        token = str(login(c, org, "Admin")["access_token"])
        r = c.post("/api/v1/me/delete", headers=bearer(token), json={"confirm": True})
    assert r.status_code == 409, r.text
    assert "only Admin" in r.json()["detail"]


def test_delete_me_is_run_by_a_worker(fleet: Control, url: str) -> None:
    from bizosctl.catalog.operations import describe

    me = make_org(fleet, unique_slug("gdd"))
    worker = Worker("operations", "--concurrency", "1").started()
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            token = str(login(c, me, "Staff")["access_token"])
            r = c.post("/api/v1/me/delete", headers=bearer(token), json={"confirm": True})
            assert r.status_code == 202, r.text
            doc = r.json()
            op = uuid.UUID(doc["operation"])
            wait_for("the erasure", lambda: describe(fleet, op).status == "done")
            # the member is gone: their token's session with them
            assert c.get("/api/v1/me", headers=bearer(token)).status_code == 401
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        worker.finish(timeout=60)
        with fleet.catalog() as s:
            s.execute(text("DELETE FROM procrastinate_jobs WHERE queue_name = 'operations'"))
    with fleet.catalog() as s:
        row = s.execute(
            text("SELECT source, status, receipt FROM gdpr_requests WHERE id = :i"),
            {"i": doc["request"]},
        ).one()
    assert row.source == "api" and row.status == "done" and row.receipt["tenants"]
    assert me.emails["Staff"] not in json.dumps(row.receipt)


def test_security_txt(url: str) -> None:
    r = httpx.get(f"{url}/.well-known/security.txt", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert "Contact: mailto:security@example.com" in lines
    assert "Contact: https://example.com/report" in lines
    assert "Policy: https://example.com/policy" in lines
    assert "Canonical: https://api.example.com/.well-known/security.txt" in lines
    (expires,) = [x for x in lines if x.startswith("Expires: ")]
    assert expires.endswith("Z")


def test_security_txt_404_without_contact(fleet: Control) -> None:
    with serve_app(Control(Settings())) as u:
        assert httpx.get(f"{u}/.well-known/security.txt", timeout=30).status_code == 404
