"""Ctrl-C and SIGKILL against real child processes (issue 12, items 12 and 0).

A terminal's Ctrl-C reaches the whole foreground process group: the tests start the command in
its own session and send SIGINT to that group, workers included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bizosctl.tenancy.sample import load_sample_data

MIGRATIONS = Path(__file__).parent / "migrations"
ADD = str(MIGRATIONS / "add_column")
MARK = "BZTEST_PROCESS_MARK"


def _build_sync_fleet(invoke, ctl) -> None:  # type: ignore[no-untyped-def]
    invoke("init")
    for i in range(4):
        invoke(
            "tenant",
            "create",
            f"int{i}",
            "--name",
            f"int{i}",
            "--tier",
            "schema",
            "--region",
            "global",
        )


@pytest.fixture
def sync_fleet(home_template_factory, copy_home):  # type: ignore[no-untyped-def]
    """A home of this test's own at revision 0001 with a few targets for schema sync
    (copied from the worker's template)."""
    return copy_home(home_template_factory("interrupts-sync-fleet", _build_sync_fleet))


def start(args: list[str], env: dict[str, str], *, capture: bool = True) -> subprocess.Popen[str]:
    # Not captured: orphaned workers would hold the pipes open (communicate would never end).
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "bizosctl", *args],
        env={**os.environ, **env},
        stdout=pipe,
        stderr=pipe,
        text=True,
        start_new_session=True,
    )


def wait_for_pause(proc: subprocess.Popen[str], name: str) -> list[str]:
    """Read stderr until the child says it paused at ``name``; the lines read so far."""
    assert proc.stderr is not None
    seen: list[str] = []
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"exited ({proc.wait()}) before {name}: {''.join(seen)}")
        seen.append(line)
        if line.strip() == f"paused at {name}":
            return seen


