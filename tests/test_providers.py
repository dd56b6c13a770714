"""Isolated tenants on Neon and Supabase, against loopback fakes of their APIs that really make
a database per project on a TCP PostgreSQL (one fake and one cluster for the module)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from bizosctl.config import reset_settings
from tests.conftest import unique_slug
from tests.fakes.base import Backing, Fault
from tests.fakes.neon import FakeNeon
from tests.fakes.supabase import ORG, FakeSupabase

REGION = "jkt"  # on neon, aws-ap-southeast-1
SB_REGION = "sgp"  # on supabase, ap-southeast-1


@pytest.fixture(scope="module")
def backing(module_tcp_cluster: int) -> Backing:
    return Backing(module_tcp_cluster)


@pytest.fixture(scope="module")
def neon(backing: Backing) -> Iterator[FakeNeon]:
    fake = FakeNeon(backing)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def supabase(backing: Backing) -> Iterator[FakeSupabase]:
    fake = FakeSupabase(backing)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def cloud(fleet: Any, neon: FakeNeon, supabase: FakeSupabase) -> Iterator[dict[str, str]]:
    """Settings pointing at the fakes (loopback: no TLS there, SCRAM still required), and the
    two cloud regions; the session fleet is left as it was found."""
    env = {
        "BIZOS_NEON_API_KEY": FakeNeon.token,
        "BIZOS_NEON_API_URL": neon.base_url,
        "BIZOS_NEON_SSLMODE": "disable",
        "BIZOS_SUPABASE_TOKEN": FakeSupabase.token,
        "BIZOS_SUPABASE_API_URL": supabase.url,
        "BIZOS_SUPABASE_SSLMODE": "disable",
        "BIZOS_PROVIDER_POLL_INTERVAL": "0.01",
        "BIZOS_PROVIDER_BACKOFF": "0.01",
        "BIZOS_PROVIDER_TIMEOUT": "5",
        "BIZOS_PROVIDER_READY_TIMEOUT": "20",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings()
    from typer.testing import CliRunner

    from bizosctl.cli.main import app

    runner = CliRunner()
    for args in (
        ["region", "add", REGION, "--provider", "neon", "--provider-region", "aws-ap-southeast-1"],
        ["region", "add", SB_REGION, "--provider", "supabase", "--provider-region",
         "ap-southeast-1", "--org", ORG],
    ):  # fmt: skip
        r = runner.invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    yield env
    from bizosctl.catalog.control import get_control

    with get_control().catalog() as s:  # what the module added goes: tenants, servers, regions
        for region in (REGION, SB_REGION):
            s.execute(text("DELETE FROM tenants WHERE region = :r"), {"r": region})
            s.execute(text("DELETE FROM schema_targets WHERE region = :r"), {"r": region})
            s.execute(text("DELETE FROM servers WHERE region = :r"), {"r": region})
            s.execute(text("DELETE FROM regions WHERE name = :r"), {"r": region})
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings()


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _create(cli: Any, slug: str, region: str = REGION, env: dict[str, str] | None = None) -> Any:
    return cli("tenant", "create", slug, "--name", slug, "--region", region, "--tier",
               "isolated", "--json", env=env)  # fmt: skip


def _create_dry_run(cli: Any, slug: str) -> Any:
    return cli("tenant", "create", slug, "--name", slug, "--region", REGION, "--tier",
               "isolated", "--dry-run", "--json")  # fmt: skip


def _op_of(ctl: Any, slug: str) -> Any:
    with ctl.catalog() as s:
        return s.execute(
            text(
                "SELECT o.id, o.status, o.error FROM tenants t JOIN operations o "
                "ON o.id = t.operation_id WHERE t.slug = :s AND t.status <> 'deleted'"
            ),
            {"s": slug},
        ).one()


def _projects_named(neon: FakeNeon, slug: str) -> list[Any]:
    return [p for p in neon.projects.values() if p.name.startswith(f"bizos-{slug}-")]


# -- region add -------------------------------------------------------------------------------
def test_region_add_bad_token_exit_2_nothing_recorded(cloud, cli, ctl):
    r = cli("region", "add", "jkt2", "--provider", "neon", "--provider-region",
            "aws-ap-southeast-1", env={**cloud, "BIZOS_NEON_API_KEY": "wrong"})  # fmt: skip
    assert r.exit_code == 2
    assert "neon refused the token in BIZOS_NEON_API_KEY (401" in r.output
    assert "wrong" not in r.output
    assert cli("region", "show", "jkt2").exit_code == 3


def test_region_add_missing_token_exit_2(cloud, cli):
    r = cli("region", "add", "jkt2", "--provider", "supabase", "--provider-region",
            "ap-southeast-1", "--org", ORG, env={**cloud, "BIZOS_SUPABASE_TOKEN": ""})  # fmt: skip
    assert r.exit_code == 2
    assert "BIZOS_SUPABASE_TOKEN is not set: supabase needs an API token" in r.output
    assert cli("region", "show", "jkt2").exit_code == 3


def test_region_add_unknown_provider_region_lists_valid_ones(cloud, cli):
    r = cli("region", "add", "jkt2", "--provider", "neon", "--provider-region", "ap-jakarta")
    assert r.exit_code == 2
    assert (
        "neon has no region 'ap-jakarta'; valid: aws-ap-southeast-1, aws-eu-central-1, "
        "aws-us-east-2" in r.output
    )
    r = cli("region", "add", "jkt2", "--provider", "supabase", "--provider-region",
            "ap-southeast-3", "--org", ORG)  # fmt: skip
    assert r.exit_code == 2
    assert "supabase has no region 'ap-southeast-3'; valid: ap-southeast-1" in r.output
    assert cli("region", "show", "jkt2").exit_code == 3


def test_region_add_provider_needs_provider_region(cloud, cli):
    r = cli("region", "add", "jkt2", "--provider", "neon")
    assert r.exit_code == 2
    assert "a cloud region needs both --provider and --provider-region" in r.output


def test_region_add_dry_run_records_nothing(cloud, cli, neon):
    plan = _json(cli("region", "add", "jkt2", "--provider", "neon", "--provider-region",
                     "aws-eu-central-1", "--dry-run", "--json"))  # fmt: skip
    assert plan["provider_region"] == "aws-eu-central-1"
    assert cli("region", "show", "jkt2").exit_code == 3


def test_cloud_region_takes_isolated_tenants_only(cloud, cli):
    r = cli("tenant", "create", "acme-shared", "--name", "A", "--region", REGION, "--tier",
            "schema")  # fmt: skip
    assert r.exit_code == 2
    assert "region 'jkt' is on neon: only --tier isolated tenants live there" in r.output


# -- the whole path ---------------------------------------------------------------------------
def test_neon_tenant_create_query_delete(cloud, cli, ctl, neon, backing):
    slug = unique_slug("n")
    plan = _json(_create_dry_run(cli, slug))
    assert plan["server"] == f"{REGION}-1" and not _projects_named(neon, slug)
    out = _json(_create(cli, slug))
    assert out["tier"] == "isolated"
    op_id, status, _ = _op_of(ctl, slug)
    assert status == "done"
    (project,) = _projects_named(neon, slug)
    assert project.name.endswith(op_id.hex)  # a lost reply is found by its operation
    assert project.region_id == "aws-ap-southeast-1"
    route = ctl.route(slug)
    assert route.server == f"{REGION}-1-{slug}"
    assert ctl.server(route.server).project_id == project.id
    assert route.database in backing.databases()
    rows = _json(cli("tenant", "query", slug, "SELECT slug FROM tenant_state", "--json"))
    assert rows["rows"] == [[slug]]
    shown = _json(cli("region", "show", REGION, "--json"))
    assert {"name": f"{REGION}-1", "provider": "neon",
            "url": "neon api, region aws-ap-southeast-1"} in shown["servers"]  # fmt: skip
    assert f"{REGION}-1-{slug}" in {s["name"] for s in shown["servers"]}
    doctor = json.loads(cli("doctor", "--json").stdout)
    failing = [c for c in doctor["checks"] if not c["ok"]]
    assert not [c for c in failing if REGION in json.dumps(c) or slug in json.dumps(c)], failing
    synced = cli("schema", "sync", "--tenant", slug, "--json")
    assert synced.exit_code == 0, synced.output
    assert slug in synced.stdout
    # the application's role is not the project owner and does not bypass RLS
    assert backing.rows(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s", (route.role,)
    ) == [(False,)]
    assert "neon project" in json.dumps(_json(cli("tenant", "delete", slug, "--dry-run", "--json")))
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"] is True
    assert project.id in neon.deleted
    assert route.database not in backing.databases()
    with ctl.catalog() as s:
        assert (
            s.execute(
                text("SELECT count(*) FROM servers WHERE name = :n"), {"n": route.server}
            ).scalar_one()
            == 0
        )


def test_supabase_tenant_create_query_delete(cloud, cli, ctl, supabase, backing):
    slug = unique_slug("s")
    _json(_create(cli, slug, SB_REGION))
    (project,) = [p for p in supabase.projects.values() if p.name.startswith(f"bizos-{slug}-")]
    assert project.region == "ap-southeast-1"
    assert supabase.count("GET", f"/v1/projects/{project.ref}/health") == 2  # COMING_UP, then up
    route = ctl.route(slug)
    assert route.database in backing.databases()
    rows = _json(cli("tenant", "query", slug, "SELECT slug FROM tenant_state", "--json"))
    assert rows["rows"] == [[slug]]
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"] is True
    assert project.ref in supabase.deleted
    assert route.database not in backing.databases()


# -- faults -----------------------------------------------------------------------------------
def test_rate_limited_create_waits_and_retries(cloud, cli, ctl, neon):
    slug = unique_slug("r")
    neon.fail("POST", "/api/v2/projects", Fault(429, {"message": "too many"}, retry_after="1"))
    before = neon.count("POST", "/api/v2/projects")
    _json(_create(cli, slug))
    assert neon.count("POST", "/api/v2/projects") - before == 2
    assert len(_projects_named(neon, slug)) == 1
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]


def test_5xx_back_off_then_fail_then_resume_past_a_timeout(cloud, cli, ctl, neon):
    slug = unique_slug("f")
    neon.fail("POST", "/api/v2/projects", *[Fault(503)] * 6)  # six tries spent: it fails
    r = _create(cli, slug)
    assert r.exit_code == 1
    assert "neon API POST projects failed 6 times (last: 503 injected)" in r.output
    op_id, status, error = _op_of(ctl, slug)
    assert (status, "503" in error) == ("failed", True)
    assert not _projects_named(neon, slug)
    # the same command resumes the same operation; a poll that times out is tried again
    neon.fail("GET", "/api/v2/projects/", Fault(200, delay=1.5))
    _json(_create(cli, slug, env={**cloud, "BIZOS_PROVIDER_TIMEOUT": "0.5"}))
    assert not neon.faults[("GET", "/api/v2/projects/")]  # it was asked, timed out, asked again
    assert _op_of(ctl, slug)[:2] == (op_id, "done")
    assert len(_projects_named(neon, slug)) == 1
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]


@pytest.mark.parametrize("provider", ["neon", "supabase"])
def test_create_reply_lost_in_a_run_is_found_not_sent_again(
    cloud, cli, ctl, neon, supabase, provider
):
    import threading

    fake, region, path = {
        "neon": (neon, REGION, "/api/v2/projects"),
        "supabase": (supabase, SB_REGION, "/v1/projects"),
    }[provider]
    slug = unique_slug("l")
    release = fake.hold[("POST", path)] = threading.Event()
    posts = fake.count("POST", path)
    try:  # the project is made, its reply comes after the client's timeout
        _json(_create(cli, slug, region, env={**cloud, "BIZOS_PROVIDER_TIMEOUT": "0.3"}))
    finally:
        del fake.hold[("POST", path)]
        release.set()
    assert fake.count("POST", path) - posts == 1
    assert len([p for p in fake.projects.values() if p.name.startswith(f"bizos-{slug}-")]) == 1
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]


def test_never_ready_fails_at_deadline_and_orphans_show_it(cloud, cli, ctl, neon):
    slug = unique_slug("d")
    neon.ready_polls = 10**9
    try:
        r = _create(cli, slug, env={**cloud, "BIZOS_PROVIDER_READY_TIMEOUT": "0.3"})
    finally:
        neon.ready_polls = 1
    assert r.exit_code == 1, r.output
    assert "was not ready within 0.3s" in r.output
    op_id, status, _ = _op_of(ctl, slug)
    assert status == "failed"
    (project,) = _projects_named(neon, slug)
    shown = _json(cli("ops", "show", str(op_id), "--json"))  # the progress while it waited
    assert shown["operation"]["progress"]["note"] == (
        f"neon project {project.id}: 2 operation(s) running"
    )
    r = cli("provider", "orphans", "--json")
    assert r.exit_code == 1
    (orphan,) = [p for p in json.loads(r.stdout)["projects"] if p["project_id"] == project.id]
    assert orphan["deletable"] is False and "stuck provisioning" in orphan["reason"]
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]
    assert project.id in neon.deleted


def test_project_deleted_by_hand_before_tenant_delete(cloud, cli, ctl, neon):
    slug = unique_slug("h")
    _json(_create(cli, slug))
    (project,) = _projects_named(neon, slug)
    with neon.lock:  # someone deletes it in the Neon console
        del neon.projects[project.id]
        neon.backing.drop_owner(project.role)
    r = cli("provider", "orphans", "--json")
    assert r.exit_code == 1
    assert {"slug": slug, "server": f"{REGION}-1", "provider": "neon",
            "project_id": project.id} in json.loads(r.stdout)["missing"]  # fmt: skip
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]
    r = cli("provider", "orphans", "--json")
    assert slug not in r.stdout


def test_cli_killed_between_request_and_reply_resumes_without_second_project(cloud, cli, ctl, neon):
    import threading

    slug = unique_slug("k")
    release = neon.hold[("POST", "/api/v2/projects")] = threading.Event()
    neon.held.clear()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "tenant", "create", slug, "--name", slug,
         "--region", REGION, "--tier", "isolated"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert neon.held.wait(60), "the create request never arrived"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        del neon.hold[("POST", "/api/v2/projects")]
        release.set()
    assert len(_projects_named(neon, slug)) == 1  # made, but its reply was never read
    posts = neon.count("POST", "/api/v2/projects")
    _json(_create(cli, slug))
    assert neon.count("POST", "/api/v2/projects") == posts  # found by its name, not made again
    assert len(_projects_named(neon, slug)) == 1
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]


# -- orphans ----------------------------------------------------------------------------------
def test_orphans_delete_removes_projects_of_no_tenant(cloud, cli, neon):
    with neon.lock:
        _, body = neon._create({"name": f"bizos-ghost-{'ab' * 16}",
                                     "region_id": "aws-ap-southeast-1"})  # fmt: skip
    ghost = body["project"]["id"]
    with neon.lock:
        neon._create({"name": "someone-elses", "region_id": "aws-ap-southeast-1"})
    r = cli("provider", "orphans", "--json")
    assert r.exit_code == 1
    found = {p["project_id"]: p for p in json.loads(r.stdout)["projects"]}
    assert found[ghost]["reason"] == "no tenant" and found[ghost]["deletable"]
    assert all(p["name"].startswith("bizos-") for p in found.values())
    r = cli("provider", "orphans", "--delete")
    assert r.exit_code == 2
    assert ghost in neon.projects
    assert cli("provider", "orphans", "--delete", "--dry-run").exit_code == 1
    assert ghost in neon.projects
    out = json.loads(cli("provider", "orphans", "--delete", "--yes", "--json").stdout)
    assert ghost in out["deleted"]
    assert ghost not in neon.projects
    assert any(p.name == "someone-elses" for p in neon.projects.values())


# -- moves, rotation, schema sync ------------------------------------------------------------
def test_move_into_neon_and_back_out(cloud, cli, ctl, neon, make_tenant):
    slug = make_tenant(tier="schema")
    _json(cli("tenant", "query", slug, "INSERT INTO projects (tenant_id, name) SELECT tenant_id, "
              "'p1' FROM tenant_state RETURNING name", "--write", "--json"))  # fmt: skip
    moved = _json(cli("tenant", "move", slug, "--to-tier", "isolated", "--to-region", REGION,
                      "--residency-change", "enterprise plan", "--json"))  # fmt: skip
    (project,) = _projects_named(neon, slug)
    route = ctl.route(slug)
    assert (route.tier, route.region, route.server) == ("isolated", REGION, f"{REGION}-1-{slug}")
    assert moved["target"]["server"] == route.server  # the project made for the move
    rows = _json(cli("tenant", "query", slug, "SELECT name FROM projects", "--json"))
    assert rows["rows"] == [["p1"]]
    # rotation reaches the cloud tenant like any isolated one
    r = cli("secrets", "rotate", "db-password", "--tenant", slug, "--json")
    assert r.exit_code == 0, r.output
    assert _json(cli("tenant", "query", slug, "SELECT name FROM projects", "--json"))["rows"]
    # and out again (the first move's kept source purged): the kept source is now the
    # project, deleted with the tenant
    r = cli("tenant", "move", slug, "--purge-source", "--force", "--yes", "--json")
    assert r.exit_code == 0, r.output
    _json(cli("tenant", "move", slug, "--to-tier", "schema", "--to-region", "global",
              "--residency-change", "downgrade", "--json"))  # fmt: skip
    assert ctl.route(slug).region == "global"
    assert _json(cli("tenant", "query", slug, "SELECT name FROM projects", "--json"))["rows"] == [
        ["p1"]
    ]
    assert project.id in neon.projects  # kept source
    assert project.id not in cli("provider", "orphans", "--json").stdout  # it is not an orphan
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]
    assert project.id in neon.deleted
    with ctl.catalog() as s:
        assert (
            s.execute(
                text("SELECT count(*) FROM servers WHERE project_id = :p"), {"p": project.id}
            ).scalar_one()
            == 0
        )


def test_move_into_neon_resumes_after_provider_failure(cloud, cli, ctl, neon, make_tenant):
    slug = make_tenant(tier="schema")
    neon.fail("POST", "/api/v2/projects", *[Fault(502)] * 6)
    r = cli("tenant", "move", slug, "--to-tier", "isolated", "--to-region", REGION,
            "--residency-change", "enterprise plan")  # fmt: skip
    assert r.exit_code == 1
    assert "failed 6 times (last: 502 injected)" in r.output
    assert f"`bizosctl tenant move {slug} --resume` continues it" in r.output
    assert ctl.route(slug).tier == "schema"  # the route has not moved
    _json(cli("tenant", "move", slug, "--resume", "--json"))
    assert ctl.route(slug).region == REGION
    assert len(_projects_named(neon, slug)) == 1
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]
    assert not _projects_named(neon, slug)


def test_supabase_project_that_fails_to_start_fails_then_resumes(cloud, cli, ctl, supabase):
    slug = unique_slug("u")
    supabase.health = "INIT_FAILED"
    try:
        r = _create(cli, slug, SB_REGION)
    finally:
        supabase.health = None
    assert r.exit_code == 1
    (project,) = [p for p in supabase.projects.values() if p.name.startswith(f"bizos-{slug}-")]
    assert f"supabase project {project.ref}: database INIT_FAILED" in r.output
    op_id, status, _ = _op_of(ctl, slug)
    assert status == "failed"
    _json(_create(cli, slug, SB_REGION))  # the provider recovered: the same operation finishes
    assert _op_of(ctl, slug)[:2] == (op_id, "done")
    assert len([p for p in supabase.projects.values() if p.name.startswith(f"bizos-{slug}-")]) == 1
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]
    assert project.ref in supabase.deleted


def test_create_in_the_background_on_neon(cloud, cli, ctl, neon):
    import uuid

    from test_jobs import Worker, wait_for

    from bizosctl.catalog.operations import describe

    slug = unique_slug("b")
    r = cli("tenant", "create", slug, "--name", slug, "--region", REGION, "--tier", "isolated",
            "--background", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    created = uuid.UUID(json.loads(r.stdout)["operation"])
    assert not _projects_named(neon, slug)  # queued: nothing asked of neon yet
    worker = Worker("operations").started()
    try:
        wait_for("the create to finish", lambda: describe(ctl, created).status == "done", 120)
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        worker.finish(timeout=60)
        with ctl.catalog() as s:
            s.execute(text("DELETE FROM procrastinate_jobs WHERE queue_name = 'operations'"))
            s.execute(text("DELETE FROM procrastinate_workers"))
    assert len(_projects_named(neon, slug)) == 1
    assert ctl.route(slug).status == "active"
    assert _json(cli("tenant", "delete", slug, "--yes", "--json"))["deleted"]
