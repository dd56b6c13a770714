"""A process killed in the middle of `tenant create`, and two creates racing for one slug."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import unique_slug

CRASH_POINTS = [
    "tenant.create.registered",
    "tenant.create.database",
    "tenant.create.migrated",
    "tenant.create.state",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_create_is_finished_by_running_it_again(run_bizosctl, point):
    slug = unique_slug("k")
    args = (
        "tenant",
        "create",
        slug,
        "--name",
        "Crashy",
        "--region",
        "id",
        "--tier",
        "isolated",
        "--json",
    )
    first = run_bizosctl(*args, env={"BIZOS_CRASH_AT": point})
    assert first.returncode == -9, first.stderr  # really killed by SIGKILL
    listed = json.loads(run_bizosctl("tenant", "list", "--json").stdout)["tenants"]
    assert [t["status"] for t in listed if t["slug"] == slug] == ["provisioning"]

    second = run_bizosctl(*args)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["status"] == "active"
    shown = json.loads(run_bizosctl("tenant", "show", slug, "--json").stdout)
    assert shown["row_counts"]["tenant_state"] == 1 and shown["row_counts"]["settings"] == 1


def test_killed_schema_create_can_be_deleted_instead(run_bizosctl, ctl):
    from sqlalchemy import text

    from bizosctl.db.engines import get_engine

    slug = unique_slug("k")
    args = ("tenant", "create", slug, "--name", "Crashy", "--region", "global", "--tier", "schema")
    assert run_bizosctl(*args, env={"BIZOS_CRASH_AT": "tenant.create.migrated"}).returncode == -9
    r = run_bizosctl("tenant", "delete", slug, "--yes", "--json")
    assert r.returncode == 0, r.stderr
    with get_engine(ctl.server("global-1").admin_url("bizos_shared"), pooled=False).connect() as c:
        assert (
            c.execute(
                text("select count(*) from pg_namespace where nspname = :s"), {"s": "t_" + slug}
            ).scalar_one()
            == 0
        )


def test_resume_with_other_tier_is_refused(run_bizosctl):
    slug = unique_slug("k")
    base = ("tenant", "create", slug, "--name", "X", "--region", "global")
    assert (
        run_bizosctl(
            *base, "--tier", "schema", env={"BIZOS_CRASH_AT": "tenant.create.registered"}
        ).returncode
        == -9
    )
    r = run_bizosctl(*base, "--tier", "isolated")
    assert r.returncode == 2
    assert f"tenant '{slug}' is half-created as schema in global" in r.stderr


def test_two_concurrent_creates_of_one_slug_one_wins(fleet):
    slug = unique_slug("r")
    env = dict(os.environ)
    args = [
        sys.executable,
        "-m",
        "bizosctl",
        "tenant",
        "create",
        slug,
        "--name",
        "Race",
        "--region",
        "global",
        "--tier",
        "isolated",
        "--json",
    ]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0, results
    assert codes[1] != 0, results
    loser_err = next(err for code, _, err in results if code != 0)
    assert (
        f"tenant '{slug}' already exists" in loser_err
        or f"tenant '{slug}' is being created by another process" in loser_err
    ), loser_err
    assert len(loser_err.strip().splitlines()) == 1