def marked_pids(mark: str) -> list[int]:
    """Python processes whose environment carries ``mark`` (children inherit it)."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and b"python" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def mark() -> Iterator[str]:
    value = uuid.uuid4().hex
    yield value
    for pid in marked_pids(value):  # whatever a failing test left behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_during_sync_prints_the_json_error_and_no_worker_traceback(
    sync_fleet, tmp_path: Path
) -> None:
    proc = start(
        ["schema", "sync", "--parallel", "2", "--json"],
        {
            "BIZOS_TENANT_MIGRATIONS_EXTRA": ADD,
            "BIZOS_PAUSE_AT": "sync.target.1",
            "BIZOS_PAUSE_RELEASE": str(tmp_path / "never"),
        },
    )
    seen = wait_for_pause(proc, "sync.target.1")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["error"]["type"] == "interrupted"
    assert doc["error"]["exit_code"] == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == (
        "error: Interrupted (Ctrl-C); run the same command again to continue."
    )
    # As the message says: the same command again finishes the run.
    again = subprocess.run(
        [sys.executable, "-m", "bizosctl", "schema", "sync", "--json"],
        env={**os.environ, "BIZOS_TENANT_MIGRATIONS_EXTRA": ADD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["ok"] and doc["failed"] == [], doc
    assert doc["summary"]["failed"] == 0 and not doc["failed"], doc


def test_sigkilled_sync_leaves_no_worker_forkserver_or_tracker(sync_fleet, mark: str) -> None:
    proc = start(
        ["schema", "sync", "--parallel", "2", "--json"],
        {"BIZOS_TENANT_MIGRATIONS_EXTRA": ADD, "BIZOS_CRASH_AT": "sync.target.1", MARK: mark},
        capture=False,
    )
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    left = marked_pids(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_pids(mark)
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left]


def test_ctrl_c_during_a_move_stops_the_copy(ctl, make_tenant, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from test_moves import exists_at

    slug = make_tenant(tier="schema")
    load_sample_data(ctl, slug)
    tid = str(ctl.route(slug).tenant_id)
    release = tmp_path / "release"
    proc = start(
        ["tenant", "move", slug, "--to-tier", "isolated", "--parallel", "1", "--json"],
        {"BIZOS_PAUSE_AT": "move.copy.page", "BIZOS_PAUSE_RELEASE": str(release)},
    )
    seen = wait_for_pause(proc, "move.copy.page")
    os.killpg(proc.pid, signal.SIGINT)
    release.touch()  # the paused copy goes on: it must stop at its next page
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + err
    assert json.loads(out)["error"]["type"] == "interrupted"
    # Nothing was committed into the target after the Ctrl-C (neither the table being copied
    # nor the ones queued behind it).
    assert exists_at(ctl, "global-1", f"t_{slug}", f"t_{slug}", tid) == 0
    r = cli("tenant", "move", slug, "--resume", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["status"] == "done"
    assert exists_at(ctl, "global-1", f"t_{slug}", f"t_{slug}", tid) > 0


@pytest.mark.parametrize("json_flag", [True, False])
def test_ctrl_c_while_bizosctl_starts_is_an_interrupt_not_aborted(
    fleet, tmp_path: Path, json_flag
) -> None:  # type: ignore[no-untyped-def]
    """Before a command runs (imports, argument parsing), Ctrl-C gave Click's bare
    "Aborted!" and no JSON document; now the command does not run and reports the interrupt."""
    release = tmp_path / "release"
    args = ["tenant", "list"] + (["--json"] if json_flag else [])
    proc = start(args, {"BIZOS_PAUSE_AT": "cli.start", "BIZOS_PAUSE_RELEASE": str(release)})
    wait_for_pause(proc, "cli.start")
    os.killpg(proc.pid, signal.SIGINT)
    release.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Aborted!" not in err
    assert err.strip() == "error: Interrupted (Ctrl-C); run the same command again to continue."
    if json_flag:
        assert json.loads(out)["error"]["type"] == "interrupted"
    else:
        assert out == ""


def _fill_members(ctl, slug: str, n: int) -> None:  # type: ignore[no-untyped-def]
    """``n`` members with long (valid, encrypted) names: a table big enough for rotation's
    worker processes (``rotation.PROCESS_PAGES``)."""
    from sqlalchemy import insert

    from bizosctl.security.fields import blind_index, encrypt
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Member

    tid = ctl.route(slug).tenant_id
    ring = ctl.keyring
    rows = []
    for i in range(n):
        mid = uuid.uuid4()
        email = f"m{i}@{slug}.example"

        def enc(value: str, column: str, mid: uuid.UUID = mid) -> str:
            return encrypt(ring, value, tenant_id=tid, table="members", column=column, row=mid)

        rows.append(
            {
                "tenant_id": tid,
                "id": mid,
                "email_enc": enc(email, "email"),
                "email_bidx": blind_index(ring, email),
                "name_enc": enc(f"Member {i} " + "x" * 600, "name"),
            }
        )
    with tenant_session(ctl, slug, actor="test") as s:
        s.execute(insert(Member), rows)


def test_sigkilled_pii_rotation_leaves_no_worker_forkserver_or_tracker(
    initialised_home, cli, mark: str
) -> None:  # type: ignore[no-untyped-def]
    """The rotation's worker processes (a table of PROCESS_PAGES pages or more) die with the
    command, as sync's do."""
    from sqlalchemy import text

    from bizosctl.catalog.control import get_control
    from bizosctl.db.engines import get_engine
    from bizosctl.security.rotation import PROCESS_PAGES

    ctl = get_control()
    for slug in ("pool-a", "pool-b"):
        r = cli("tenant", "create", slug, "--name", slug, "--tier", "schema", "--region", "global")
        assert r.exit_code == 0, r.stderr
        _fill_members(ctl, slug, 4500)
    route = ctl.route("pool-a")
    admin = get_engine(ctl.server(route.server).admin_url(route.database), pooled=False)
    with admin.connect() as conn:
        pages = conn.execute(
            text(
                "SELECT pg_relation_size(format('%I.members', CAST(:s AS text))::regclass) / 8192"
            ),
            {"s": route.schema},
        ).scalar_one()
    assert pages >= PROCESS_PAGES, pages  # else the pool never starts and this tests nothing
    proc = start(
        ["secrets", "rotate", "pii", "--workers", "2", "--json"],
        {"BIZOS_CRASH_AT": "rotate.target.2", MARK: mark},
        capture=False,
    )
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    left = marked_pids(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_pids(mark)
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left]
