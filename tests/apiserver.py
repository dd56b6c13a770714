"""A real API server for tests: uvicorn on a loopback port in a thread of the test process
(so it shares the worker's fleet), spoken to by httpx over TCP; and a tenant with members
and keys to call it with."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from bizosctl.catalog.control import Control


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve_app(ctl: Control) -> Iterator[str]:
    """Serve ``create_app(ctl)``; yields the base URL."""
    import uvicorn

    from bizosctl.api.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(ctl), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Org:
    """A tenant with an admin, a manager and a staff member (password ``PASSWORD``)."""

    slug: str
    tenant_id: uuid.UUID
    members: dict[str, uuid.UUID] = field(default_factory=dict)
    emails: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)


PASSWORD = "correct horse battery"


def make_org(ctl: Control, slug: str, *, tier: str = "schema") -> Org:
    from bizosctl.security.apikeys import create_api_key
    from bizosctl.tenancy.members import add_member
    from bizosctl.tenancy.provision import create_tenant
    from bizosctl.tenancy.router import tenant_session

    create_tenant(ctl, slug=slug, name=slug.title(), tier=tier, region="global")
    route = ctl.route(slug)
    org = Org(slug=slug, tenant_id=route.tenant_id)
    with tenant_session(ctl, slug, actor="test") as s:
        for role in ("Admin", "Manager", "Staff"):
            email = f"{role.lower()}@{slug}.example"
            org.emails[role] = email
            org.members[role] = add_member(
                ctl,
                s,
                tenant_id=route.tenant_id,
                email=email,
                name=f"{role} Person",
                role=role,
                password=PASSWORD,
            )
    for name, scopes in {"all": ["*"], "read": ["invoices:read", "customers:read"]}.items():
        _, token = create_api_key(ctl, tenant=slug, name=name, scopes=scopes, expires_ms=None)
        org.keys[name] = token
    return org


@contextmanager
def temporary_org(ctl: Control, prefix: str) -> Iterator[Org]:
    """:func:`make_org` with a new slug, deleted afterwards."""
    from conftest import unique_slug

    from bizosctl.tenancy.provision import delete_tenant

    made = make_org(ctl, unique_slug(prefix))
    try:
        yield made
    finally:
        delete_tenant(ctl, made.slug)


def new_key(ctl: Control, org: Org) -> str:
    """Another key of ``org`` with every scope; its token."""
    from bizosctl.security.apikeys import create_api_key

    _, token = create_api_key(
        ctl, tenant=org.slug, name=f"k{uuid.uuid4().hex[:6]}", scopes=["*"], expires_ms=None
    )
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client: httpx.Client, org: Org, role: str = "Admin") -> dict[str, object]:
    r = client.post(
        "/api/v1/auth/login",
        json={"tenant": org.slug, "email": org.emails[role], "password": PASSWORD},
    )
    assert r.status_code == 200, r.text
    doc: dict[str, object] = r.json()
    return doc
