"""The tenant's resources over a real socket: members, roles, projects and their kanban
tasks, notifications, the audit trail. For each: another tenant's ids are 404 (never data),
RBAC denials are 403 problems, bad input is a readable 422, events land in the outbox."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from apiserver import Org, bearer, login, make_org, serve_app
from conftest import unique_slug

from bizosctl.catalog.control import Control


@pytest.fixture(scope="module")
def orgs(fleet: Control) -> Iterator[tuple[Org, Org]]:
    a, b = make_org(fleet, unique_slug("resa")), make_org(fleet, unique_slug("resb"))
    yield a, b
    from bizosctl.tenancy.provision import delete_tenant

    for org in (a, b):
        delete_tenant(fleet, org.slug)


@pytest.fixture(scope="module")
def server(fleet: Control, orgs: tuple[Org, Org]) -> Iterator[tuple[Control, str]]:
    """The server's own control plane (its keyring is the one the routes use) and URL."""
    from bizosctl.config import Settings

    # the tests drive one member hard (a board's moves): limits are test_api.py's to test
    ctl = Control(Settings(rate_limit="10000/10seconds", rate_limits={"auth": "1000/minute"}))
    with serve_app(ctl) as url:
        yield ctl, url


@pytest.fixture
def client(server: tuple[Control, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[1], timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def tokens(server: tuple[Control, str], orgs: tuple[Org, Org]) -> dict[tuple[str, str], str]:
    """One access token per (org slug, role), logged in once for the module."""
    with httpx.Client(base_url=server[1], timeout=30) as c:
        return {
            (org.slug, role): str(login(c, org, role)["access_token"])
            for org in orgs
            for role in ("Admin", "Manager", "Staff")
        }


@pytest.fixture
def as_(tokens: dict[tuple[str, str], str]):  # type: ignore[no-untyped-def]
    def headers(org: Org, role: str) -> dict[str, str]:
        return bearer(tokens[(org.slug, role)])

    return headers


def is_problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, object] = r.json()
    assert doc["status"] == status and str(doc["type"]).endswith("/" + code), doc
    return doc


def outbox(fleet: Control, org: Org, *types: str) -> list[tuple[str, dict[str, object]]]:
    from sqlalchemy import select

    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import OutboxEvent

    with tenant_session(fleet, org.slug, actor="test", read_only=True) as s:
        return [
            (e.type, e.data)
            for e in s.execute(
                select(OutboxEvent)
                .where(OutboxEvent.type.in_(types))
                .order_by(OutboxEvent.created_at)
            ).scalars()
        ]


def fresh_email(org: Org) -> str:
    return f"m-{uuid.uuid4().hex[:8]}@{org.slug}.example"


def invite(client: httpx.Client, org: Org, *, role: str = "Staff") -> dict[str, object]:
    r = client.post(
        "/api/v1/members",
        json={"email": fresh_email(org), "name": "New Person", "role": role},
        headers=bearer(org.keys["all"]),
    )
    assert r.status_code == 201, r.text
    doc: dict[str, object] = r.json()
    return doc


def make_project(client: httpx.Client, headers: dict[str, str], name: str = "Launch") -> str:
    r = client.post("/api/v1/projects", json={"name": name}, headers=headers)
    assert r.status_code == 201, r.text
    pid: str = r.json()["id"]
    return pid


def add_task(client, headers, pid, title, **extra):  # type: ignore[no-untyped-def]
    r = client.post(
        f"/api/v1/projects/{pid}/tasks", json={"title": title, **extra}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()


def board(client, headers, pid):  # type: ignore[no-untyped-def]
    """column -> titles in order, checking every column's positions are 0..n-1."""
    tasks = client.get(f"/api/v1/projects/{pid}/tasks", headers=headers).json()
    columns: dict[str, list[str]] = {}
    for t in tasks:
        columns.setdefault(t["status"], []).append(t)
    for col in columns.values():
        assert [t["position"] for t in col] == list(range(len(col))), col
    return {k: [t["title"] for t in v] for k, v in columns.items()}


# -- members ----------------------------------------------------------------------------------
def test_invite_lists_decrypted_and_emits_member_invited(client, orgs, as_, fleet):
    a = orgs[0]
    email = fresh_email(a)
    r = client.post(
        "/api/v1/members",
        json={"email": email.upper(), "name": " Dewi Lestari ", "role": "Staff"},
        headers=as_(a, "Admin"),
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    assert (doc["email"], doc["name"], doc["status"], doc["roles"]) == (
        email,
        "Dewi Lestari",
        "invited",
        ["Staff"],
    )
    listed = client.get("/api/v1/members?limit=100", headers=as_(a, "Staff")).json()["items"]
    assert {"id": doc["id"], "email": email} in [
        {"id": m["id"], "email": m["email"]} for m in listed
    ]
    invited = client.get("/api/v1/members?status=invited", headers=as_(a, "Staff")).json()
    assert all(m["status"] == "invited" for m in invited["items"])
    again = client.post(
        "/api/v1/members",
        json={"email": f"  {email} ", "name": "Twice", "role": "Staff"},
        headers=as_(a, "Admin"),
    )
    is_problem(again, 409, "already-exists")
    events = [d for t, d in outbox(fleet, a, "member.invited") if d["id"] == doc["id"]]
    assert events == [{"id": doc["id"], "role": "Staff", "status": "invited"}]
    assert email not in json.dumps(events)  # no PII in the (unencrypted) outbox


def test_member_list_cursor_walks_every_member_once(client, orgs, as_):
    b = orgs[1]
    made = {invite(client, b)["id"] for _ in range(3)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/members", params=params, headers=as_(b, "Admin")).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) and made <= set(seen)
    assert set(b.members.values()) <= {uuid.UUID(x) for x in seen}


def test_invite_is_unique_while_two_pii_versions_are_live(client, orgs, server, fleet):
    """A PII rotation in flight: the member's blind index is under one live version, the
    primary is another. The second invitation must still be refused."""
    from sqlalchemy import update

    from bizosctl.security.fields import blind_index
    from bizosctl.security.keyring import stage_next
    from bizosctl.tenancy.members import add_member
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Member

    srv_ctl = server[0]
    with fleet.catalog() as s:
        staged = stage_next(s, fleet.keyring.master, "pii")
    with srv_ctl.catalog() as s:
        srv_ctl.keyring.load(s)  # the server reads the staged version now, not in 10 s
    ring = srv_ctl.keyring
    versions = [k.version for k in ring.versions("pii")]
    primary = ring.primary("pii").version
    assert len(versions) >= 2 and staged in versions and staged != primary
    a = orgs[0]
    email = fresh_email(a)
    with tenant_session(fleet, a.slug, actor="test") as s:
        mid = add_member(fleet, s, tenant_id=a.tenant_id, email=email, name="Rotating")
        # what the rotation's re-index leaves: this row's index under the staged version
        s.execute(
            update(Member)
            .where(Member.id == mid)
            .values(email_bidx=blind_index(ring, email, version=staged))
        )
    assert blind_index(ring, email) != blind_index(ring, email, version=staged)
    r = client.post(
        "/api/v1/members",
        json={"email": email, "name": "Same Address", "role": "Staff"},
        headers=bearer(a.keys["all"]),
    )
    is_problem(r, 409, "already-exists")


def test_invite_bad_input_is_422_with_a_readable_detail(client, orgs, as_):
    a = orgs[0]
    cases = [
        ({"email": "not-an-address", "name": "X"}, "not an e-mail address"),
        ({"email": fresh_email(a), "name": "X", "role": "Overlord"}, "no role named 'Overlord'"),
        ({"email": fresh_email(a)}, "name: Field required"),
        ({"email": fresh_email(a), "name": ""}, "name: String should have at least 1"),
    ]
    for body, detail in cases:
        r = client.post("/api/v1/members", json=body, headers=as_(a, "Admin"))
        assert detail in str(is_problem(r, 422, "invalid-input")["detail"]), (body, r.text)
    r = client.get("/api/v1/members", params={"status": "gone"}, headers=as_(a, "Admin"))
    is_problem(r, 422, "invalid-input")


def test_member_rbac_denials_are_403(client, orgs, as_):
    a = orgs[0]
    target = invite(client, a)["id"]
    body = {"email": fresh_email(a), "name": "X", "role": "Staff"}
    doc = is_problem(
        client.post("/api/v1/members", json=body, headers=as_(a, "Staff")), 403, "forbidden"
    )
    assert "member:invite" in str(doc["detail"])
    # a Manager invites, but grants no role holding what they lack
    doc = is_problem(
        client.post("/api/v1/members", json={**body, "role": "Admin"}, headers=as_(a, "Manager")),
        403,
        "forbidden",
    )
    assert "do not hold" in str(doc["detail"])
    assert client.post("/api/v1/members", json=body, headers=as_(a, "Manager")).status_code == 201
    for method, json_body in (("PATCH", {"role": "Manager"}), ("DELETE", None)):
        r = client.request(
            method, f"/api/v1/members/{target}", json=json_body, headers=as_(a, "Manager")
        )
        assert "member:manage" in str(is_problem(r, 403, "forbidden")["detail"])
    r = client.get("/api/v1/members", headers=bearer(a.keys["read"]))
    assert "members:read" in str(is_problem(r, 403, "forbidden")["detail"])


def test_change_role_notifies_and_the_last_admin_stays(client, orgs, as_, fleet):
    a = orgs[0]
    admin = as_(a, "Admin")
    target = invite(client, a)["id"]
    r = client.patch(f"/api/v1/members/{target}", json={"role": "Manager"}, headers=admin)
    assert r.status_code == 200 and r.json()["roles"] == ["Manager"], r.text
    me = str(a.members["Admin"])
    r = client.patch(f"/api/v1/members/{me}", json={"role": "Staff"}, headers=admin)
    assert "last Admin" in str(is_problem(r, 409, "conflict")["detail"])
    r = client.patch(f"/api/v1/members/{target}", json={"role": "Nobody"}, headers=admin)
    is_problem(r, 422, "invalid-input")
    r = client.patch(f"/api/v1/members/{target}", json={}, headers=admin)
    assert "role" in str(is_problem(r, 422, "invalid-input")["detail"])
    is_problem(
        client.patch(f"/api/v1/members/{uuid.uuid4()}", json={"role": "Staff"}, headers=admin),
        404,
        "not-found",
    )
    from sqlalchemy import select

    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Notification

    with tenant_session(fleet, a.slug, actor="test", read_only=True) as s:
        kinds = list(
            s.execute(
                select(Notification.kind).where(Notification.member_id == uuid.UUID(target))
            ).scalars()
        )
    assert kinds == ["member.role_changed"]


def test_remove_member_emits_member_removed_never_self_never_last_admin(client, orgs, as_, fleet):
    a = orgs[0]
    admin = as_(a, "Admin")
    target = invite(client, a)["id"]
    assert client.delete(f"/api/v1/members/{target}", headers=admin).status_code == 204
    is_problem(client.get(f"/api/v1/members/{target}", headers=admin), 404, "not-found")
    is_problem(client.delete(f"/api/v1/members/{target}", headers=admin), 404, "not-found")
    assert ("member.removed", {"id": target}) in outbox(fleet, a, "member.removed")
    me = a.members["Admin"]
    r = client.delete(f"/api/v1/members/{me}", headers=admin)
    assert "cannot remove yourself" in str(is_problem(r, 409, "conflict")["detail"])
    # an API key may remove members, but not the last Admin
    r = client.delete(f"/api/v1/members/{me}", headers=bearer(a.keys["all"]))
    assert "last Admin" in str(is_problem(r, 409, "conflict")["detail"])
    assert client.get("/api/v1/me", headers=admin).status_code == 200


# -- roles ------------------------------------------------------------------------------------
def test_custom_role_lifecycle(client, orgs, as_):
    a = orgs[0]
    admin = as_(a, "Admin")
    name = f"Auditor {uuid.uuid4().hex[:4]}"
    r = client.post(
        "/api/v1/roles",
        json={"name": name, "permissions": ["invoice:read", "audit:read", "audit:read"]},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    role = r.json()
    assert role["permissions"] == ["audit:read", "invoice:read"] and not role["built_in"]
    listed = {x["name"]: x for x in client.get("/api/v1/roles", headers=as_(a, "Staff")).json()}
    assert listed["Admin"]["built_in"] and listed["Admin"]["permissions"] == ["*"]
    assert listed[name]["permissions"] == ["audit:read", "invoice:read"]
    r = client.patch(
        f"/api/v1/roles/{role['id']}", json={"permissions": ["project:read"]}, headers=admin
    )
    assert r.status_code == 200 and r.json()["permissions"] == ["project:read"]
    holder = client.post(
        "/api/v1/members",
        json={"email": fresh_email(a), "name": "Holder", "role": name},
        headers=admin,
    ).json()
    assert holder["roles"] == [name]
    r = client.delete(f"/api/v1/roles/{role['id']}", headers=admin)
    assert "hold the role" in str(is_problem(r, 409, "conflict")["detail"])
    assert client.delete(f"/api/v1/members/{holder['id']}", headers=admin).status_code == 204
    assert client.delete(f"/api/v1/roles/{role['id']}", headers=admin).status_code == 204
    is_problem(client.get(f"/api/v1/roles/{role['id']}", headers=admin), 404, "not-found")


def test_role_bad_input_and_conflicts(client, orgs, as_):
    a = orgs[0]
    admin = as_(a, "Admin")
    builtin = {x["name"]: x["id"] for x in client.get("/api/v1/roles", headers=admin).json()}
    cases = [
        ({"name": "Ops", "permissions": ["invoice:fly"]}, 422, "unknown permission 'invoice:fly'"),
        ({"name": "Ops", "permissions": ["*"]}, 422, "Admin role's alone"),
        ({"name": "Ops", "permissions": []}, 422, "permissions: List should have at least 1"),
        ({"name": "<b>", "permissions": ["invoice:read"]}, 422, "name: String should match"),
        ({"name": "admin", "permissions": ["invoice:read"]}, 409, "built-in role"),
    ]
    for body, status, detail in cases:
        r = client.post("/api/v1/roles", json=body, headers=admin)
        code = "invalid-input" if status == 422 else "already-exists"
        assert detail in str(is_problem(r, status, code)["detail"]), (body, r.text)
    name = f"Ops {uuid.uuid4().hex[:4]}"
    body = {"name": name, "permissions": ["invoice:read"]}
    assert client.post("/api/v1/roles", json=body, headers=admin).status_code == 201
    is_problem(client.post("/api/v1/roles", json=body, headers=admin), 409, "already-exists")
    for rid in (builtin["Staff"], builtin["Admin"]):
        r = client.delete(f"/api/v1/roles/{rid}", headers=admin)
        assert "built-in" in str(is_problem(r, 409, "conflict")["detail"])
        r = client.patch(
            f"/api/v1/roles/{rid}", json={"permissions": ["invoice:read"]}, headers=admin
        )
        is_problem(r, 409, "conflict")
    for who in ("Manager", "Staff"):
        r = client.post("/api/v1/roles", json=body, headers=as_(a, who))
        assert "role:manage" in str(is_problem(r, 403, "forbidden")["detail"])


# -- projects and tasks -----------------------------------------------------------------------
def test_project_access_is_per_project(client, orgs, as_):
    a = orgs[0]
    manager, staff = as_(a, "Manager"), as_(a, "Staff")
    pid = make_project(client, manager, "Secret launch")
    task = add_task(client, manager, pid, "Plan")
    hidden = [
        ("GET", f"/api/v1/projects/{pid}", None),
        ("GET", f"/api/v1/projects/{pid}/tasks", None),
        ("GET", f"/api/v1/projects/{pid}/tasks/{task['id']}", None),
        ("GET", f"/api/v1/projects/{pid}/members", None),
        ("POST", f"/api/v1/projects/{pid}/tasks", {"title": "Sneak"}),
        ("PATCH", f"/api/v1/projects/{pid}/tasks/{task['id']}", {"title": "Sneak"}),
        ("DELETE", f"/api/v1/projects/{pid}/tasks/{task['id']}", None),
    ]
    for method, path, body in hidden:
        doc = is_problem(client.request(method, path, json=body, headers=staff), 404, "not-found")
        assert "Secret" not in json.dumps(doc)
    listed = client.get("/api/v1/projects?limit=100", headers=staff).json()["items"]
    assert pid not in {p["id"] for p in listed}
    staff_id = str(a.members["Staff"])
    r = client.post(
        f"/api/v1/projects/{pid}/members",
        json={"member_id": staff_id, "access": "viewer"},
        headers=manager,
    )
    assert r.status_code == 201, r.text
    assert client.get(f"/api/v1/projects/{pid}/tasks", headers=staff).json()[0]["title"] == "Plan"
    r = client.post(f"/api/v1/projects/{pid}/tasks", json={"title": "Mine"}, headers=staff)
    assert "viewer" in str(is_problem(r, 403, "forbidden")["detail"])
    client.post(
        f"/api/v1/projects/{pid}/members", json={"member_id": staff_id}, headers=manager
    ).raise_for_status()
    assert add_task(client, staff, pid, "Mine")["position"] == 1
    # staff may not manage the project itself
    r = client.patch(f"/api/v1/projects/{pid}", json={"name": "Mine now"}, headers=staff)
    assert "project:manage" in str(is_problem(r, 403, "forbidden")["detail"])
    r = client.post("/api/v1/projects", json={"name": "Own"}, headers=staff)
    assert "project:create" in str(is_problem(r, 403, "forbidden")["detail"])
    # keys: projects:read sees every project; invoices-only keys see none
    assert pid in {
        p["id"]
        for p in client.get("/api/v1/projects?limit=100", headers=bearer(a.keys["all"])).json()[
            "items"
        ]
    }
    r = client.get("/api/v1/projects", headers=bearer(a.keys["read"]))
    assert "projects:read" in str(is_problem(r, 403, "forbidden")["detail"])
    assert (
        client.delete(f"/api/v1/projects/{pid}/members/{staff_id}", headers=manager).status_code
        == 204
    )
    is_problem(client.get(f"/api/v1/projects/{pid}", headers=staff), 404, "not-found")


def test_project_update_archive_delete_and_bad_input(client, orgs, as_):
    a = orgs[0]
    manager = as_(a, "Manager")
    pid = make_project(client, manager, "Old name")
    r = client.patch(
        f"/api/v1/projects/{pid}", json={"name": "New name", "status": "archived"}, headers=manager
    )
    assert (r.json()["name"], r.json()["status"]) == ("New name", "archived"), r.text
    archived = client.get("/api/v1/projects?status=archived", headers=manager).json()["items"]
    assert pid in {p["id"] for p in archived}
    for body, detail in (
        ({"status": "paused"}, "status: Input should be 'active' or 'archived'"),
        ({"name": None}, "name: cannot be null"),
        ({"name": ""}, "name: String should have at least 1"),
    ):
        r = client.patch(f"/api/v1/projects/{pid}", json=body, headers=manager)
        assert detail in str(is_problem(r, 422, "invalid-input")["detail"]), r.text
    r = client.post("/api/v1/projects", json={"name": "   "}, headers=manager)
    assert "name: String should have at least 1" in str(
        is_problem(r, 422, "invalid-input")["detail"]
    )
    r = client.post(
        f"/api/v1/projects/{pid}/members",
        json={"member_id": str(a.members["Staff"]), "access": "owner"},
        headers=manager,
    )
    is_problem(r, 422, "invalid-input")
    add_task(client, manager, pid, "Goes with it")
    assert client.delete(f"/api/v1/projects/{pid}", headers=manager).status_code == 204
    is_problem(client.get(f"/api/v1/projects/{pid}/tasks", headers=manager), 404, "not-found")


def test_kanban_moves_and_reorders_keep_columns_dense(client, orgs, as_):
    a = orgs[0]
    h = as_(a, "Manager")
    pid = make_project(client, h)
    ids = {t: add_task(client, h, pid, t)["id"] for t in ("a", "b", "c", "d")}
    add_task(client, h, pid, "first", position=0)
    add_task(client, h, pid, "late", position=99)
    add_task(client, h, pid, "x", status="done", priority=3)
    assert board(client, h, pid) == {"todo": ["first", "a", "b", "c", "d", "late"], "done": ["x"]}

    def move(which: str, **body: object) -> dict[str, object]:
        r = client.patch(f"/api/v1/projects/{pid}/tasks/{ids[which]}", json=body, headers=h)
        assert r.status_code == 200, r.text
        doc: dict[str, object] = r.json()
        return doc

    move("c", position=0)  # reorder within the column
    assert board(client, h, pid)["todo"] == ["c", "first", "a", "b", "d", "late"]
    assert move("a", status="done", position=0)["position"] == 0  # to another column
    assert board(client, h, pid) == {"todo": ["c", "first", "b", "d", "late"], "done": ["a", "x"]}
    move("b", status="in_progress")  # no position: the end of the new column
    move("d", position=1000)  # past the end: the end
    move("c", status="todo")  # its own column again: it stays where it is
    assert board(client, h, pid) == {
        "todo": ["c", "first", "late", "d"],
        "in_progress": ["b"],
        "done": ["a", "x"],
    }
    t = move("c", title="c!", priority=2, due_on="2027-01-31", description="why")
    assert (t["title"], t["priority"], t["due_on"], t["position"]) == ("c!", 2, "2027-01-31", 0)
    assert client.delete(f"/api/v1/projects/{pid}/tasks/{ids['c']}", headers=h).status_code == 204
    assert board(client, h, pid)["todo"] == ["first", "late", "d"]
    todo = client.get(f"/api/v1/projects/{pid}/tasks?status=todo", headers=h).json()
    assert [x["title"] for x in todo] == ["first", "late", "d"]
    bad = [
        ({"status": "someday"}, "status: Input should be"),
        ({"position": -1}, "position: Input should be greater than or equal to 0"),
        ({"priority": 9}, "priority: Input should be less than or equal to 4"),
        ({"title": None}, "title: cannot be null"),
        ({"due_on": "tomorrow"}, "due_on: Input should be a valid date"),
    ]
    for body, detail in bad:
        r = client.patch(f"/api/v1/projects/{pid}/tasks/{ids['d']}", json=body, headers=h)
        assert detail in str(is_problem(r, 422, "invalid-input")["detail"]), (body, r.text)
    r = client.post(f"/api/v1/projects/{pid}/tasks", json={"title": "  "}, headers=h)
    assert "title: String should have at least 1" in str(
        is_problem(r, 422, "invalid-input")["detail"]
    )
    r = client.get(f"/api/v1/projects/{pid}/tasks?status=someday", headers=h)
    is_problem(r, 422, "invalid-input")
    is_problem(
        client.patch(f"/api/v1/projects/{pid}/tasks/{uuid.uuid4()}", json={}, headers=h),
        404,
        "not-found",
    )


def _waiting_on_locks(fleet: Control, org: Org) -> int:
    from sqlalchemy import text

    from bizosctl.tenancy.router import tenant_session

    with tenant_session(fleet, org.slug, actor="test", read_only=True) as s:
        return int(
            s.execute(
                text(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and usename = current_user and datname = current_database()"
                )
            ).scalar_one()
        )


def test_two_concurrent_moves_leave_both_columns_dense(client, orgs, as_, server, fleet):
    """Both moves read their columns while the rows are held, so without the board lock each
    would renumber from a stale read; with it the second reads what the first committed."""
    from sqlalchemy import text

    from bizosctl.tenancy.router import tenant_session

    b = orgs[1]
    h = as_(b, "Manager")
    pid = make_project(client, h)
    ids = [add_task(client, h, pid, f"t{i}")["id"] for i in range(6)]
    add_task(client, h, pid, "d0", status="done")
    moves = [
        (ids[0], {"status": "done", "position": 0}),
        (ids[5], {"status": "done", "position": 1}),
    ]

    def patch(move: tuple[str, dict[str, object]]) -> int:
        with httpx.Client(base_url=server[1], timeout=60) as c:
            r = c.patch(f"/api/v1/projects/{pid}/tasks/{move[0]}", json=move[1], headers=h)
            return r.status_code

    with ThreadPoolExecutor(2) as pool:
        with tenant_session(fleet, b.slug, actor="test") as s:
            s.execute(
                text("select id from tasks where project_id = :p for update"), {"p": pid}
            ).all()
            futures = [pool.submit(patch, m) for m in moves]
            deadline = time.monotonic() + 30
            while _waiting_on_locks(fleet, b) < 2:
                assert time.monotonic() < deadline, "the two moves never queued up"
        codes = [f.result() for f in futures]
    assert codes == [200, 200]
    final = board(client, h, pid)  # asserts 0..n-1 in every column
    assert final["todo"] == ["t1", "t2", "t3", "t4"]
    assert sorted(final["done"]) == ["d0", "t0", "t5"]


def test_assignment_emits_task_assigned_and_notifies(client, orgs, as_, fleet):
    a = orgs[0]
    manager, staff = as_(a, "Manager"), as_(a, "Staff")
    pid = make_project(client, manager)
    staff_id = str(a.members["Staff"])
    r = client.post(
        f"/api/v1/projects/{pid}/tasks",
        json={"title": "Call", "assignee_id": staff_id},
        headers=manager,
    )
    assert "not on this project" in str(is_problem(r, 422, "invalid-input")["detail"])
    client.post(
        f"/api/v1/projects/{pid}/members", json={"member_id": staff_id}, headers=manager
    ).raise_for_status()
    before = client.get("/api/v1/notifications/unread-count", headers=staff).json()["unread"]
    t1 = add_task(client, manager, pid, "Call the bank", assignee_id=staff_id)
    t2 = add_task(client, manager, pid, "Unassigned")
    r = client.patch(
        f"/api/v1/projects/{pid}/tasks/{t2['id']}", json={"assignee_id": staff_id}, headers=manager
    )
    assert r.json()["assignee_id"] == staff_id
    # the same assignee again, then unassigning: no event
    client.patch(
        f"/api/v1/projects/{pid}/tasks/{t2['id']}", json={"assignee_id": staff_id}, headers=manager
    ).raise_for_status()
    r = client.patch(
        f"/api/v1/projects/{pid}/tasks/{t2['id']}", json={"assignee_id": None}, headers=manager
    )
    assert r.json()["assignee_id"] is None
    events = [
        d["id"]
        for t, d in outbox(fleet, a, "task.assigned")
        if d["project_id"] == pid and d["assignee_id"] == staff_id
    ]
    assert events == [t1["id"], t2["id"]]
    page = client.get("/api/v1/notifications", headers=staff).json()["items"]
    assert [n["title"] for n in page[:2]] == [
        "Assigned to you: Unassigned",
        "Assigned to you: Call the bank",
    ]
    # added to the project, then two assignments
    assert (
        client.get("/api/v1/notifications/unread-count", headers=staff).json()["unread"]
        == before + 2
    )
    r = client.patch(
        f"/api/v1/projects/{pid}/tasks/{t2['id']}",
        json={"assignee_id": str(uuid.uuid4())},
        headers=manager,
    )
    is_problem(r, 404, "not-found")


# -- notifications ----------------------------------------------------------------------------
def test_notifications_list_count_mark_read(client, orgs, as_, fleet):
    from bizosctl.resources.notifications import notify_member
    from bizosctl.tenancy.router import tenant_session

    b = orgs[1]
    staff = as_(b, "Staff")
    client.post("/api/v1/notifications/read-all", headers=staff).raise_for_status()
    made = []
    for i in range(5):  # one transaction each: created_at is the transaction's time
        with tenant_session(fleet, b.slug, actor="test") as s:
            made.append(
                notify_member(s, member_id=b.members["Staff"], kind="test.note", title=f"n{i}")
            )
    with tenant_session(fleet, b.slug, actor="test") as s:
        other = notify_member(s, member_id=b.members["Manager"], kind="test.note", title="theirs")
    assert client.get("/api/v1/notifications/unread-count", headers=staff).json() == {"unread": 5}
    r = client.post(f"/api/v1/notifications/{made[1]}/read", headers=staff)
    assert r.status_code == 200 and r.json()["read_at"], r.text
    first_read = r.json()["read_at"]
    assert (
        client.post(f"/api/v1/notifications/{made[1]}/read", headers=staff).json()["read_at"]
        == first_read
    )
    assert client.get("/api/v1/notifications/unread-count", headers=staff).json() == {"unread": 4}
    # unread first, walked by cursor two at a time
    seen: list[str] = []
    cursor = None
    while True:
        params = {"order": "unread_first", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/notifications", params=params, headers=staff).json()
        seen += [n["id"] for n in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    mine = [str(x) for x in made]
    assert seen[:4] == [mine[4], mine[3], mine[2], mine[0]] and str(made[1]) in seen[4:]
    assert len(seen) == len(set(seen)) and str(other) not in seen
    newest = client.get("/api/v1/notifications?limit=5", headers=staff).json()["items"]
    assert [n["id"] for n in newest] == mine[::-1]
    unread = client.get("/api/v1/notifications?unread=true", headers=staff).json()["items"]
    assert str(made[1]) not in {n["id"] for n in unread}
    # another member's notification is as unknown as a made-up one
    is_problem(client.post(f"/api/v1/notifications/{other}/read", headers=staff), 404, "not-found")
    assert client.post("/api/v1/notifications/read-all", headers=staff).json() == {"marked": 4}
    assert client.get("/api/v1/notifications/unread-count", headers=staff).json() == {"unread": 0}
    for params in ({"order": "oldest"}, {"cursor": "garbage!"}, {"cursor": "2abc"}, {"limit": 0}):
        r = client.get("/api/v1/notifications", params=params, headers=staff)
        is_problem(r, 422, "invalid-input")


def test_notifications_refuse_api_keys(client, orgs):
    for path in ("/api/v1/notifications", "/api/v1/notifications/unread-count"):
        r = client.get(path, headers=bearer(orgs[0].keys["all"]))
        assert "member's access token" in str(is_problem(r, 403, "forbidden")["detail"])
    r = client.post("/api/v1/notifications/read-all", headers=bearer(orgs[0].keys["all"]))
    is_problem(r, 403, "forbidden")


# -- audit trail ------------------------------------------------------------------------------
def test_audit_trail_filters_and_never_holds_secrets(client, orgs, as_, fleet):
    from sqlalchemy import select

    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Member, RefreshToken

    a = orgs[0]
    admin = as_(a, "Admin")
    invited = client.post(
        "/api/v1/members",
        json={"email": fresh_email(a), "name": "Audited", "role": "Staff"},
        headers=admin,
    ).json()
    actor = f"member:{a.members['Admin']}"
    page = client.get(
        "/api/v1/audit-logs", params={"table": "members", "actor": actor}, headers=admin
    ).json()
    rows = [x for x in page["items"] if x["row_key"] == {"id": invited["id"]}]
    assert [x["action"] for x in rows] == ["insert"], page
    assert (
        rows[0]["new"]["email_enc"] == "<redacted>" and rows[0]["new"]["email_bidx"] == "<redacted>"
    )
    assert all(x["actor"] == actor and x["table"] == "members" for x in page["items"])
    # every secret column value anywhere in the tenant's trail: never there
    with tenant_session(fleet, a.slug, actor="test", read_only=True) as s:
        secrets = {
            v
            for m in s.execute(select(Member)).scalars()
            for v in (m.email_enc, m.email_bidx, m.name_enc, m.password_hash)
            if v
        } | set(s.execute(select(RefreshToken.token_hash)).scalars())
    assert secrets
    trail: list[dict[str, object]] = []
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        doc = client.get("/api/v1/audit-logs", params=params, headers=bearer(a.keys["all"])).json()
        trail += doc["items"]
        cursor = doc["next_cursor"]
        if not cursor:
            break
    assert {x["table"] for x in trail} >= {"members", "refresh_tokens", "auth_sessions"}
    text = json.dumps(trail)
    assert not [v for v in secrets if v in text]
    for x in trail:
        for image in (x["old"], x["new"]):
            for key, value in (image or {}).items():
                if key.endswith(("_enc", "_bidx", "_hash")):
                    assert value in (None, "<redacted>", "<changed>"), (x["table"], key)
    # time window
    at = rows[0]["at"]
    around = client.get(
        "/api/v1/audit-logs", params={"since": at, "table": "members"}, headers=admin
    ).json()["items"]
    assert invited["id"] in {x["row_key"]["id"] for x in around}
    before = client.get(
        "/api/v1/audit-logs", params={"until": at, "table": "members", "limit": 100}, headers=admin
    ).json()["items"]
    assert invited["id"] not in {x["row_key"]["id"] for x in before}


def test_audit_logs_bad_input_and_rbac(client, orgs, as_):
    a = orgs[0]
    admin = as_(a, "Admin")
    cases = [
        ({"table": "secrets"}, "table: no tenant table 'secrets'"),
        (
            {"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
            "since: must be before",
        ),
        ({"since": "2026-12-01T00:00:00"}, "since: give a time zone"),
        ({"since": "yesterday"}, "since: Input should be a valid datetime"),
        # a number would be read as a Unix timestamp: the schema says ISO 8601
        ({"since": "0"}, "since: Value error, give an ISO 8601 date or time, not a number"),
        ({"until": "1.5e9"}, "until: Value error, give an ISO 8601 date or time, not a number"),
        ({"cursor": "nope"}, "cursor: not a cursor"),
    ]
    for params, detail in cases:
        r = client.get("/api/v1/audit-logs", params=params, headers=admin)
        assert detail in str(is_problem(r, 422, "invalid-input")["detail"]), (params, r.text)
    r = client.get("/api/v1/audit-logs", headers=as_(a, "Staff"))
    assert "audit:read" in str(is_problem(r, 403, "forbidden")["detail"])
    r = client.get("/api/v1/audit-logs", headers=bearer(a.keys["read"]))
    assert "audit_logs:read" in str(is_problem(r, 403, "forbidden")["detail"])
    assert client.get("/api/v1/audit-logs", headers=as_(a, "Manager")).status_code == 200


# -- isolation --------------------------------------------------------------------------------
def test_another_tenants_ids_are_404_on_every_route(client, orgs, as_, fleet):
    from bizosctl.resources.notifications import notify_member
    from bizosctl.tenancy.router import tenant_session

    a, b = orgs
    a_admin = as_(a, "Admin")
    member = invite(client, a)["id"]
    role = client.post(
        "/api/v1/roles",
        json={"name": f"Iso {uuid.uuid4().hex[:4]}", "permissions": ["invoice:read"]},
        headers=a_admin,
    ).json()["id"]
    pid = make_project(client, a_admin, "A's plans")
    task = add_task(client, a_admin, pid, "A's task")["id"]
    with tenant_session(fleet, a.slug, actor="test") as s:
        note = notify_member(s, member_id=a.members["Admin"], kind="test.note", title="A's note")
    b_pid = make_project(client, as_(b, "Admin"), "B's own")
    routes = [
        ("GET", f"/api/v1/members/{member}", None),
        ("PATCH", f"/api/v1/members/{member}", {"role": "Manager"}),
        ("DELETE", f"/api/v1/members/{member}", None),
        ("GET", f"/api/v1/roles/{role}", None),
        ("PATCH", f"/api/v1/roles/{role}", {"permissions": ["task:write"]}),
        ("DELETE", f"/api/v1/roles/{role}", None),
        ("GET", f"/api/v1/projects/{pid}", None),
        ("PATCH", f"/api/v1/projects/{pid}", {"name": "Taken"}),
        ("DELETE", f"/api/v1/projects/{pid}", None),
        ("GET", f"/api/v1/projects/{pid}/members", None),
        ("POST", f"/api/v1/projects/{pid}/members", {"member_id": str(b.members["Staff"])}),
        ("DELETE", f"/api/v1/projects/{pid}/members/{a.members['Admin']}", None),
        ("GET", f"/api/v1/projects/{pid}/tasks", None),
        ("POST", f"/api/v1/projects/{pid}/tasks", {"title": "Intruder"}),
        ("GET", f"/api/v1/projects/{pid}/tasks/{task}", None),
        ("PATCH", f"/api/v1/projects/{pid}/tasks/{task}", {"status": "done"}),
        ("DELETE", f"/api/v1/projects/{pid}/tasks/{task}", None),
        # B's own project, A's ids in the body or the path
        ("POST", f"/api/v1/projects/{b_pid}/members", {"member_id": member}),
        ("POST", f"/api/v1/projects/{b_pid}/tasks", {"title": "x", "assignee_id": member}),
        ("GET", f"/api/v1/projects/{b_pid}/tasks/{task}", None),
    ]
    for who in (bearer(b.keys["all"]), as_(b, "Admin")):
        for method, path, body in routes:
            r = client.request(method, path, json=body, headers=who)
            doc = is_problem(r, 404, "not-found")
            assert "A's" not in json.dumps(doc) and "email" not in doc, (method, path)
    r = client.post(f"/api/v1/notifications/{note}/read", headers=as_(b, "Admin"))
    is_problem(r, 404, "not-found")
    seen = json.dumps(
        [
            client.get("/api/v1/members?limit=100", headers=as_(b, "Admin")).json(),
            client.get("/api/v1/roles", headers=as_(b, "Admin")).json(),
            client.get("/api/v1/projects?limit=100", headers=bearer(b.keys["all"])).json(),
            client.get("/api/v1/audit-logs?limit=100", headers=bearer(b.keys["all"])).json(),
        ]
    )
    for a_id in (member, role, pid, task, a.slug):
        assert a_id not in seen
    # and A's things are untouched
    assert (
        client.get(f"/api/v1/projects/{pid}/tasks/{task}", headers=a_admin).json()["status"]
        == "todo"
    )
    assert client.get(f"/api/v1/members/{member}", headers=a_admin).json()["roles"] == ["Staff"]


def test_project_and_task_writes_need_their_permission_or_scope(client, orgs, as_, fleet):
    from bizosctl.security.apikeys import create_api_key

    a = orgs[0]
    manager, staff = as_(a, "Manager"), as_(a, "Staff")
    pid = make_project(client, manager, "Guarded")
    task = add_task(client, manager, pid, "Keep")["id"]
    _, token = create_api_key(
        fleet, tenant=a.slug, name="projects-read", scopes=["projects:read"], expires_ms=None
    )
    reader = bearer(token)
    # a projects:read key sees every project and task, changes none
    assert pid in {p["id"] for p in client.get("/api/v1/projects", headers=reader).json()["items"]}
    assert client.get(f"/api/v1/projects/{pid}/tasks/{task}", headers=reader).status_code == 200
    writes = [
        ("POST", "/api/v1/projects", {"name": "No"}),
        ("PATCH", f"/api/v1/projects/{pid}", {"name": "No"}),
        ("DELETE", f"/api/v1/projects/{pid}", None),
        ("POST", f"/api/v1/projects/{pid}/members", {"member_id": str(a.members["Staff"])}),
        ("DELETE", f"/api/v1/projects/{pid}/members/{a.members['Manager']}", None),
        ("POST", f"/api/v1/projects/{pid}/tasks", {"title": "No"}),
        ("PATCH", f"/api/v1/projects/{pid}/tasks/{task}", {"position": 0}),
        ("DELETE", f"/api/v1/projects/{pid}/tasks/{task}", None),
    ]
    for method, path, body in writes:
        r = client.request(method, path, json=body, headers=reader)
        assert "projects:write" in str(is_problem(r, 403, "forbidden")["detail"]), path
    # staff: project management is not theirs (task writes on a project they are not on: 404)
    for method, path, body in writes[:5]:
        r = client.request(method, path, json=body, headers=staff)
        doc = is_problem(r, 403, "forbidden")
        assert "project:create" in str(doc["detail"]) or "project:manage" in str(doc["detail"])
    for method, path, body in writes[5:]:
        is_problem(client.request(method, path, json=body, headers=staff), 404, "not-found")
    # roles: Manager and Staff lack role:manage for every change
    role = client.post(
        "/api/v1/roles",
        json={"name": f"Guard {uuid.uuid4().hex[:4]}", "permissions": ["invoice:read"]},
        headers=as_(a, "Admin"),
    ).json()["id"]
    for method, body in (("PATCH", {"permissions": ["task:write"]}), ("DELETE", None)):
        r = client.request(method, f"/api/v1/roles/{role}", json=body, headers=manager)
        assert "role:manage" in str(is_problem(r, 403, "forbidden")["detail"])
    r = client.get("/api/v1/roles", headers=bearer(a.keys["read"]))
    assert "roles:read" in str(is_problem(r, 403, "forbidden")["detail"])
    assert (
        client.get(f"/api/v1/projects/{pid}/tasks/{task}", headers=manager).json()["title"]
        == "Keep"
    )


def test_two_invitations_of_one_address_at_once_give_one_member(client, orgs, server, fleet):
    """Both requests queue on the members lock (held here), then run one after the other:
    the second finds the first's member (409), not a unique-index error."""
    from sqlalchemy import text

    from bizosctl.tenancy.router import tenant_session

    b = orgs[1]
    body = {"email": fresh_email(b), "name": "Twin", "role": "Staff"}

    def post(_: int) -> int:
        with httpx.Client(base_url=server[1], timeout=60) as c:
            return c.post("/api/v1/members", json=body, headers=bearer(b.keys["all"])).status_code

    with ThreadPoolExecutor(2) as pool:
        with tenant_session(fleet, b.slug, actor="test") as s:
            s.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": f"members:{b.tenant_id}"},
            )
            futures = [pool.submit(post, i) for i in range(2)]
            deadline = time.monotonic() + 30
            while _waiting_on_locks(fleet, b) < 2:
                assert time.monotonic() < deadline, "the two invitations never queued up"
        codes = sorted(f.result() for f in futures)
    assert codes == [201, 409]
