"""``--dry-run`` changes nothing: every state-changing command, in every mode, leaves the
catalog, every database, every role and the files of BIZOS_HOME exactly as they were."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from bizosctl.db.engines import get_engine
from bizosctl.tenancy.sample import load_sample_data

TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2
"""


def _database_state(engine: Any) -> dict[str, Any]:
    """Every user table's rows (hashed), the schemas, the triggers and the functions."""
    out: dict[str, Any] = {}
    with engine.connect() as c:
        out["schemas"] = sorted(c.execute(text("SELECT nspname FROM pg_namespace")).scalars())
        out["triggers"] = sorted(
            c.execute(
                text("SELECT tgrelid::regclass::text || ' ' || tgname FROM pg_trigger")
            ).scalars()
        )
        out["functions"] = sorted(
            c.execute(
                text(
                    "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
                    "ON n.oid = p.pronamespace WHERE n.nspname NOT IN "
                    "('pg_catalog', 'information_schema')"
                )
            ).scalars()
        )
        for schema, table in c.execute(text(TABLES)).all():
            out[f"{schema}.{table}"] = c.execute(
                text(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), "
                    f'\'\')) FROM "{schema}"."{table}" t'
                )
            ).one()
    return out


def snapshot(ctl: Any) -> dict[str, Any]:
    """Checksums of everything a command could change."""
    from bizosctl.catalog.models import Server

    state: dict[str, Any] = {}
    with ctl.catalog() as s:
        servers = sorted(s.execute(select(Server.name)).scalars())
    for name in servers:
        handle = ctl.server(name)
        admin = get_engine(handle.admin_url("postgres"), pooled=False)
        with admin.connect() as c:
            dbs = sorted(
                c.execute(text("SELECT datname FROM pg_database WHERE NOT datistemplate")).scalars()
            )
            state[f"{name} roles"] = sorted(
                tuple(r)
                for r in c.execute(
                    text("SELECT rolname, rolcanlogin, coalesce(rolpassword, '') FROM pg_authid")
                ).all()
            )
        state[f"{name} databases"] = dbs
        for db in dbs:
            state[f"{name}/{db}"] = _database_state(get_engine(handle.admin_url(db), pooled=False))
    home: Path = ctl.settings.home
    files = {}
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home)
        if "pgdata" in rel.parts or "pgdata.initdb" in rel.parts or not path.is_file():
            continue
        files[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    state["files"] = files
    # a server stopped (down) or started (region add) shows in its postmaster.pid
    state["running"] = sorted(
        str(p.relative_to(home)) + " " + p.read_text().split("\n", 1)[0]
        for p in home.rglob("postmaster.pid")
    )
    return state


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}: {k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(key)
    return out


@pytest.fixture
def world(ctl, make_tenant, cli, run_bizosctl) -> Iterator[dict[str, str]]:
    """Something for every mode to act on: a kept move source, an unfinished move, a locked
    tenant, an isolated tenant, an API key, a webhook endpoint."""
    kept = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, kept)
    r = cli("tenant", "move", kept, "--to-tier", "isolated", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    moving = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, moving)
    crashed = run_bizosctl(
        "tenant", "move", moving, "--to-tier", "isolated", env={"BIZOS_CRASH_AT": "move.capture"}
    )
    assert crashed.returncode == -9, crashed.stderr
    locked = make_tenant(tier="shared", region="id")
    assert cli("tenant", "lock", locked).exit_code == 0
    r = cli("api-key", "create", "--tenant", kept, "--name", "ci", "--scopes", "*", "--json")
    assert r.exit_code == 0, r.stderr
    prefix = json.loads(r.stdout)["key"]["prefix"]
    r = cli(
        "webhook",
        "add",
        "--tenant",
        kept,
        "--url",
        "https://kept.example/h",
        "--events",
        "invoice.paid",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    endpoint = json.loads(r.stdout)["endpoint"]["id"]
    yield {
        "kept": kept,
        "moving": moving,
        "locked": locked,
        "key": prefix,
        "endpoint": endpoint,
        "new": "n" + uuid.uuid4().hex[:10],
    }
    # the fleet is shared: an unfinished move left behind makes later syncs report it busy
    r = cli("tenant", "move", moving, "--abort")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert cli("tenant", "unlock", locked).exit_code == 0


def dry_runs(w: dict[str, str]) -> list[tuple[list[str], int]]:
    """Every state-changing command in every mode, with the exit code its dry run must give
    (2: the real command would be refused, or the mode refuses --dry-run)."""
    k, m = w["kept"], w["moving"]
    return [
        (["tenant", "move", k, "--purge-source", "--force", "--yes"], 0),
        (["tenant", "move", k, "--purge-source", "--force"], 0),
        (["tenant", "move", k, "--purge-source"], 2),  # kept for 7 days
        (["tenant", "move", m, "--abort"], 0),
        (["tenant", "move", m, "--resume"], 0),
        (["tenant", "move", m, "--to-tier", "isolated"], 2),  # already moving
        (["tenant", "move", k, "--to-tier", "shared"], 0),
        (["tenant", "move", k, "--status"], 0),
        (["tenant", "create", w["new"], "--name", "N", "--region", "id", "--tier", "isolated"], 0),
        (["tenant", "delete", k], 0),
        (["tenant", "delete", k, "--yes"], 0),
        (["tenant", "query", k, "update tasks set title = 'x'", "--write"], 0),
        (["tenant", "query", k, "update tasks set title = 'x'; commit", "--write"], 2),
        (["tenant", "lock", k], 0),
        (["tenant", "unlock", w["locked"]], 0),
        (["region", "add", "zz" + uuid.uuid4().hex[:6]], 0),
        (["schema", "sync"], 0),
        (["secrets", "rotate", "pii"], 0),
        (["secrets", "rotate", "pii", "--fresh-key"], 0),
        (["secrets", "rotate", "jwt"], 0),
        (["secrets", "rotate", "db-credentials"], 0),
        (["secrets", "rotate", "db-password", "--all"], 0),
        (["secrets", "rotate", "db-password", "--tenant", k], 0),
        (["secrets", "rotate", "master-key"], 0),
        (["secrets", "rotate", "master-key", "--yes"], 0),
        (["api-key", "create", "--tenant", k, "--name", "x", "--scopes", "*"], 0),
        (["api-key", "revoke", w["key"], "--yes"], 0),
        (["api-key", "rotate", w["key"]], 0),
        (["webhook", "add", "--tenant", k, "--url", "https://x.example/h", "--events", "a.b"], 0),
        (["webhook-secret", "rotate", "--endpoint", w["endpoint"]], 0),
        (["webhook-secret", "rotate", "--endpoint", w["endpoint"][:8]], 0),
        (["digest", "run", "--tenant", k, "--date", "2026-11-30"], 0),
        (["digest", "run", "--tenant", k, "--force"], 0),
        (["tenant", "email-sender", k, "--from-name", "Acme", "--primary-color", "#000000"], 0),
        (["email", "smtp-password"], 0),
        (["init"], 0),
        (["quickstart"], 0),
        (["down"], 0),
    ]


@pytest.mark.parametrize("half", [0, 1])
def test_every_dry_run_changes_nothing(ctl, cli, world, half):
    # in two halves (every other command), so that two test workers share the work: each
    # half gets a world of its own, and the first also checks what the plans name
    before = snapshot(ctl)
    runs = dry_runs(world)
    assert len(runs) > 30  # the list is whole: a half is every other one of it
    for args, code in runs[half::2]:
        for extra in (["--json"], []):
            r = cli(*args, "--dry-run", *extra)
            shown = " ".join(args + extra)
            assert r.exit_code == code, f"{shown}: {r.exit_code} {r.stdout} {r.stderr}"
            if extra:
                doc = json.loads(r.stdout)  # exactly one document
                if code == 0 and "--status" not in args:  # --status changes nothing anyway
                    assert doc.get("dry_run") is True, f"{shown}: {doc}"
            else:
                assert "{" not in r.stdout.split("\n", 1)[0], f"{shown}: raw JSON {r.stdout}"
        changed = diff(before, snapshot(ctl))
        assert not changed, f"{' '.join(args)} --dry-run changed {changed}"
    if half == 0:
        plans_name_what_they_would_do(cli, world)


def plans_name_what_they_would_do(cli, world):
    k = world["kept"]
    r = cli("tenant", "move", k, "--purge-source", "--force", "--dry-run", "--json")
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True
    [source] = doc["purge"]["sources"]
    assert source["source"]["schema"] == f"t_{k}"
    assert any(f'DROP SCHEMA IF EXISTS "t_{k}" CASCADE' in s for s in source["sql"])
    r = cli("tenant", "move", k, "--purge-source", "--force", "--dry-run")
    assert f"would drop schema t_{k}" in r.stdout
    doc = json.loads(
        cli(
            "tenant", "query", k, "update tasks set title = 'x'", "--write", "--dry-run", "--json"
        ).stdout
    )
    assert doc["rowcount"] == 8  # what it would change, rolled back
    m = world["moving"]
    doc = json.loads(cli("tenant", "move", m, "--abort", "--dry-run", "--json").stdout)
    assert doc["abort"]["target"]["database"] == f"t_{m}"
    assert doc["abort"]["capture_triggers"] is True
    doc = json.loads(cli("tenant", "move", m, "--resume", "--dry-run", "--json").stdout)
    assert "capture" in doc["resume"]["done"] and "switch" in doc["resume"]["left"]
    r = cli("tenant", "move", m, "--resume", "--dry-run")
    assert "would resume" in r.stdout and "switch" in r.stdout
    # a plan refuses what its verb refuses (the plan_...() siblings share the verb's checks)
    r = cli("tenant", "lock", m, "--dry-run", "--json")
    assert r.exit_code == 2, r.stdout
    assert "its status cannot change now" in r.stdout + r.stderr
    r = cli("region", "add", "zz", "--url", "postgresql://a@127.0.0.1/postgres", "--port",
            "7000", "--dry-run")  # fmt: skip
    assert r.exit_code == 2 and "--port is for embedded servers" in r.stdout + r.stderr
    doc = json.loads(cli("tenant", "lock", k, "--dry-run", "--json").stdout)
    assert (doc["from"], doc["to"]) == ("active", "read_only")
