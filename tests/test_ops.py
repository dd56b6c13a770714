"""The operations engine: one store, one start-or-resume rule, resume and cancel by id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import text

from bizosctl.catalog.operations import (
    OperationKind,
    OperationStatus,
    describe,
    start_or_resume,
)
from bizosctl.errors import Busy, InvalidInput
from bizosctl.runners import start_ping


def wait_for(cond, what, deadline_s=60.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def queued_ping(ctl, seconds=0.0):
    with ctl.catalog() as s:
        return start_ping(s, seconds=seconds, status=OperationStatus.QUEUED)


def spawn(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "bizosctl", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ping_runs_in_the_foreground_and_records_its_steps_in_rows(cli):
    r = cli("ops", "ping", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "done" and doc["pong"] is True
    r = cli("ops", "show", doc["operation"], "--json")
    assert r.exit_code == 0, r.stderr
    op = json.loads(r.stdout)["operation"]
    assert op["kind"] == "ops.ping" and op["status"] == "done" and op["finished_at"]
    assert [st["name"] for st in op["steps"]] == ["started", "waited"]
    human = cli("ops", "show", doc["operation"])
    assert "ops.ping" in human.stdout and "waited" in human.stdout


def test_steps_are_rows_not_a_growing_array(ctl):
    """10,000 targets cost 10,000 small rows, not an array rewritten 10,000 times."""
    from bizosctl.catalog.operations import OperationRun

    op_id = queued_ping(ctl)
    with OperationRun(ctl, op_id) as run:
        for i in range(200):
            run.step(f"target:{i}", rewritten=i)
        run.step("target:7", rewritten=70)  # a step written again replaces its row
        assert run.step_data("target:7") == {"rewritten": 70}
        assert len(run.steps("target:")) == 200
        run.finish()
    with ctl.catalog() as s:
        assert s.execute(
            text("select count(*) from operation_steps where op_id = :i"), {"i": op_id}
        ).scalar_one() == 200  # fmt: skip
        columns = s.execute(
            text(
                "select column_name from information_schema.columns "
                "where table_name = 'operations'"
            )
        ).scalars().all()  # fmt: skip
    assert "steps" not in columns


def test_status_is_checked_in_sql(ctl):
    op_id = queued_ping(ctl)
    with pytest.raises(Exception, match="ck_operations_status"), ctl.catalog() as s:
        s.execute(text("update operations set status = 'finished' where id = :i"), {"i": op_id})


def test_a_crashed_operation_is_listed_and_resumed_by_id(cli, run_bizosctl):
    r = run_bizosctl("ops", "ping", "--json", env={"BIZOS_CRASH_AT": "ping.started"})
    assert r.returncode == -9
    r = cli("ops", "list", "--kind", "ops.ping", "--status", "running", "--json")
    ops = json.loads(r.stdout)["operations"]
    dead = [op for op in ops if not op["alive"]]
    assert dead, ops
    op_id = dead[0]["id"]
    shown = cli("ops", "list", "--kind", "ops", env={"COLUMNS": "200"})
    assert "stopped (resumable)" in shown.stdout
    plan = cli("ops", "resume", op_id, "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stderr
    assert json.loads(plan.stdout)["done"] == ["started"]
    r = cli("ops", "resume", op_id, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "done"
    op = json.loads(cli("ops", "show", op_id, "--json").stdout)["operation"]
    assert op["status"] == "done"
    assert [st["name"] for st in op["steps"]] == ["started", "waited"]


def test_unknown_operation_id_is_not_found(cli):
    missing = str(uuid.uuid4())
    for verb in ("show", "resume", "cancel"):
        r = cli("ops", verb, missing)
        assert r.exit_code == 3, (verb, r.stdout, r.stderr)
        assert r.stderr.strip() == f"error: no operation {missing}"


def test_an_operation_id_that_is_not_a_uuid_is_bad_input(cli):
    r = cli("ops", "show", "tenant-acme")
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: 'tenant-acme' is not an operation id (a uuid)"


def test_resuming_or_cancelling_a_finished_operation_is_refused(cli):
    op_id = json.loads(cli("ops", "ping", "--json").stdout)["operation"]
    r = cli("ops", "resume", op_id)
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: operation {op_id} is done: there is nothing to resume"
    r = cli("ops", "cancel", op_id)
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"error: operation {op_id} is done already: there is nothing to cancel"
    )


def test_a_queued_operation_is_cancelled_at_once_and_not_run_later(ctl, cli):
    op_id = queued_ping(ctl)
    dry = cli("ops", "cancel", str(op_id), "--dry-run", "--json")
    assert json.loads(dry.stdout)["cancel"]["how"] == "cancelled before it started"
    assert describe(ctl, op_id).status == "queued"  # the dry run changed nothing
    r = cli("ops", "cancel", str(op_id), "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["cancel"]["status"] == "cancelled"
    assert describe(ctl, op_id).status == "cancelled"
    r = cli("ops", "resume", str(op_id))
    assert r.exit_code == 2 and "is cancelled: there is nothing to resume" in r.stderr


def test_a_running_operation_stops_at_its_next_safe_point_when_cancelled(ctl, cli):
    proc = spawn("ops", "ping", "--seconds", "120", "--json")
    try:

        def live():
            for op in json.loads(cli("ops", "list", "--kind", "ops.ping", "--json").stdout)[
                "operations"
            ]:
                if op["status"] == "running" and op["alive"] and op["pid"] == proc.pid:
                    return op["id"]
            assert proc.poll() is None, proc.communicate()
            return None

        op_id = wait_for(live, "the ping to start")
        r = cli("ops", "cancel", op_id, "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["cancel"]["how"].startswith("requested")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "cancelled"
    op = describe(ctl, uuid.UUID(op_id))
    assert op.status == "cancelled" and op.error == "cancelled by the operator"


def test_a_kind_that_cannot_stop_safely_is_not_cancelled(ctl, cli):
    with ctl.catalog() as s:
        op_id, _ = start_or_resume(
            ctl,
            s,
            kind=OperationKind.TENANT_CREATE,
            target=f"never-{uuid.uuid4().hex[:8]}",
            params={},
            exclusive=True,
        )
    try:
        r = cli("ops", "cancel", str(op_id))
        assert r.exit_code == 2
        assert r.stderr.strip() == (
            "error: a tenant.create operation cannot stop safely once started; let it finish"
        )
    finally:
        with ctl.catalog() as s:
            s.execute(text("delete from operations where id = :i"), {"i": op_id})


def test_start_or_resume_resumes_a_dead_run_and_refuses_a_live_exclusive_one(ctl):
    target = f"t-{uuid.uuid4().hex[:8]}"
    kw = {"kind": OperationKind.PING, "target": target, "exclusive": True}
    with ctl.catalog() as s:
        first, resumed = start_or_resume(ctl, s, params={"seconds": 1.0}, **kw)
    assert not resumed
    with ctl.catalog() as s:
        again, resumed = start_or_resume(ctl, s, params={"seconds": 1.0}, **kw)
    assert (again, resumed) == (first, True)
    with ctl.catalog() as s:
        other, resumed = start_or_resume(ctl, s, params={"seconds": 2.0}, **kw)
    assert other != first and not resumed  # other params: another operation
    with ctl.catalog() as s, pytest.raises(InvalidInput, match="other parameters"):
        start_or_resume(ctl, s, params={"seconds": 3.0}, other_params="refuse", **kw)
    from bizosctl.catalog.operations import OperationRun

    with OperationRun(ctl, first), ctl.catalog() as s, pytest.raises(Busy, match=str(first)):
        start_or_resume(ctl, s, params={"seconds": 1.0}, **kw)
    with ctl.catalog() as s:
        s.execute(text("delete from operations where target = :t"), {"t": target})


def test_sync_is_recorded_then_resumed_by_id(ctl, cli, make_tenant):
    from bizosctl.sync.engine import SyncOptions, record_sync
    from bizosctl.sync.targets import Selection

    opts = SyncOptions(selection=Selection(tenants=[make_tenant(tier="schema")]))
    with ctl.catalog() as s:
        op_id, _ = record_sync(ctl, s, opts, status=OperationStatus.QUEUED)
    assert describe(ctl, op_id).status == "queued"
    r = cli("ops", "resume", str(op_id), "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["operation"] == str(op_id) and doc["ok"] is True
    assert [t["status"] for t in doc["targets"]] == ["unchanged"]
    assert describe(ctl, op_id).status == "done"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--status", "finished"), "--status must be one of queued, running, done"),
        (("--kind", "tenant.fly"), "--kind must be a kind ("),
        (("--since", "yesterday"), "--since must be a duration back from now (2h, 7d)"),
        (("--since", "2999-01-01"), "--since '2999-01-01' is in the future"),
    ],
)
def test_ops_list_bad_filters(cli, args, message):
    r = cli("ops", "list", *args)
    assert r.exit_code == 2, r.stdout
    assert r.stderr.startswith(f"error: {message}")


def test_ops_list_since_filters_by_start(ctl, cli):
    op_id = json.loads(cli("ops", "ping", "--json").stdout)["operation"]
    recent = json.loads(cli("ops", "list", "--since", "1h", "--json").stdout)["operations"]
    assert op_id in [op["id"] for op in recent]
    old = json.loads(
        cli("ops", "list", "--since", "2000-01-01", "--limit", "1000", "--json").stdout
    )
    assert op_id in [op["id"] for op in old["operations"]]


def test_a_crashed_move_is_finished_by_ops_resume(ctl, make_tenant, run_bizosctl, cli):
    from bizosctl.tenancy.sample import load_sample_data

    slug = make_tenant(tier="shared", region="id")
    load_sample_data(ctl, slug)
    first = run_bizosctl(
        "tenant", "move", slug, "--to-tier", "schema", env={"BIZOS_CRASH_AT": "move.capture"}
    )  # fmt: skip
    assert first.returncode == -9, first.stderr
    op_id = json.loads(cli("tenant", "move", slug, "--status", "--json").stdout)["operation"]
    r = cli("ops", "resume", op_id, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "done" and doc["resumed"] is True
    assert ctl.route(slug).tier == "schema" and ctl.route(slug).status == "active"


def test_cancelling_a_running_move_before_its_switch_aborts_it(ctl, make_tenant, cli, tmp_path):
    from bizosctl.tenancy.sample import load_sample_data

    slug = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, slug)
    release = tmp_path / "release"
    proc = spawn(
        "tenant", "move", slug, "--to-tier", "isolated", "--json",
        env={"BIZOS_PAUSE_AT": "move.capture", "BIZOS_PAUSE_RELEASE": str(release)},
    )  # fmt: skip
    try:
        assert proc.stderr.readline().strip() == "paused at move.capture"
        op_id = json.loads(cli("tenant", "move", slug, "--status", "--json").stdout)["operation"]
        r = cli("ops", "cancel", op_id, "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["cancel"]["how"] == "requested: it aborted before its switch"
        release.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err  # the move the script asked for did not happen
    assert json.loads(out)["status"] == "aborted", err
    assert describe(ctl, uuid.UUID(op_id)).status == "aborted"
    route = ctl.route(slug)
    assert route.tier == "schema" and route.status == "active"
