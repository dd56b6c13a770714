"""Every secrets rotation is an operation: killed (real SIGKILL) at a step, it is listed and
finished by ``ops resume ID`` or by running the same command again; a second run while one is
alive is Busy; a partial PII rotation is a report with ``ok: false``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from bizosctl.security.fields import key_version
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data


@pytest.fixture
def home(initialised_home):
    """An initialised home of this test's own (a copy of the worker's template)."""
    from bizosctl.catalog.control import get_control

    return get_control()


def dead_operation(cli, kind):
    """The id of the newest operation of ``kind`` that is open with no process running it."""
    r = cli("ops", "list", "--kind", kind, "--status", "running", "--json")
    assert r.exit_code == 0, r.stderr
    dead = [op for op in json.loads(r.stdout)["operations"] if not op["alive"]]
    assert dead, r.stdout
    return dead[0]["id"]


def shown(cli, op_id):
    r = cli("ops", "show", op_id, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)["operation"]


def step_names(cli, op_id):
    return [st["name"] for st in shown(cli, op_id)["steps"]]


def open_rotations(ctl, kind):
    with ctl.catalog() as s:
        return s.execute(
            text(
                "select count(*) from operations "
                "where kind = :k and status in ('queued', 'running')"
            ),
            {"k": kind},
        ).scalar_one()


def pii_versions(ctl, slugs):
    out = set()
    for slug in slugs:
        with tenant_session(ctl, slug, actor="t", read_only=True) as s:
            out |= {
                key_version(v) for v in s.execute(text("select email_enc from members")).scalars()
            }
    return out  # fmt: skip


# -- jwt ---------------------------------------------------------------------------------------
def test_jwt_rotation_killed_after_its_new_key_is_finished_by_ops_resume(ctl, cli, run_bizosctl):
    r = run_bizosctl(
        "secrets", "rotate", "jwt", "--json", env={"BIZOS_CRASH_AT": "rotate.jwt.new-key"}
    )
    assert r.returncode == -9, r.stderr  # fmt: skip
    op_id = dead_operation(cli, "secrets.jwt")
    op = shown(cli, op_id)
    assert (op["kind"], op["target"], op["params"]) == ("secrets.jwt", "jwt", {"fresh_key": False})
    assert step_names(cli, op_id) == ["new-key"]
    version = op["steps"][0]["data"]["version"]
    r = cli("ops", "resume", op_id, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["operation"] == op_id and doc["resumed"] is True
    assert doc["kid"] == f"jwt-v{version}"
    op = shown(cli, op_id)
    assert op["status"] == "done" and [st["name"] for st in op["steps"]] == ["new-key", "switched"]
    assert open_rotations(ctl, "secrets.jwt") == 0


def test_jwt_rotation_killed_after_the_switch_is_finished_by_running_it_again(
    ctl, cli, run_bizosctl
):
    r = run_bizosctl(
        "secrets", "rotate", "jwt", "--json", env={"BIZOS_CRASH_AT": "rotate.jwt.switched"}
    )
    assert r.returncode == -9, r.stderr  # fmt: skip
    op_id = dead_operation(cli, "secrets.jwt")
    r = run_bizosctl("secrets", "rotate", "jwt", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["operation"] == op_id and doc["resumed"] is True  # not a second rotation
    assert shown(cli, op_id)["status"] == "done"
    assert open_rotations(ctl, "secrets.jwt") == 0


def test_a_second_jwt_rotation_while_one_runs_is_busy_naming_it(ctl, cli, tmp_path):
    release = tmp_path / "release"
    child = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "secrets", "rotate", "jwt", "--json"],
        env={
            **os.environ,
            "BIZOS_PAUSE_AT": "rotate.jwt.new-key",
            "BIZOS_PAUSE_RELEASE": str(release),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        line = child.stderr.readline()  # the child writes it, then waits for the file
        assert line.strip() == "paused at rotate.jwt.new-key", line
        r = cli("ops", "list", "--kind", "secrets.jwt", "--status", "running", "--json")
        alive = [op for op in json.loads(r.stdout)["operations"] if op["alive"]]
        assert len(alive) == 1, r.stdout
        op_id = alive[0]["id"]
        r = cli("secrets", "rotate", "jwt")
        assert r.exit_code == 1, r.stdout
        assert r.stderr.strip() == (
            f"error: secrets.jwt of jwt is running in another process (operation {op_id})"
        )
        r = cli("ops", "resume", op_id)
        assert r.exit_code == 1 and "is running in another process" in r.stderr
    finally:
        release.touch()
        out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert json.loads(out)["operation"] == op_id
    assert shown(cli, op_id)["status"] == "done"


# -- db-credentials ----------------------------------------------------------------------------
def test_db_credentials_killed_at_each_step_is_finished_by_ops_resume(ctl, cli, run_bizosctl):
    dry = cli("secrets", "rotate", "db-credentials", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["would_reseal"] > 0
    assert plan["would_reseal"] == sum(plan["values_by_version"].values())
    assert plan["would_resume"] == []
    human = cli("secrets", "rotate", "db-credentials", "--dry-run")
    assert f"would make db-credentials v{plan['new_version']}, re-seal" in human.stdout
    for point, done in (
        ("rotate.db-credentials.new-key", ["new-key"]),
        ("rotate.db-credentials.resealed", ["new-key", "resealed"]),
    ):
        r = run_bizosctl(
            "secrets", "rotate", "db-credentials", "--json", env={"BIZOS_CRASH_AT": point}
        )
        assert r.returncode == -9, r.stderr
        op_id = dead_operation(cli, "secrets.db-credentials")
        assert step_names(cli, op_id) == done
        again = json.loads(cli("secrets", "rotate", "db-credentials", "--dry-run", "--json").stdout)
        assert again["would_resume"] == [op_id]
        r = cli("ops", "resume", op_id, "--json")
        assert r.exit_code == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["operation"] == op_id and doc["resumed"] is True
        assert doc["resealed"] == plan["would_reseal"] and doc["retired"]
        assert shown(cli, op_id)["status"] == "done"
        assert step_names(cli, op_id) == ["new-key", "resealed"]
    assert open_rotations(ctl, "secrets.db-credentials") == 0
    # every sealed value still opens: the servers are reachable through them
    ctl.reload_keyring()
    assert cli("secrets", "list", "--json").exit_code == 0
    assert run_bizosctl("region", "list", "--json").returncode == 0


# -- master key --------------------------------------------------------------------------------
def test_master_key_killed_at_each_step_is_finished_and_records_what_happened(
    home, cli, run_bizosctl
):
    from bizosctl.catalog.control import get_control, reset_controls
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="mk-ops", name="M", tier="schema", region="global")
    load_sample_data(home, "mk-ops")
    before = pii_versions(home, ["mk-ops"])
    key_file = home.settings.key_file
    nxt = key_file.with_name("master.key.next")
    original = key_file.read_text()
    # 1. killed after it wrote master.key.next, before anything was re-wrapped: running the
    # command again resumes the operation with that key
    r = run_bizosctl(
        "secrets", "rotate", "master-key", "--yes", env={"BIZOS_CRASH_AT": "rotate.master.new-key"}
    )
    assert r.returncode == -9, r.stderr
    assert nxt.exists() and key_file.read_text() == original
    op_id = dead_operation(cli, "secrets.master-key")
    new_id = shown(cli, op_id)["steps"][0]["data"]["master"]
    r = run_bizosctl("secrets", "rotate", "master-key", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["operation"], doc["resumed"], doc["master"]) == (op_id, True, new_id)
    assert doc["rewrapped"] == 7 and doc["installed"] == "key file replaced"
    assert not nxt.exists() and key_file.read_text() != original
    assert step_names(cli, op_id) == ["new-key", "rewrapped", "installed"]
    # 2. killed after the catalog commit: the next process to open the keyring installs
    # master.key.next, and `ops resume` records that and closes the operation
    second = key_file.read_text()
    r = run_bizosctl(
        "secrets",
        "rotate",
        "master-key",
        "--yes",
        env={"BIZOS_CRASH_AT": "rotate.master.rewrapped"},
    )
    assert r.returncode == -9, r.stderr
    op2 = dead_operation(cli, "secrets.master-key")
    assert op2 != op_id and nxt.exists()
    r = run_bizosctl("ops", "resume", op2, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["installed"] == "installed from master.key.next when the keyring was next opened"
    assert not nxt.exists() and key_file.read_text() != second
    op = shown(cli, op2)
    assert op["status"] == "done"
    assert [st["name"] for st in op["steps"]] == ["new-key", "rewrapped", "installed"]
    assert open_rotations(home, "secrets.master-key") == 0
    reset_controls()
    ctl = get_control()
    assert pii_versions(ctl, ["mk-ops"]) == before  # every value still decrypts
    with tenant_session(ctl, "mk-ops", actor="t", read_only=True) as s:
        assert s.execute(text("select count(*) from members")).scalar_one() == 5


def test_master_key_dry_run_shows_the_plan(home, cli):
    r = cli("secrets", "rotate", "master-key", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True and plan["data_keys"] == 7
    assert plan["from"].startswith("local:") and plan["staged_as"].endswith("master.key.next")


# -- pii ---------------------------------------------------------------------------------------
def test_pii_killed_at_a_target_is_finished_by_ops_resume_one_step_row_per_target(
    home, cli, run_bizosctl
):
    from bizosctl.sync.targets import list_targets
    from bizosctl.tenancy.provision import create_tenant

    slugs = ["r-one", "r-two", "r-three"]
    for slug in slugs:
        create_tenant(home, slug=slug, name=slug, tier="schema", region="global")
        load_sample_data(home, slug)
    targets = list_targets(home)
    r = run_bizosctl(
        "secrets",
        "rotate",
        "pii",
        "--batch",
        "3",
        "--json",
        env={"BIZOS_CRASH_AT": "rotate.target.1"},
    )
    assert r.returncode == -9, r.stderr
    op_id = dead_operation(cli, "secrets.rotate")
    op = shown(cli, op_id)
    assert op["params"] == {
        "batch": 3,
        "workers": None,
        "fresh_key": False,
        "quarantine_action": "keep",
        "parallel": 1,
    }
    names = [st["name"] for st in op["steps"]]
    assert names[:2] == ["new-key", "primary"] and len(names) == 3
    assert names[2].startswith("target:")
    home.reload_keyring()
    assert pii_versions(home, slugs) <= {1, 2}  # part done (the first target may be empty)
    r = cli("ops", "resume", op_id, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["error"] is None
    assert (doc["operation"], doc["resumed"], doc["version"], doc["retired"]) == (
        op_id,
        True,
        2,
        [1],
    )
    home.reload_keyring()
    assert pii_versions(home, slugs) == {2}
    op = shown(cli, op_id)
    assert op["status"] == "done"
    steps = [st["name"] for st in op["steps"]]
    assert steps[:2] == ["new-key", "primary"] and steps[-1] == "retire"
    assert sorted(steps[2:-1]) == sorted(
        f"target:{t.server}/{t.database}/{t.schema}" for t in targets
    )
    with home.catalog() as s:  # one row per target, not an array in the operation
        rows = s.execute(
            text("select count(*) from operation_steps where op_id = :i and name like 'target:%'"),
            {"i": op_id},
        ).scalar_one()  # fmt: skip
    assert rows == len(targets)
    human = cli("ops", "show", op_id)
    assert "retire" in human.stdout and "new-key" in human.stdout


def test_pii_partial_failure_is_a_report_with_ok_false_and_exit_1(home, cli):
    from bizosctl.catalog.operations import add_operation, mark_cancelled
    from bizosctl.sync.targets import list_targets
    from bizosctl.tenancy.provision import create_tenant

    for slug in ("pf-moving", "pf-still"):
        create_tenant(home, slug=slug, name=slug, tier="schema", region="global")
        load_sample_data(home, slug)
    [t] = [t for t in list_targets(home) if t.tenant == "pf-moving"]
    where = {"server": t.server, "database": t.database, "schema": t.schema}
    with home.catalog() as s:  # a move holding the tenant (as a live one would)
        move = add_operation(
            s, kind="tenant.move", target="pf-moving", params={"source": where, "target": where}
        )
    try:
        r = cli("secrets", "rotate", "pii", "--json")
        assert r.exit_code == 1, r.stderr
        doc = json.loads(r.stdout)  # the whole report, one JSON document
        assert doc["ok"] is False and doc["skipped"] == [t.label]
        assert doc["error"].startswith("tenants moving, not rotated:")
        assert doc["retired"] == [] and doc["quarantined"] == [] and doc["left"] == {}
        assert doc["version"] == 2 and doc["rows_rewritten"] > 0
        op = shown(cli, doc["operation"])
        assert op["status"] == "failed" and op["error"] == doc["error"]
        human = cli("secrets", "rotate", "pii")
        assert human.exit_code == 1
        assert "incomplete" in human.stdout and "not rotated (moving)" in human.stdout
        assert human.stderr.strip().startswith("error: tenants moving, not rotated:")
    finally:
        mark_cancelled(home, move, "test over")
    r = cli("secrets", "rotate", "pii", "--json")  # after the move: run it again
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and 1 in doc["retired"] and doc["skipped"] == []


def test_pii_rotation_busy_while_one_runs(home, cli, tmp_path):
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="busy-pii", name="B", tier="schema", region="global")
    release = tmp_path / "release"
    child = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "secrets", "rotate", "pii", "--json"],
        env={**os.environ, "BIZOS_PAUSE_AT": "rotate.new-key", "BIZOS_PAUSE_RELEASE": str(release)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stderr is not None
        assert child.stderr.readline().strip() == "paused at rotate.new-key"
        r = cli("secrets", "rotate", "pii", "--json")
        assert r.exit_code == 1
        assert "secrets.rotate of pii is running in another process (operation " in r.stderr
    finally:
        release.touch()
        out, _err = child.communicate(timeout=120)
    assert child.returncode == 0, _err
    assert json.loads(out)["ok"] is True


# -- db-password -------------------------------------------------------------------------------
def test_db_password_killed_after_its_switch_is_finished_by_ops_resume(
    ctl, make_tenant, cli, run_bizosctl
):
    slug = make_tenant(tier="isolated")
    before = ctl.route(slug).role
    r = run_bizosctl(
        "secrets", "rotate", "db-password", "--tenant", slug, "--grace", "1h",
        env={"BIZOS_CRASH_AT": "rotate.db-password.switched"},
    )  # fmt: skip
    assert r.returncode == -9, r.stderr
    op_id = dead_operation(cli, "secrets.db-password")
    assert step_names(cli, op_id)[-1] == "switched"
    r = cli("ops", "resume", op_id, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["operation"] == op_id and doc["retired"] == [before]
    assert [x["tenant"] for x in doc["rotated"]] == [slug]
    assert shown(cli, op_id)["status"] == "done"
    assert open_rotations(ctl, "secrets.db-password") == 0


def test_a_queued_pii_rotation_runs_by_id_and_a_running_one_cancels_between_targets(
    home, cli, tmp_path
):
    from bizosctl.catalog.operations import OperationStatus
    from bizosctl.security.rotation import PiiRotationParams, record_pii_rotation
    from bizosctl.tenancy.provision import create_tenant

    for slug in ("q-one", "q-two"):
        create_tenant(home, slug=slug, name=slug, tier="schema", region="global")
        load_sample_data(home, slug)
    # recorded for a worker (--background): nothing runs until someone resumes it
    with home.catalog() as s:
        op_id, resumed = record_pii_rotation(
            home, s, PiiRotationParams(batch=2, workers=0), status=OperationStatus.QUEUED
        )
    assert resumed is False
    dry = json.loads(cli("secrets", "rotate", "pii", "--dry-run", "--json").stdout)
    assert dry["would_resume"] == [str(op_id)] and dry["would_rewrite"] == 26
    assert shown(cli, str(op_id))["status"] == "queued"
    r = cli("ops", "resume", str(op_id), "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["resumed"] is False and doc["retired"] == [1]
    # a running rotation asked to stop stops before its next target
    release = tmp_path / "release"
    pause = {"BIZOS_PAUSE_AT": "rotate.target.1", "BIZOS_PAUSE_RELEASE": str(release)}
    child = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "secrets", "rotate", "pii", "--json"],
        env={**os.environ, **pause},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stderr is not None
        assert child.stderr.readline().strip() == "paused at rotate.target.1"
        running = dead_or_live(cli, "secrets.rotate")
        r = cli("ops", "cancel", running, "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["cancel"]["how"] == "requested: it stops between two targets"
    finally:
        release.touch()
        out, err = child.communicate(timeout=120)
    assert child.returncode == 1, err  # the report, ok: false
    doc = json.loads(out)
    assert doc["ok"] is False and doc["cancelled"] is True and doc["operation"] == running
    op = shown(cli, running)
    assert op["status"] == "cancelled"
    assert open_rotations(home, "secrets.rotate") == 0


def dead_or_live(cli, kind):
    r = cli("ops", "list", "--kind", kind, "--status", "running", "--json")
    [op] = json.loads(r.stdout)["operations"]
    return op["id"]
