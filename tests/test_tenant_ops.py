"""tenant create and tenant delete on the operations engine: resumable by id after a crash."""

from __future__ import annotations

import json

import pytest
from conftest import unique_slug
from sqlalchemy import text


def ops_of(ctl, kind, slug):
    with ctl.catalog() as s:
        return s.execute(
            text("SELECT id, status FROM operations WHERE kind = :k AND target = :t"),
            {"k": kind, "t": slug},
        ).all()


@pytest.mark.parametrize("tier", ["schema", "isolated"])
def test_a_crashed_create_is_finished_by_ops_resume(ctl, cli, run_bizosctl, tier):
    slug = unique_slug("oc")
    r = run_bizosctl(
        "tenant", "create", slug, "--name", "Ops Co", "--region", "global", "--tier", tier,
        env={"BIZOS_CRASH_AT": "tenant.create.migrated"},
    )  # fmt: skip
    assert r.returncode == -9, r.stderr
    [(op_id, status)] = ops_of(ctl, "tenant.create", slug)
    assert status == "running"
    r = cli("ops", "resume", str(op_id), "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["status"] == "done"
    assert ctl.route(slug).status == "active"
    shown = json.loads(cli("tenant", "show", slug, "--json").stdout)
    assert shown["status"] == "active" and "tasks" in shown["row_counts"]
    assert cli("tenant", "delete", slug, "--yes").exit_code == 0


def test_a_crashed_delete_is_finished_by_ops_resume(ctl, cli, run_bizosctl, make_tenant):
    slug = make_tenant(tier="isolated")
    r = run_bizosctl(
        "tenant", "delete", slug, "--yes", env={"BIZOS_CRASH_AT": "tenant.delete.dropped"}
    )  # fmt: skip
    assert r.returncode == -9, r.stderr
    [(op_id, status)] = ops_of(ctl, "tenant.delete", slug)
    assert status == "running"
    show = json.loads(cli("ops", "show", str(op_id), "--json").stdout)["operation"]
    assert [st["name"] for st in show["steps"]] == ["dropped"]
    r = cli("ops", "resume", str(op_id), "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["deleted"] is True
    r = cli("tenant", "show", slug)
    assert r.exit_code == 3


def test_running_delete_again_resumes_the_interrupted_one(ctl, cli, run_bizosctl, make_tenant):
    slug = make_tenant(tier="schema")
    r = run_bizosctl(
        "tenant", "delete", slug, "--yes", env={"BIZOS_CRASH_AT": "tenant.delete.dropped"}
    )  # fmt: skip
    assert r.returncode == -9, r.stderr
    r = cli("tenant", "delete", slug, "--yes", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    [(op_id, status)] = ops_of(ctl, "tenant.delete", slug)  # one operation, not two
    assert status == "done" and json.loads(r.stdout)["operation"] == str(op_id)


def test_ops_resume_of_a_create_refuses_a_tenant_that_is_not_being_created(ctl, make_tenant):
    from bizosctl.catalog.operations import OperationKind, start_or_resume
    from bizosctl.errors import InvalidInput
    from bizosctl.runners import resume

    slug = make_tenant(tier="shared")
    with ctl.catalog() as s:
        op_id, _ = start_or_resume(
            ctl, s, kind=OperationKind.TENANT_CREATE, target=slug, params={}, exclusive=True
        )
    try:
        with pytest.raises(InvalidInput, match="is active, not being created"):
            resume(ctl, op_id)
    finally:
        with ctl.catalog() as s:
            s.execute(text("DELETE FROM operations WHERE id = :i"), {"i": op_id})
