"""init, quickstart, doctor and down on fresh homes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import text

from bizosctl.db.engines import get_engine


def test_init_on_a_home_that_is_not_writable(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli("init", env={"BIZOS_HOME": str(blocker / "home")})
    assert r.exit_code == 2
    assert f"BIZOS_HOME {blocker / 'home'} is not writable" in r.stderr


def test_commands_before_init_say_what_to_do(fresh_home, cli):
    r = cli("tenant", "list")
    assert r.exit_code == 2
    assert "bizosctl is not initialised" in r.stderr and "bizosctl init" in r.stderr


def test_quickstart_twice_then_doctor_then_down(fresh_home, cli):
    r = cli("quickstart", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)["would_change"]
    assert plan[0] == f"master key {fresh_home / 'master.key'}"
    assert {"region id", "tenant acme (shared, global)", "sample data for garuda"} <= set(plan)
    assert not any(fresh_home.iterdir())  # nothing made, not even the master key
    r = cli("quickstart")
    assert r.exit_code == 0, r.stderr
    # progress on stderr, the summary on stdout
    assert "+ tenant acme (shared, global)" in r.stderr and "+ tenant" not in r.stdout
    assert "Tenants" in r.stdout and "garuda" in r.stdout
    r = cli("quickstart", "--dry-run")
    assert "quickstart would change nothing" in r.stdout
    r = cli("quickstart", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["changed"] == []
    tiers = {t["slug"]: (t["tier"], t["region"]) for t in doc["tenants"]}
    assert tiers == {
        "acme": ("shared", "global"),
        "nusantara": ("schema", "id"),
        "garuda": ("isolated", "id"),
    }
    for t in doc["tenants"]:
        counts = t["row_counts"]
        assert counts["members"] == 5 and counts["invoices"] == 5 and counts["tasks"] == 8
        assert counts["audit_logs"] > 0

    again = cli("quickstart")
    assert again.exit_code == 0
    assert "Everything was already in place: nothing changed." in again.stdout
    again_json = json.loads(cli("quickstart", "--json").stdout)
    assert again_json["changed"] == []

    r = cli("doctor", "--json")
    assert r.exit_code == 0, r.stdout
    report = json.loads(r.stdout)
    assert report["ok"] is True
    names = {c["name"] for c in report["checks"]}
    assert {
        "rls garuda (isolated)",
        "rls nusantara (schema)",
        "auth id-1",
        "roles global-1",
    } <= names

    r = cli("down", "--dry-run", "--json")
    assert sorted(json.loads(r.stdout)["would_stop"]) == ["global", "id"]
    assert cli("down", "--dry-run").stdout.startswith("would stop: global, id")
    r = cli("down", "--json")
    assert sorted(json.loads(r.stdout)["stopped"]) == ["global", "id"]
    r = cli("down", "--dry-run")
    assert "no embedded server is running: nothing to stop" in r.stdout
    r = cli("init", "--dry-run", "--json")  # does not start the stopped server to find out
    assert json.loads(r.stdout)["would_create"][0] == "start the global server"
    # any command brings the servers back
    r = cli("tenant", "show", "garuda", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["row_counts"]["members"] == 5


def test_doctor_finds_rls_turned_off_and_key_mode(fresh_home, cli):
    from bizosctl.catalog.control import get_control

    assert cli("init").exit_code == 0
    assert (
        cli(
            "tenant", "create", "docy", "--name", "D", "--region", "global", "--tier", "schema"
        ).exit_code
        == 0
    )
    ctl = get_control()
    with get_engine(ctl.server("global-1").admin_url("bizos_shared"), pooled=False).connect() as c:
        c.execute(text('alter table "t_docy".tasks no force row level security'))
        c.commit()
    (fresh_home / "master.key").chmod(0o640)
    r = cli("doctor", "--json")
    assert r.exit_code == 1
    failed = {c["name"]: c["detail"] for c in json.loads(r.stdout)["checks"] if not c["ok"]}
    assert failed["rls docy (schema)"] == "missing or not forced on: tasks"
    assert "mode 0640" in failed["master key"]
    assert "check(s) failed" in r.stderr


def test_init_twice_changes_nothing(fresh_home, cli):
    plan = json.loads(cli("init", "--dry-run", "--json").stdout)
    assert plan["would_create"][0] == f"master key {fresh_home / 'master.key'}"
    assert not any(fresh_home.iterdir())
    first = cli("init")
    assert first.exit_code == 0, first.stderr
    assert "+ started global server" in first.stdout and "created started" not in first.stdout
    assert "+ catalog schema" in first.stdout
    r = cli("init", "--dry-run")
    assert r.exit_code == 0 and "already initialised" in r.stdout and "nothing to do" in r.stdout
    second = cli("init", "--json")
    assert json.loads(second.stdout)["created"] == []


def test_wrong_master_key_is_a_clear_error(fresh_home, cli):
    assert cli("init").exit_code == 0
    r = cli(
        "tenant",
        "create",
        "keyx",
        "--name",
        "K",
        "--region",
        "global",
        "--tier",
        "isolated",
        env={"BIZOS_MASTER_KEY": "A" * 43},
    )
    assert r.exit_code == 1
    assert "wrong BIZOS_MASTER_KEY, key file or KMS key" in r.stderr


def test_json_output_is_one_document_and_logs_go_to_stderr(fleet):
    r = subprocess.run(
        [sys.executable, "-m", "bizosctl", "region", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    json.loads(r.stdout)  # exactly one document, nothing else


@pytest.mark.parametrize("argv", [["tenant", "create"], ["tenant", "show"], ["region", "add"]])
def test_missing_argument_is_usage_error(cli, argv):
    r = cli(*argv)
    assert r.exit_code == 2
