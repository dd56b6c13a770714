"""GDPR find, export and erasure across tenants, tiers and regions (issue #15)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

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


def _catalog_dump(ctl: Control) -> str:
    """Every catalog row as text (the test looks for the person's PII in it)."""
    with ctl.catalog_engine.connect() as conn:
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).scalars()
        return "\n".join(
            str(
                conn.execute(
                    text(f"SELECT coalesce(json_agg(t)::text, '') FROM \"{t}\" AS t")
                ).scalar()
            )
            for t in tables
        )


def _region_dump(ctl: Control, slug: str) -> str:
    """Every row of the tenant's database (all schemas) as text."""
    route = ctl.route(slug)
    handle = ctl.server(route.server)
    from bizosctl.db.engines import get_engine

    with get_engine(handle.admin_url(route.database)).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
        ).all()
        return "\n".join(
            str(
                conn.execute(
                    text(f'SELECT coalesce(json_agg(t)::text, \'\') FROM "{s}"."{t}" AS t')
                ).scalar()
            )
            for s, t in rows
        )


def _no_pii(ctl: Control, email: str, name: str, *places: str) -> None:
    from bizosctl.security.fields import blind_indexes

    needles = [email, name, *(b.split(":", 1)[1] for b in blind_indexes(ctl.keyring, email))]
    for place in places:
        for n in needles:
            assert n not in place


def test_export_zip_manifest_and_mode(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any], tmp_path: Any
) -> None:
    import hashlib
    import os
    import zipfile

    email, name = _email(), "Dewi Lestari"
    a = make_tenant(tier="schema")
    b = make_tenant(tier="shared", region="id")
    _add(ctl, a, email, name)
    _add(ctl, b, email, name)
    out = tmp_path / "dewi.zip"
    r = cli("gdpr", "export", email, "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert os.stat(out).st_mode & 0o777 == 0o600
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        files = {n: f for t in manifest["tenants"] for n, f in t["files"].items()}
        for n, f in files.items():
            assert hashlib.sha256(zf.read(n)).hexdigest() == f["sha256"]
        members = json.loads(zf.read(f"tenants/{a}/members.json"))
    assert members[0]["email"] == email and members[0]["name"] == name
    assert "email_bidx" not in members[0]
    assert {f"tenants/{a}/members.json", f"tenants/{b}/audit_logs.json"} <= set(files)
    # the catalog and the other region hold none of it
    _no_pii(ctl, email, name, _catalog_dump(ctl))
    r = cli("gdpr", "export", email, "--out", str(out), "--json")
    assert r.exit_code == 2 and "exists" in json.loads(r.stdout)["error"]["message"]


def test_export_refuses_a_symlink(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any], tmp_path: Any
) -> None:
    email = _email()
    _add(ctl, make_tenant(), email)
    target = tmp_path / "elsewhere"
    link = tmp_path / "x.zip"
    link.symlink_to(target)
    r = cli("gdpr", "export", email, "--out", str(link))
    assert r.exit_code == 2 and not target.exists()


def test_export_unwritable_directory(cli: Callable[..., Any], tmp_path: Any) -> None:
    r = cli("gdpr", "export", _email(), "--out", str(tmp_path / "nope" / "x.zip"), "--json")
    assert r.exit_code == 2
    assert "no such directory" in json.loads(r.stdout)["error"]["message"]


def test_malformed_email_exit_2(cli: Callable[..., Any]) -> None:
    r = cli("gdpr", "find", "not-an-address", "--json")
    assert r.exit_code == 2
    msg = json.loads(r.stdout)["error"]["message"]
    assert msg == "not an e-mail address (expected local@domain.tld)"


def test_found_nowhere_exit_3_and_logged(ctl: Control, cli: Callable[..., Any]) -> None:
    email = _email()
    r = cli("gdpr", "find", email, "--json")
    assert r.exit_code == 3
    rid = json.loads(r.stdout)["error"]["message"].split("request ")[1].split(" ")[0]
    r = cli("gdpr", "requests", "--json")
    req = next(x for x in json.loads(r.stdout)["requests"] if x["id"] == rid)
    assert req["status"] == "done" and req["kind"] == "find"
    assert email not in r.stdout


