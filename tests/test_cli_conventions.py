"""Operator-facing consistency (issue 12, item 13): people get text, scripts get one JSON
document, caps are stated, truncation is said, one name per idea, ids take unique prefixes."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text

from bizosctl.tenancy.sample import load_sample_data


def test_move_prints_a_report_for_people_and_json_for_scripts(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, slug)
    r = cli("tenant", "move", slug, "--to-tier", "isolated", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert not r.stdout.lstrip().startswith("{")
    assert f"would move {slug}: schema on global-1 (bizos_shared.t_{slug}" in r.stdout
    r = cli("tenant", "move", slug, "--to-tier", "isolated")
    assert r.exit_code == 0, r.stderr
    assert not r.stdout.lstrip().startswith("{")
    assert f"moved {slug}" in r.stdout and "Verified" in r.stdout
    assert "writes paused" in r.stdout and "--purge-source --yes" in r.stdout
    r = cli("tenant", "move", slug, "--status")
    assert r.exit_code == 0 and f"last move of {slug}: done" in r.stdout
    assert "source kept until" in r.stdout and "Steps" in r.stdout
    doc = json.loads(cli("tenant", "move", slug, "--status", "--json").stdout)
    assert doc["status"] == "done"


def test_purge_source_refuses_without_yes_then_purges(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema", region="global")
    assert cli("tenant", "move", slug, "--to-tier", "isolated").exit_code == 0
    r = cli("tenant", "move", slug, "--purge-source", "--force")
    assert r.exit_code == 2
    assert f"purging the kept source of '{slug}' is destructive: pass --yes" in r.stderr
    with _admin(ctl) as c:
        assert c.execute(
            text("select 1 from pg_namespace where nspname = :s"), {"s": f"t_{slug}"}
        ).first()
    r = cli("tenant", "move", slug, "--purge-source", "--force", "--yes")
    assert r.exit_code == 0, r.stderr
    assert f"purged the kept source of {slug}: schema on global-1" in r.stdout
    with _admin(ctl) as c:
        assert not c.execute(
            text("select 1 from pg_namespace where nspname = :s"), {"s": f"t_{slug}"}
        ).first()


def _admin(ctl):
    from bizosctl.db.engines import get_engine

    return get_engine(ctl.server("global-1").admin_url("bizos_shared"), pooled=False).connect()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--parallel", "33", "--parallel is capped at 32, not 33"),
        ("--keep-source", "91d", "--keep-source is capped at 90d"),
        ("--max-freeze", "61s", "--max-freeze is capped at 60s"),
    ],
)
def test_move_options_are_capped(make_tenant, cli, flag, value, message):
    slug = make_tenant(tier="shared")
    r = cli("tenant", "move", slug, "--to-tier", "schema", flag, value, "--dry-run")
    assert r.exit_code == 2 and message in r.stderr


def test_query_says_when_limit_cut_rows(ctl, make_tenant, cli):
    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)  # 8 tasks
    r = cli("tenant", "query", slug, "select title from tasks", "--limit", "3")
    assert r.exit_code == 0, r.stderr
    assert "truncated: showing the first 3 row(s); raise --limit to see more" in r.stderr
    doc = json.loads(
        cli("tenant", "query", slug, "select title from tasks", "--limit", "3", "--json").stdout
    )
    assert doc["truncated"] is True and len(doc["rows"]) == 3
    r = cli("tenant", "query", slug, "select title from tasks", "--limit", "8", "--json")
    assert json.loads(r.stdout)["truncated"] is False and "truncated" not in r.stderr


def _endpoint(cli, slug: str) -> str:
    r = cli(
        "webhook",
        "add",
        "--tenant",
        slug,
        "--url",
        "https://p.example/h",
        "--events",
        "a.b",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)["endpoint"]["id"]


def test_webhook_secret_rotate_takes_a_unique_prefix(ctl, make_tenant, cli):
    slug = make_tenant(tier="shared")
    eid = _endpoint(cli, slug)
    r = cli("webhook-secret", "rotate", "--endpoint", eid[:8], "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["endpoint"]["id"] == eid
    r = cli("webhook-secret", "rotate", "--endpoint", "ffff" + eid[4:8] + "0", "--dry-run")
    assert r.exit_code == 3 and "no webhook endpoint" in r.stderr


def test_webhook_secret_rotate_refuses_an_ambiguous_prefix(ctl, make_tenant, cli):
    slug = make_tenant(tier="shared")
    shared = uuid.uuid4().hex[:8]
    for n in (1, 2):  # two endpoints whose ids begin alike
        eid = _endpoint(cli, slug)
        with ctl.catalog() as s:
            s.execute(
                text("update webhook_endpoints set id = :new where id = :old"),
                {"new": f"{shared}-0000-4000-8000-00000000000{n}", "old": eid},
            )
    try:
        r = cli("webhook-secret", "rotate", "--endpoint", shared, "--dry-run")
        assert r.exit_code == 2
        assert f"'{shared}' names more than one webhook endpoint: give more of its id" in r.stderr
    finally:
        # their secrets were sealed for the old ids and no longer open: a later rotation of the
        # fleet's credentials (same worker, session fleet) would stop on them
        with ctl.catalog() as s:
            s.execute(
                text("delete from webhook_endpoints where id::text like :p"), {"p": f"{shared}-%"}
            )


def test_grace_is_the_one_name_and_overlap_a_hidden_alias(make_tenant, cli):
    help_text = cli("webhook-secret", "rotate", "--help").stdout
    assert "--grace" in help_text and "--overlap" not in help_text
    eid = _endpoint(cli, make_tenant(tier="shared"))
    r = cli("webhook-secret", "rotate", "--endpoint", eid, "--overlap", "1h", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    assert "--overlap is deprecated, use --grace" in r.stderr
    json.loads(r.stdout)  # still one document


def test_region_add_dry_run_says_what_it_would_do(cli):
    r = cli("region", "add", "eu", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "would add region eu with server eu-1: a new embedded server"


def test_db_password_dry_run_names_tenants_and_roles(make_tenant, cli):
    slug = make_tenant(tier="isolated")
    r = cli("secrets", "rotate", "db-password", "--tenant", slug, "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "would rotate 1 login role(s), grace 2000 ms" in r.stdout
    assert f"t_{slug} -> t_{slug}__b on global-1" in r.stdout
    doc = json.loads(
        cli("secrets", "rotate", "db-password", "--tenant", slug, "--dry-run", "--json").stdout
    )
    assert doc["would_rotate"] == [
        {"tenant": slug, "server": "global-1", "role": f"t_{slug}__b", "previous": f"t_{slug}"}
    ]


def test_sync_summary_shows_zero_counts(make_tenant, cli):
    make_tenant(tier="shared")
    r = cli("schema", "sync")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "migrated: 0, unchanged: " in r.stdout and "failed: 0" in r.stdout


def test_abort_and_resume_print_sentences(ctl, make_tenant, cli, run_bizosctl):
    slug = make_tenant(tier="schema", region="global")
    args = ("tenant", "move", slug, "--to-tier", "isolated")
    assert run_bizosctl(*args, env={"BIZOS_CRASH_AT": "move.capture"}).returncode == -9
    r = cli("tenant", "move", slug, "--abort")
    assert r.exit_code == 0, r.stderr
    out = " ".join(r.stdout.split())  # Rich wraps long lines
    assert out.startswith(f"aborted the move of {slug} (operation ")
    assert "the tenant is back where it was and writes resumed" in out
    assert run_bizosctl(*args, env={"BIZOS_CRASH_AT": "move.capture"}).returncode == -9
    r = cli("tenant", "move", slug, "--resume")
    assert r.exit_code == 0, r.stderr
    assert " ".join(r.stdout.split()).startswith(f"resumed and moved {slug}: schema on global-1")


def _at_a_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run bizosctl with stdin and stderr on a pseudo-terminal; answer its prompt."""
    import os
    import select
    import subprocess
    import sys
    import time

    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", *args],
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 60
    while b"Continue?" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                seen += os.read(master, 1024)
            except OSError:  # the child closed the terminal: it exited without asking
                break
    os.write(master, answer.encode() + b"\n")
    proc.communicate(timeout=60)
    os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def test_destructive_command_asks_at_a_terminal(ctl, make_tenant, cli):
    slug = make_tenant(tier="shared")
    code, prompt = _at_a_terminal(["tenant", "delete", slug], "n")
    assert code == 1 and f"deleting tenant '{slug}' is destructive. Continue?" in prompt
    assert ctl.route(slug).status == "active"
    code, _ = _at_a_terminal(["tenant", "delete", slug], "y")
    assert code == 0
    assert json.loads(cli("tenant", "show", slug, "--json").stdout)["error"]["exit_code"] == 3
