"""``--background``: the operation and its job commit together; a worker runs it."""

from __future__ import annotations

import json
import signal
import uuid

import pytest
from sqlalchemy import text
from test_jobs import Worker, wait_for

from bizosctl.catalog.operations import describe


@pytest.fixture
def operations_queue(ctl):
    """Workers on the default queue; afterwards they are stopped and the queue is empty."""
    workers: list[Worker] = []
    yield workers
    for w in workers:
        if not w.dead():
            w.proc.send_signal(signal.SIGTERM)
        w.finish(timeout=60)
    with ctl.catalog() as s:
        s.execute(text("DELETE FROM procrastinate_jobs WHERE queue_name = 'operations'"))
        s.execute(text("DELETE FROM procrastinate_workers"))


def test_sync_in_the_background_is_run_by_a_worker(ctl, cli, make_tenant, operations_queue):
    slug = make_tenant(tier="schema")
    operations_queue.append(Worker("operations").started())
    r = cli("schema", "sync", "--tenant", slug, "--background", "--json")
    assert r.exit_code == 0, r.stderr
    sub = json.loads(r.stdout)
    assert sub["background"] is True and sub["kind"] == "schema.sync" and sub["warning"] is None
    op_id = uuid.UUID(sub["operation"])
    wait_for("the sync to finish", lambda: describe(ctl, op_id).status == "done")
    assert operations_queue[0].saw(f"job {sub['job']} bizosctl:run_operation")


def test_background_with_no_worker_is_queued_with_a_warning(ctl, cli, operations_queue):
    with ctl.catalog() as s:
        s.execute(text("DELETE FROM procrastinate_workers"))  # none seen recently
    r = cli("ops", "ping", "--background", "--json")
    assert r.exit_code == 0, r.stderr
    sub = json.loads(r.stdout)
    assert "no worker has been seen recently" in sub["warning"]
    assert "bizosctl worker" in r.stderr
    op_id = uuid.UUID(sub["operation"])
    assert describe(ctl, op_id).status == "queued"
    # a worker started later runs it
    operations_queue.append(Worker("operations").started())
    wait_for("the ping to finish", lambda: describe(ctl, op_id).status == "done")


def test_background_refuses_bad_input_before_queueing_anything(ctl, cli):
    with ctl.catalog() as s:
        before = s.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar_one()
    r = cli("schema", "sync", "--to", "nope", "--background")
    assert r.exit_code == 2, r.stdout
    assert "nope" in r.stderr
    with ctl.catalog() as s:
        assert s.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar_one() == before


def test_background_dry_run_queues_nothing(ctl, cli):
    with ctl.catalog() as s:
        before = s.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar_one()
    r = cli("ops", "ping", "--background", "--dry-run", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["dry_run"] is True
    with ctl.catalog() as s:
        assert s.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar_one() == before


def test_move_in_the_background_upgrades_the_tenant_while_it_works(
    ctl, cli, make_tenant, operations_queue
):
    """The seed's "Upgrade to Enterprise" button: queued, then locked, copied, switched."""
    from bizosctl.tenancy.sample import load_sample_data

    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)
    r = cli("tenant", "move", slug, "--to-tier", "isolated", "--background", "--json")
    assert r.exit_code == 0, r.stderr
    sub = json.loads(r.stdout)
    assert sub["kind"] == "tenant.move" and sub["target"] == slug
    op_id = uuid.UUID(sub["operation"])
    assert describe(ctl, op_id).status == "queued"
    status = json.loads(cli("tenant", "move", slug, "--status", "--json").stdout)
    assert status["status"] == "queued" and status["tenant_status"] == "moving"
    # the same request again queues nothing new; another destination is refused
    again = json.loads(
        cli("tenant", "move", slug, "--to-tier", "isolated", "--background", "--json").stdout
    )
    assert again["operation"] == sub["operation"] and again["resumed"] is True
    other = cli("tenant", "move", slug, "--to-tier", "schema", "--background")
    assert other.exit_code == 2 and "has an unfinished move to isolated" in other.stderr
    operations_queue.append(Worker("operations").started())
    wait_for("the move to finish", lambda: describe(ctl, op_id).status == "done", 120)
    route = ctl.route(slug)
    assert route.tier == "isolated" and route.status == "active"


def test_background_goes_with_a_move_or_resume_only(cli, make_tenant):
    slug = make_tenant(tier="schema")
    r = cli("tenant", "move", slug, "--status", "--background")
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --background goes with a move or --resume, not --status"


def test_create_and_delete_in_the_background(ctl, cli, operations_queue):
    from conftest import unique_slug

    slug = unique_slug("bg")
    r = cli(
        "tenant", "create", slug, "--name", "Bg", "--region", "global", "--tier", "isolated",
        "--background", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    created = uuid.UUID(json.loads(r.stdout)["operation"])
    assert ctl.route(slug).status == "provisioning"
    operations_queue.append(Worker("operations").started())
    wait_for("the create to finish", lambda: describe(ctl, created).status == "done", 120)
    assert ctl.route(slug).status == "active"
    r = cli("tenant", "delete", slug, "--background", "--json")
    assert r.exit_code == 2 and "pass --yes" in r.stdout + r.stderr  # still destructive
    r = cli("tenant", "delete", slug, "--yes", "--background", "--json")
    assert r.exit_code == 0, r.stderr
    deleted = uuid.UUID(json.loads(r.stdout)["operation"])
    wait_for("the delete to finish", lambda: describe(ctl, deleted).status == "done", 120)
    assert cli("tenant", "show", slug).exit_code == 3


def test_pii_rotation_in_the_background(ctl, cli, operations_queue):
    r = cli("secrets", "rotate", "pii", "--background", "--json")
    assert r.exit_code == 0, r.stderr
    sub = json.loads(r.stdout)
    assert sub["kind"] == "secrets.rotate" and sub["target"] == "pii"
    op_id = uuid.UUID(sub["operation"])
    operations_queue.append(Worker("operations").started())
    wait_for("the rotation to finish", lambda: describe(ctl, op_id).status == "done", 180)