def test_delete_without_yes_exit_2(cli: Callable[..., Any]) -> None:
    r = cli("gdpr", "delete", _email(), "--json")
    assert r.exit_code == 2 and "--yes" in json.loads(r.stdout)["error"]["message"]


def test_delete_erases_verifies_and_rerun_is_harmless(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    email, name = _email(), "Bambang Wijaya"
    a = make_tenant(tier="schema")
    b = make_tenant(tier="isolated", region="id")
    for slug in (a, b):
        _add(ctl, slug, _email(), "Owner Person", role="Admin")
        _add(ctl, slug, email, name)
    from bizosctl.resources.invoices import CustomerCreate, create_customer

    route = ctl.route(a)
    with tenant_session(ctl, a, actor="test") as s:
        create_customer(
            s, tenant_id=route.tenant_id, data=CustomerCreate(name=name, email=email), ctl=ctl
        )
    r = cli("gdpr", "delete", email, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert _find(cli, email).exit_code == 0  # the dry run changed nothing
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    by = {t["tenant"]: t for t in doc["tenants"]}
    assert by[a]["tables"]["members"]["rows"] == 1
    assert by[a]["tables"]["customers"]["action"] == "anonymise"
    assert all(t["verified"] for t in doc["tenants"])
    assert _find(cli, email).exit_code == 3
    _no_pii(ctl, email, name, _catalog_dump(ctl), _region_dump(ctl, a), _region_dump(ctl, b))
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 3  # found nowhere: nothing changes
    reqs = json.loads(cli("gdpr", "requests", "--json").stdout)["requests"]
    done = next(x for x in reqs if x["id"] == doc["request"])
    assert done["status"] == "done" and done["receipt"]["tenants"]


def test_only_admin_refused_then_transferred(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    email, heir = _email(), _email()
    slug = make_tenant()
    _add(ctl, slug, email, "Solo Admin", role="Admin")
    _add(ctl, slug, heir, "Next Admin")
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["message"] == (
        f"this person is the only Admin of {slug}: pass --transfer-ownership-to EMAIL "
        "(another member there, who becomes Admin)"
    )
    assert _find(cli, email).exit_code == 0  # nothing erased
    r = cli("gdpr", "delete", email, "--yes", "--transfer-ownership-to", heir, "--json")
    assert r.exit_code == 0, r.output
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        roles = (
            s.execute(
                text(
                    "SELECT r.name FROM member_roles mr JOIN roles r ON r.id = mr.role_id "
                    "JOIN members m ON m.id = mr.member_id"
                )
            )
            .scalars()
            .all()
        )
    assert "Admin" in roles
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        assert s.execute(text("SELECT count(*) FROM members")).scalar_one() == 1


def test_verification_finds_a_planted_leftover(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    email = _email()
    slug = make_tenant()
    mid = _add(ctl, slug, email, "Planted Person")
    route = ctl.route(slug)
    with tenant_session(ctl, slug, actor="test") as s:
        pid = s.execute(
            text("INSERT INTO projects (tenant_id, name) VALUES (:t, 'p') RETURNING id"),
            {"t": route.tenant_id},
        ).scalar_one()
        s.execute(
            text(
                "INSERT INTO tasks (tenant_id, project_id, title, description) "
                "VALUES (:t, :p, 'call', :d)"
            ),
            {"t": route.tenant_id, "p": pid, "d": f"ring {email} back"},
        )
    assert mid
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 1
    msg = json.loads(r.stdout)["error"]["message"]
    assert "tasks.description" in msg and email not in msg
    reqs = json.loads(cli("gdpr", "requests", "--status", "partially_done", "--json").stdout)
    assert any(x["tenant"] is None for x in reqs["requests"])
    # the operator clears the free text; the same command finishes
    with tenant_session(ctl, slug, actor="test") as s:
        s.execute(text("UPDATE tasks SET description = 'ring back'"))
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 0, r.output


def test_tenant_unreachable_partial_then_resumed(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    email = _email()
    a = make_tenant(tier="schema")
    b = make_tenant(tier="isolated", region="id")
    _add(ctl, a, email)
    _add(ctl, b, email)
    tid = ctl.route(b).tenant_id
    with ctl.catalog() as s:  # b's database unreachable, as a server down would be
        db = s.execute(
            text(
                "UPDATE routes SET database = 'gone_db' WHERE tenant_id = :t "
                "RETURNING (SELECT database FROM routes WHERE tenant_id = :t)"
            ),
            {"t": tid},
        ).scalar_one()
    try:
        r = cli("gdpr", "delete", email, "--yes", "--json")
        assert r.exit_code == 1
    finally:
        with ctl.catalog() as s:
            s.execute(
                text("UPDATE routes SET database = :d WHERE tenant_id = :t"), {"d": db, "t": tid}
            )
    reqs = json.loads(cli("gdpr", "requests", "--status", "partially_done", "--json").stdout)
    assert reqs["requests"]
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert [t["tenant"] for t in json.loads(r.stdout)["tenants"]] == [a, b] or len(
        json.loads(r.stdout)["tenants"]
    ) == 2
    assert _find(cli, email).exit_code == 3


def test_extend_and_overdue(ctl: Control, cli: Callable[..., Any]) -> None:
    r = cli("gdpr", "find", _email(), "--json")
    rid = json.loads(r.stdout)["error"]["message"].split("request ")[1].split(" ")[0]
    with ctl.catalog() as s:  # an open request received long ago
        s.execute(
            text(
                "UPDATE gdpr_requests SET status = 'received', received_at = now() - interval "
                "'40 days', due_at = now() - interval '10 days' WHERE id = :i"
            ),
            {"i": rid},
        )
    r = cli("gdpr", "requests", "--overdue", "--json")
    assert rid in r.stdout
    doc = json.loads(cli("doctor", "--json").stdout)
    check = next(c for c in doc["checks"] if c["name"] == "gdpr requests")
    assert check["warning"] is True and "overdue" in check["detail"]
    r = cli("gdpr", "extend", rid, "--months", "4", "--reason", "x")
    assert r.exit_code == 2
    r = cli("gdpr", "extend", rid, "--months", "3", "--reason", "archived backups", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["overdue"] is False
    doc = json.loads(cli("doctor", "--json").stdout)
    check = next(c for c in doc["checks"] if c["name"] == "gdpr requests")
    assert check["warning"] is False or "overdue" in check["detail"]  # others may be overdue
    r = cli("gdpr", "extend", "nope", "--reason", "x")
    assert r.exit_code == 2


def test_find_during_pii_rotation(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    """A member indexed under the previous pii version is still found (every live version)."""
    from bizosctl.security.keyring import add_version

    email = _email()
    slug = make_tenant()
    _add(ctl, slug, email)
    with ctl.catalog() as s:
        add_version(s, ctl.keyring.master, "pii")
    ctl.reload_keyring()
    assert _find(cli, email).exit_code == 0
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 0, r.output


def test_reconcile_rebuilds_routing_keys(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    email = _email()
    slug = make_tenant()
    _add(ctl, slug, email)
    with ctl.catalog() as s:
        s.execute(
            text("DELETE FROM gdpr_subjects WHERE tenant_id = :t"), {"t": ctl.route(slug).tenant_id}
        )
    assert _find(cli, email).exit_code == 3
    r = cli("gdpr", "reconcile", "--dry-run", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] >= 1
    assert _find(cli, email).exit_code == 3
    assert cli("gdpr", "reconcile", "--json").exit_code == 0
    assert _find(cli, email).exit_code == 0


def test_no_email_in_argv_or_logs(
    ctl: Control, make_tenant: Callable[..., str], fleet: Control
) -> None:
    import os
    import subprocess
    import sys

    email = _email()
    _add(ctl, make_tenant(), email)
    p = subprocess.run(
        [sys.executable, "-m", "bizosctl", "--debug", "gdpr", "find", "-", "--json"],
        input=email + "\n",
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert email not in p.stderr


def test_background_erasure_by_a_worker_logs_no_email(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    import signal

    from test_jobs import Worker, wait_for

    from bizosctl.catalog.operations import describe

    email = _email()
    slug = make_tenant()
    _add(ctl, slug, email, "Worker Subject")
    worker = Worker("operations", "--concurrency", "1").started()
    try:
        r = cli("gdpr", "delete", email, "--yes", "--background", "--json")
        assert r.exit_code == 0, r.output
        op_id = uuid.UUID(json.loads(r.stdout)["operation"])
        wait_for("the erasure to finish", lambda: describe(ctl, op_id).status == "done")
        assert worker.saw("bizosctl:run_operation")
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        worker.finish(timeout=60)
        with ctl.catalog() as s:
            s.execute(text("DELETE FROM procrastinate_jobs WHERE queue_name = 'operations'"))
    assert not any(email in line or "Worker Subject" in line for line in worker.lines)
    assert _find(cli, email).exit_code == 3
    # the sealed e-mail left the operation's params with the request done
    assert "subject_sealed" not in describe(ctl, op_id).params


def test_consent_record_list_withdraw_and_export(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any], tmp_path: Any
) -> None:
    import zipfile

    email = _email()
    slug = make_tenant()
    _add(ctl, slug, email)
    r = cli(
        "gdpr", "consent", "record", email, "--tenant", slug, "--purpose", "marketing",
        "--version", "2", "--source", "web", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = cli("gdpr", "consent", "list", email, "--tenant", slug, "--json")
    (c,) = json.loads(r.stdout)["consents"]
    assert c["granted"] is True and c["version"] == "2" and c["source"] == "web"
    r = cli("gdpr", "consent", "withdraw", email, "--tenant", slug, "--purpose", "marketing")
    assert r.exit_code == 0, r.output
    r = cli("gdpr", "consent", "list", "--tenant", slug, "--json")
    (c,) = json.loads(r.stdout)["consents"]
    assert c["granted"] is False and c["withdrawn_at"]
    r = cli("gdpr", "consent", "withdraw", email, "--tenant", slug, "--purpose", "marketing")
    assert r.exit_code == 3
    r = cli("gdpr", "consent", "record", email, "--tenant", slug, "--purpose", "Bad Purpose")
    assert r.exit_code == 2
    r = cli("gdpr", "consent", "record", _email(), "--tenant", slug, "--purpose", "x")
    assert r.exit_code == 3
    out = tmp_path / "c.zip"
    assert cli("gdpr", "export", email, "--out", str(out)).exit_code == 0
    with zipfile.ZipFile(out) as zf:
        (row,) = json.loads(zf.read(f"tenants/{slug}/consents.json"))
    assert row["purpose"] == "marketing" and row["withdrawn_at"]


def test_every_personal_table_has_a_policy() -> None:
    from tenant_schema import TABLE_NAMES
    from tenant_schema.privacy import BY_TABLE, NOT_PERSONAL

    assert set(BY_TABLE) | set(NOT_PERSONAL) == set(TABLE_NAMES)
    assert not set(BY_TABLE) & set(NOT_PERSONAL)
    for p in BY_TABLE.values():
        assert p.reason and (p.action != "anonymise" or p.set)


def test_pii_stays_in_its_region(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any], tmp_path: Any
) -> None:
    """The person lives in region id only: after find, export and delete, the catalog and the
    global region's shared database hold no e-mail, name or blind index of theirs."""
    email, name = _email(), "Putri Anggraini"
    there = make_tenant(tier="shared", region="id")
    home = make_tenant(tier="shared", region="global")
    _add(ctl, there, email, name)
    _add(ctl, home, _email(), "Someone Else")

    def check() -> None:
        _no_pii(ctl, email, name, _catalog_dump(ctl), _region_dump(ctl, home))

    assert _find(cli, email).exit_code == 0
    check()
    assert cli("gdpr", "export", email, "--out", str(tmp_path / "p.zip")).exit_code == 0
    check()
    assert cli("gdpr", "delete", email, "--yes").exit_code == 0
    check()
    _no_pii(ctl, email, name, _region_dump(ctl, there))


def _break_route(ctl: Control, slug: str) -> tuple[uuid.UUID, str]:
    """Point the tenant at a database that does not exist (as if its server were down)."""
    tid = ctl.route(slug).tenant_id
    with ctl.catalog() as s:
        db = s.execute(text("SELECT database FROM routes WHERE tenant_id = :t"), {"t": tid})
        old = str(db.scalar_one())
        s.execute(text("UPDATE routes SET database = 'gone_db' WHERE tenant_id = :t"), {"t": tid})
    return tid, old


def _mend_route(ctl: Control, tid: uuid.UUID, db: str) -> None:
    with ctl.catalog() as s:
        s.execute(text("UPDATE routes SET database = :d WHERE tenant_id = :t"), {"d": db, "t": tid})


def test_export_partial_then_resumed(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any], tmp_path: Any
) -> None:
    import zipfile

    email = _email()
    a = make_tenant(tier="schema")
    b = make_tenant(tier="isolated", region="id")
    _add(ctl, a, email)
    _add(ctl, b, email)
    out = tmp_path / "p.zip"
    tid, db = _break_route(ctl, b)
    try:
        r = cli("gdpr", "export", email, "--out", str(out), "--format", "csv", "--json")
    finally:
        _mend_route(ctl, tid, db)
    assert r.exit_code == 1
    msg = json.loads(r.stdout)["error"]["message"]
    assert f"{b}:" in msg and "run the same command again" in msg
    assert not out.exists()
    r = cli("gdpr", "export", email, "--out", str(out), "--format", "csv", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sorted(t["tenant"] for t in doc["tenants"]) == sorted([a, b])
    with zipfile.ZipFile(out) as zf:
        assert f"tenants/{b}/members.csv" in zf.namelist()
        assert email in zf.read(f"tenants/{a}/members.csv").decode()
    assert not list(tmp_path.glob(".p.zip.*.parts"))  # the working directory is gone


def test_export_bad_format_exit_2(cli: Callable[..., Any], tmp_path: Any) -> None:
    r = cli("gdpr", "export", _email(), "--out", str(tmp_path / "x.zip"), "--format", "xml")
    assert r.exit_code == 2


def test_erasure_killed_mid_way_resumes(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    import os
    import subprocess
    import sys

    email, name = _email(), "Killed Midway"
    a = make_tenant(tier="schema")
    b = make_tenant(tier="shared", region="id")
    _add(ctl, a, email, name)
    _add(ctl, b, email, name)
    p = subprocess.run(
        [sys.executable, "-m", "bizosctl", "gdpr", "delete", "-", "--yes", "--json"],
        input=email + "\n", capture_output=True, text=True, timeout=120,
        env={**os.environ, "BIZOS_CRASH_AT": "gdpr.delete.erased"},
    )  # fmt: skip
    assert p.returncode == -9  # SIGKILL after the first tenant's erasure committed
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["tenants"]) == 2 and all(t["verified"] for t in doc["tenants"])
    assert _find(cli, email).exit_code == 3
    _no_pii(ctl, email, name, _catalog_dump(ctl), _region_dump(ctl, a), _region_dump(ctl, b))


def test_erasure_during_a_pii_rotation(
    initialised_home: Any, cli: Callable[..., Any], tmp_path: Any
) -> None:
    """A rotation paused after its first target: values under both versions; find and
    erasure search every live version, and the rotation then finishes and retires the old.
    In a home of its own: the rotation goes over every tenant of the home, and the shared
    fleet holds other tests' tenants in states of their own."""
    import os
    import subprocess
    import sys

    from conftest import unique_slug

    from bizosctl.catalog.control import get_control
    from bizosctl.tenancy.provision import create_tenant

    ctl = get_control()

    def make_tenant() -> str:
        slug = unique_slug("r")
        create_tenant(ctl, slug=slug, name=slug, tier="schema", region="global")
        return slug

    email = _email()
    a = make_tenant()
    _add(ctl, a, email, "Rotating Person")
    release = tmp_path / "release"
    child = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "secrets", "rotate", "pii", "--json"],
        env={**os.environ, "BIZOS_PAUSE_AT": "rotate.target.1",
             "BIZOS_PAUSE_RELEASE": str(release)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stderr is not None
        assert child.stderr.readline().strip() == "paused at rotate.target.1"
        ctl.reload_keyring()
        b = make_tenant()
        _add(ctl, b, email, "Rotating Person")  # under the new primary
        assert len(ctl.keyring.versions("pii")) >= 2
        r = _find(cli, email)
        assert r.exit_code == 0, r.output
        assert sorted(t["tenant"] for t in json.loads(r.stdout)["tenants"]) == sorted([a, b])
        r = cli("gdpr", "delete", email, "--yes", "--json")
        assert r.exit_code == 0, r.output
    finally:
        release.touch()
        _out, err = child.communicate(timeout=300)
    assert child.returncode == 0, (_out, err)
    ctl.reload_keyring()
    assert _find(cli, email).exit_code == 3


def test_requests_unknown_status_exit_2(cli: Callable[..., Any]) -> None:
    r = cli("gdpr", "requests", "--status", "pending", "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["message"].startswith("unknown status 'pending'")


def test_unknown_tenant_exit_3(cli: Callable[..., Any], tmp_path: Any) -> None:
    r = cli("gdpr", "export", _email(), "--out", str(tmp_path / "x.zip"), "--tenant", "nosuch")
    assert r.exit_code == 3


def test_email_on_stdin_empty_exit_2(cli: Callable[..., Any]) -> None:
    r = cli("gdpr", "find", "-", "--json")
    assert r.exit_code == 2


def test_owner_email_leaves_no_blind_index_in_the_catalog(ctl: Control) -> None:
    from bizosctl.privacy.subjects import tenants_of
    from bizosctl.tenancy.provision import create_tenant

    email = _email()
    slug = f"o{uuid.uuid4().hex[:10]}"
    create_tenant(ctl, slug=slug, name="Owned", tier="shared", region="id", owner_email=email)
    assert [t.slug for t in tenants_of(ctl, email)] == [slug]  # routed by the gdpr key
    _no_pii(ctl, email, "Owned Person", _catalog_dump(ctl))
    with ctl.catalog() as s:
        assert (
            s.execute(
                text("SELECT owner_email_bidx FROM tenants WHERE slug = :s"), {"s": slug}
            ).scalar_one()
            is None
        )


def test_export_dry_run_writes_and_logs_nothing(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any], tmp_path: Any
) -> None:
    email = _email()
    _add(ctl, make_tenant(), email)

    def count() -> int:
        with ctl.catalog() as s:
            return int(s.execute(text("SELECT count(*) FROM gdpr_requests")).scalar_one())

    before = count()
    out = tmp_path / "d.zip"
    r = cli("gdpr", "export", email, "--out", str(out), "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True and doc["would_export"]["tenants"][0]["rows"] >= 2
    assert not out.exists() and count() == before


def test_erasure_scrubs_the_person_from_digests_and_their_emails(
    ctl: Control, make_tenant: Callable[..., str], cli: Callable[..., Any]
) -> None:
    """A digest names a customer (an overdue invoice) and is e-mailed to the Admin: erasing the
    customer replaces the name inside the kept digest, deletes the e-mails quoting it, and the
    verification pass finds nothing left."""
    import datetime as dt

    from bizosctl.resources.invoices import (
        CustomerCreate,
        InvoiceCreate,
        ItemCreate,
        create_customer,
        create_invoice,
    )

    slug = make_tenant(tier="shared", region="id")
    _add(ctl, slug, _email(), "Ayu Lestari", role="Admin")
    email, name = _email(), "Bambang Sutrisno"
    tid = ctl.route(slug).tenant_id
    day = dt.date(2026, 11, 30)
    with tenant_session(ctl, slug, actor="test") as s:
        cust = create_customer(
            s, tenant_id=tid, data=CustomerCreate(name=name, email=email), ctl=ctl
        )
        item = ItemCreate(description="consulting", quantity=1, unit_price=500000)
        create_invoice(
            s,
            tenant_id=tid,
            data=InvoiceCreate(
                customer_id=cust.id,
                number="INV-9001",
                issued_on=day - dt.timedelta(days=40),
                due_on=day - dt.timedelta(days=10),
                items=[item],
            ),
        )
        s.execute(text("UPDATE invoices SET status = 'sent' WHERE number = 'INV-9001'"))

    def digest_text() -> str:
        r = cli("digest", "show", slug, "--date", day.isoformat(), "--json")
        assert r.exit_code == 0, r.stdout
        return json.dumps(json.loads(r.stdout)["digest"])

    assert cli("digest", "run", "--tenant", slug, "--date", day.isoformat()).exit_code == 0
    assert name in digest_text()
    r = cli("gdpr", "delete", email, "--yes", "--json")
    assert r.exit_code == 0, r.stdout
    (done,) = json.loads(r.stdout)["tenants"]
    assert done["verified"] is True
    assert done["tables"]["digests"]["action"] == "anonymise"
    assert name not in digest_text() and "<erased>" in digest_text()
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        quoting = s.execute(
            text("SELECT count(*) FROM email_messages WHERE context::text ILIKE :n"),
            {"n": f"%{name}%"},
        ).scalar_one()
    assert quoting == 0
