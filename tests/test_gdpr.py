"""GDPR find, export and erasure across tenants, tiers and regions (issue #15)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from bizosctl.catalog.control import Control
from bizosctl.tenancy.members import add_member
from bizosctl.tenancy.router import tenant_session


def _email() -> str:
    return f"p{uuid.uuid4().hex[:10]}@example.org"


def _add(
    ctl: Control, slug: str, email: str, name: str = "Siti Rahma", role: str = "Staff"
) -> uuid.UUID:
    route = ctl.route(slug)
    with tenant_session(ctl, slug, actor="test") as s:
        return add_member(ctl, s, tenant_id=route.tenant_id, email=email, name=name, role=role)


def _find(cli: Callable[..., Any], email: str, *extra: str) -> Any:
    return cli("gdpr", "find", email, "--json", *extra)


def test_find_across_tiers_and_regions(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    email = _email()
    a = make_tenant(tier="schema")
    b = make_tenant(tier="shared", region="id")
    c = make_tenant(tier="isolated", region="id")
    other = make_tenant(tier="shared")
    for slug in (a, b, c):
        _add(ctl, slug, email)
    _add(ctl, other, _email())
    r = _find(cli, email)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sorted(t["tenant"] for t in doc["tenants"]) == sorted([a, b, c])
    for t in doc["tenants"]:
        assert t["tables"]["members"] == 1 and t["tables"]["member_roles"] == 1
    assert email not in r.stdout
