"""schema status/sync/drift against real targets in every tier, with faults."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from bizosctl.db.engines import get_engine

MIGRATIONS = Path(__file__).parent / "migrations"
ADD = str(MIGRATIONS / "add_column")
#: The tenant history's head, on which the test revisions (t002, t003) are chained.
HEAD = "0007"
FAILING = f"{ADD}{os.pathsep}{MIGRATIONS / 'failing'}"


def sync(cli, *args, extra=ADD):
    r = cli("schema", "sync", *args, "--json", env={"BIZOS_TENANT_MIGRATIONS_EXTRA": extra})
    return r, json.loads(r.stdout)


def status(cli, extra=ADD):
    r = cli("schema", "status", "--json", env={"BIZOS_TENANT_MIGRATIONS_EXTRA": extra})
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def column_exists(ctl, server, database, schema, table, column):
    with get_engine(ctl.server(server).admin_url(database), pooled=False).connect() as c:
        return bool(
            c.execute(
                text(
                    "select count(*) from information_schema.columns where table_schema = :s "
                    "and table_name = :t and column_name = :c"
                ),
                {"s": schema, "t": table, "c": column},
            ).scalar()
        )


def test_status_json_contract(small_fleet, cli):
    doc = status(cli)
    assert doc["head"] == "t002"
    assert doc["summary"] == {HEAD: 5}
    kinds = sorted(t["kind"] for t in doc["targets"])
    assert kinds == ["isolated", "schema", "schema", "shared", "shared"]
    assert set(doc["targets"][0]) == {
        "kind",
        "tenant",
        "region",
        "server",
        "database",
        "schema",
        "revision",
        "status",
        "error",
    }


def test_sync_migrates_every_tier_then_noop(small_fleet, cli):
    from bizosctl.catalog.control import get_control

    r, doc = sync(cli, "--parallel", "3")
    assert r.exit_code == 0, [f["error"] for f in doc["failed"]]
    assert doc["ok"] is True and doc["summary"] == {"migrated": 5, "unchanged": 0, "failed": 0}
    assert status(cli)["summary"] == {"t002": 5}
    ctl = get_control()
    assert column_exists(ctl, "id-1", "t_gamma", "t_gamma", "tasks", "estimate")
    assert column_exists(ctl, "global-1", "bizos_shared", "t_alpha", "invoices", "channel")
    assert column_exists(ctl, "global-1", "bizos_shared", "shared", "tasks", "estimate")
    # data written before is still readable through the new column's default
    r = cli(
        "tenant",
        "query",
        "delta",
        "select count(*) from tasks where estimate = 0",
        "--json",
        env={"BIZOS_TENANT_MIGRATIONS_EXTRA": ADD},
    )
    assert r.exit_code == 0
    r, doc = sync(cli)
    assert r.exit_code == 0 and doc["summary"] == {"unchanged": 5, "migrated": 0, "failed": 0}
    # the catalog recorded each target
    assert {t["status"] for t in status(cli)["targets"]} == {"ok"}


def test_new_tenant_after_code_update_is_created_at_head(small_fleet, cli):
    r = cli(
        "tenant",
        "create",
        "late-co",
        "--name",
        "L",
        "--region",
        "id",
        "--tier",
        "schema",
        env={"BIZOS_TENANT_MIGRATIONS_EXTRA": ADD},
    )
    assert r.exit_code == 0
    revs = {t["tenant"]: t["revision"] for t in status(cli)["targets"]}
    assert revs["late-co"] == "t002" and revs["alpha"] == HEAD


def test_tenant_created_during_a_sync_is_not_left_behind(small_fleet, cli):
    """The run looks for targets that appeared while it went on."""
    from bizosctl.catalog.control import get_control
    from bizosctl.config import reset_settings
    from bizosctl.sync.engine import SyncOptions, run_sync
    from bizosctl.tenancy.provision import create_tenant

    os.environ["BIZOS_TENANT_MIGRATIONS_EXTRA"] = ADD
    try:
        reset_settings()
        ctl = get_control()
        made = []

        def on_result(result, done, total):
            if not made:
                # provisioning as "old code" would: at HEAD, while the sync runs
                os.environ.pop("BIZOS_TENANT_MIGRATIONS_EXTRA")
                create_tenant(ctl, slug="mid-sync", name="M", tier="schema", region="global")
                os.environ["BIZOS_TENANT_MIGRATIONS_EXTRA"] = ADD
                made.append(True)

        report = run_sync(ctl, SyncOptions(parallel=1), on_result=on_result)
        by_tenant = {r.target.tenant: r for r in report.results}
        assert by_tenant["mid-sync"].status == "migrated"
        assert by_tenant["mid-sync"].after == "t002"
    finally:
        os.environ.pop("BIZOS_TENANT_MIGRATIONS_EXTRA", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--to", "nope"), "unknown revision 'nope'"),
        (("--parallel", "0"), "--parallel must be at least 1, not 0"),
        (("--per-server", "0"), "--per-server must be at least 1, not 0"),
        (("--lock-timeout", "soon"), "invalid --lock-timeout 'soon'"),
        (("--tier", "gold"), "unknown tier 'gold'"),
    ],
)
def test_sync_bad_input(small_fleet, cli, args, message):
    r = cli("schema", "sync", *args, env={"BIZOS_TENANT_MIGRATIONS_EXTRA": ADD})
    assert r.exit_code == 2
    assert message in r.stderr


def test_sync_unknown_tenant(small_fleet, cli):
    r, doc = sync(cli, "--tenant", "ghost")
    assert r.exit_code == 3
    assert doc["error"]["message"] == "unknown tenant(s): ghost"


def test_failing_migration_in_one_target_others_finish(small_fleet, cli):
    r, doc = sync(cli, extra=FAILING)
    assert r.exit_code == 1
    assert doc["summary"] == {"migrated": 4, "failed": 1, "unchanged": 0}, [
        t["error"] for t in doc["failed"]
    ]
    [failed] = doc["failed"]
    assert failed["tenant"] == "boom-co" and failed["revision"] == HEAD
    assert "RuntimeError: boom: this migration refuses this target" in failed["error"]
    st = status(cli, extra=FAILING)
    assert st["summary"] == {"t003": 4, HEAD: 1}
    boom = next(t for t in st["targets"] if t["tenant"] == "boom-co")
    assert boom["status"] == "failed" and "boom" in boom["error"]


def test_fail_fast_stops_scheduling(small_fleet, cli):
    r, doc = sync(
        cli,
        "--parallel",
        "1",
        "--fail-fast",
        "--tenant",
        "boom-co",
        "--tenant",
        "alpha",
        extra=FAILING,
    )
    assert r.exit_code == 1
    statuses = {t["tenant"]: t["status"] for t in doc["targets"]}
    assert statuses["boom-co"] == "failed"
    assert statuses["alpha"] in ("skipped", "migrated")  # order decides; never failed
    assert "skipped" in statuses.values() or statuses["alpha"] == "migrated"


def test_canary_failure_stops_the_rest(small_fleet, cli):
    from bizosctl.catalog.control import get_control
    from bizosctl.tenancy.sample import load_sample_data

    ctl = get_control()
    for slug in ("alpha", "gamma", "delta"):
        load_sample_data(ctl, slug)  # boom-co stays the smallest schema target
    r, doc = sync(cli, "--canary", "1", "--tier", "schema", extra=FAILING)
    assert r.exit_code == 1
    statuses = {t["tenant"]: t["status"] for t in doc["targets"]}
    assert statuses == {"boom-co": "failed", "alpha": "skipped"}
    assert status(cli, extra=FAILING)["summary"][HEAD] == 5


def test_unreachable_server_fails_only_its_targets(fresh_home, cli, tcp_cluster_factory):
    assert cli("init").exit_code == 0
    port, stop = tcp_cluster_factory()
    url = f"postgresql://byo_admin@127.0.0.1:{port}/postgres"
    pw = {"BIZOS_SERVER_PASSWORD": "byo-pass-123"}
    assert cli("region", "add", "byo", "--url", url, "--insecure", env=pw).exit_code == 0
    assert (
        cli(
            "tenant", "create", "far-co", "--name", "F", "--region", "byo", "--tier", "schema"
        ).exit_code
        == 0
    )
    assert (
        cli(
            "tenant", "create", "near-co", "--name", "N", "--region", "global", "--tier", "schema"
        ).exit_code
        == 0
    )
    stop()
    r, doc = sync(cli)
    assert r.exit_code == 1
    failed = {t["tenant"] or t["schema"]: t["error"] for t in doc["failed"]}
    assert set(failed) == {"far-co", "shared"}
    assert all("server byo-1" in e for e in failed.values())
    assert {t["tenant"]: t["status"] for t in doc["targets"]}["near-co"] == "migrated"


def test_lock_timeout_is_retried_then_reported(small_fleet, cli):
    from bizosctl.catalog.control import get_control

    ctl = get_control()
    blocker = get_engine(ctl.server("global-1").admin_url("bizos_shared"), pooled=False).connect()
    blocker.execute(text('lock table "t_alpha".tasks in access share mode'))
    try:
        r, doc = sync(cli, "--lock-timeout", "200ms")
    finally:
        blocker.rollback()
        blocker.close()
    assert r.exit_code == 1
    [failed] = doc["failed"]
    assert failed["tenant"] == "alpha" and failed["attempts"] == 2
    assert failed["error"].startswith(
        "lock_timeout (200 ms): canceling statement due to lock timeout"
    )
    assert doc["summary"] == {"migrated": 4, "failed": 1, "unchanged": 0}
    r, doc = sync(cli)  # the tenant is free again: the same command finishes it
    assert r.exit_code == 0 and doc["summary"] == {"migrated": 1, "unchanged": 4, "failed": 0}


def _hold_target_lock(ctl, schema, app="bizosctl:sync:other-op"):
    conn = get_engine(ctl.server("global-1").admin_url("bizos_shared"), pooled=False).connect()
    conn.execute(text("select set_config('application_name', :a, false)"), {"a": app})
    conn.execute(
        text("select pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"bizos-migrate:tenant:{schema}"},
    )
    return conn


def test_target_held_by_another_sync_is_reported_busy(small_fleet, cli):
    from bizosctl.catalog.control import get_control

    holder = _hold_target_lock(get_control(), "t_alpha")
    try:
        r, doc = sync(cli, "--no-wait")
    finally:
        holder.rollback()
        holder.close()
    assert r.exit_code == 1
    [busy] = doc["failed"]
    assert busy["tenant"] == "alpha" and busy["status"] == "busy"
    assert busy["error"] == "another migration holds this target (bizosctl:sync:other-op)"


def test_a_second_sync_waits_for_the_other_by_default(small_fleet, cli):
    from bizosctl.catalog.control import get_control

    holder = _hold_target_lock(get_control(), "t_alpha")
    release = threading.Timer(1.0, lambda: (holder.rollback(), holder.close()))
    release.start()
    r, doc = sync(cli, "--tenant", "alpha")
    release.join()
    assert r.exit_code == 0, doc
    assert doc["summary"] == {"migrated": 1, "unchanged": 0, "failed": 0}


def test_sigkill_mid_run_then_resume(small_fleet, run_bizosctl):
    env = {"BIZOS_TENANT_MIGRATIONS_EXTRA": ADD}
    first = run_bizosctl(
        "schema", "sync", "--parallel", "1", "--json", env=env | {"BIZOS_CRASH_AT": "sync.target.2"}
    )
    assert first.returncode == -9
    mid = json.loads(run_bizosctl("schema", "status", "--json", env=env).stdout)["summary"]
    assert mid == {"t002": 2, HEAD: 3}
    second = run_bizosctl("schema", "sync", "--parallel", "1", "--json", env=env)
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["summary"] == {"unchanged": 2, "migrated": 3, "failed": 0}
    # the interrupted operation was resumed, not duplicated
    from sqlalchemy import select

    from bizosctl.catalog.control import get_control
    from bizosctl.catalog.models import Operation

    with get_control().catalog() as s:
        ops = s.execute(
            select(Operation.id, Operation.status).where(Operation.kind == "schema.sync")
        ).all()
    assert [str(o.id) for o in ops] == [doc["operation"]] and ops[0].status == "done"


def test_downgrade_needs_yes(small_fleet, cli):
    assert sync(cli)[0].exit_code == 0
    r, doc = sync(cli, "--to", HEAD)
    assert r.exit_code == 2
    assert (
        f"--to {HEAD} downgrades 5 target(s)" in doc["error"]["message"]
        and "--yes" in doc["error"]["message"]
    )
    assert status(cli)["summary"] == {"t002": 5}
    r, doc = sync(cli, "--to", HEAD, "--yes")
    assert r.exit_code == 0 and doc["summary"] == {"migrated": 5, "unchanged": 0, "failed": 0}
    assert status(cli)["summary"] == {HEAD: 5}


def test_dry_run_shows_plan_and_sql_and_changes_nothing(small_fleet, cli):
    r, doc = sync(cli, "--dry-run")
    assert r.exit_code == 0
    assert doc["dry_run"] is True
    assert sum(g["count"] for g in doc["plan"]) == 5
    sql = "\n".join(g["sql"] for g in doc["plan"])
    assert "ALTER TABLE tasks ADD COLUMN estimate INTEGER DEFAULT '0' NOT NULL" in sql
    assert status(cli)["summary"] == {HEAD: 5}


def test_drift_detects_hand_made_changes(small_fleet, cli):
    from bizosctl.catalog.control import get_control

    r = cli("schema", "drift", "--json")
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["ok"] is True
    ctl = get_control()
    with get_engine(ctl.server("global-1").admin_url("bizos_shared"), pooled=False).connect() as c:
        c.execute(text('create index by_hand on "t_alpha".tasks (title)'))
        c.execute(text('drop policy tenant_isolation on "t_alpha".roles'))
        c.commit()
    with get_engine(ctl.server("id-1").admin_url("t_gamma"), pooled=False).connect() as c:
        c.execute(text('alter table "t_gamma".members no force row level security'))
        c.commit()
    r = cli("schema", "drift", "--json")
    assert r.exit_code == 1
    drifted = {t["tenant"]: t["differences"] for t in json.loads(r.stdout)["drifted"]}
    assert set(drifted) == {"alpha", "gamma"}
    assert (
        "unexpected index by_hand: CREATE INDEX by_hand ON <schema>.tasks USING btree (title)"
        in drifted["alpha"]
    )
    assert "missing policy roles.tenant_isolation" in drifted["alpha"]
    assert any(d.startswith("changed table members: rls on, forced no") for d in drifted["gamma"])


def test_code_older_than_the_fleet_neither_syncs_nor_creates(small_fleet, cli):
    """The fleet is at t002; this code (no extra migrations) knows only 0001."""
    r, doc = sync(cli)
    assert r.exit_code == 0, doc
    r = cli("schema", "status", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["unknown_revisions"] == ["t002"]
    assert "does not know" in r.stderr
    r = cli("schema", "sync", "--dry-run", "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["message"].startswith(
        "cannot sync the fleet: the fleet is at revision(s) t002 ("
    )
    r = cli(
        "tenant", "create", "late-co", "--name", "Late", "--region", "global", "--tier", "schema"
    )
    assert r.exit_code == 2, r.output
    assert "cannot create 'late-co': the fleet is at revision(s) t002" in r.stderr
    from bizosctl.db.migrate import head

    assert f"its head is {head('tenant')})" in r.stderr
    assert cli("tenant", "show", "late-co").exit_code == 3


def test_status_and_sync_of_a_shared_tier_tenant_name_the_shared_target(small_fleet, cli):
    r = cli("schema", "status", "--tenant", "delta", "--json")
    assert r.exit_code == 0, r.output
    [target] = json.loads(r.stdout)["targets"]
    assert (target["kind"], target["server"], target["schema"]) == ("shared", "global-1", "shared")
    assert target["holds"] == ["delta"]
    r, doc = sync(cli, "--tenant", "delta", "--dry-run")
    assert r.exit_code == 0, doc
    [planned] = doc["targets"]
    assert planned["holds"] == ["delta"] and planned["status"] == "planned"


def test_sync_refuses_bad_input_before_drawing_progress(small_fleet, cli):
    r = cli("schema", "sync", "--to", "nope")
    assert r.exit_code == 2
    assert "unknown revision 'nope'" in r.stderr
    assert "sync" not in r.stderr.split("unknown revision")[0]  # no progress bar drawn first
