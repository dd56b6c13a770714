"""tenant move: every direction, verification, crashes at every step, a writer throughout."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from sqlalchemy import text

from bizosctl.db.engines import get_engine
from bizosctl.errors import OperationFailed, TenantNotWritable
from bizosctl.moves.engine import move_tenant
from bizosctl.moves.plan import MoveRequest
from bizosctl.tenancy.lifecycle import count_rows
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data

PAIRS = [
    ("shared", "schema"),
    ("shared", "isolated"),
    ("schema", "shared"),
    ("schema", "isolated"),
    ("isolated", "shared"),
    ("isolated", "schema"),
]


def exists_at(ctl, server, database, schema, tenant_id):
    """Rows of the tenant in members at that place (0 when the place is gone)."""
    admin = ctl.server(server)
    with get_engine(admin.admin_url("postgres"), pooled=False).connect() as c:
        if not c.execute(
            text("select 1 from pg_database where datname = :d"), {"d": database}
        ).first():
            return 0
    with get_engine(admin.admin_url(database), pooled=False).connect() as c:
        if not c.execute(
            text("select 1 from pg_namespace where nspname = :s"), {"s": schema}
        ).first():
            return 0
        return c.execute(
            text(f'select count(*) from "{schema}".members where tenant_id = :t'), {"t": tenant_id}
        ).scalar_one()


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_move_every_direction(ctl, make_tenant, cli, src, dst):
    slug = make_tenant(tier=src, region="id")
    neighbour = make_tenant(tier="shared", region="id")
    load_sample_data(ctl, slug)
    load_sample_data(ctl, neighbour)
    before = count_rows(ctl, slug)
    old = ctl.route(slug)
    r = cli("tenant", "move", slug, "--to-tier", dst, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "done" and all(t["match"] for t in report["tables"].values())
    assert report["freeze_ms"] is not None
    new = ctl.route(slug)
    assert new.tier == dst and (new.database, new.schema) != (old.database, old.schema)
    after = count_rows(ctl, slug)
    assert {k: v for k, v in after.items() if k != "audit_logs"} == {
        k: v for k, v in before.items() if k != "audit_logs"
    }
    assert after["audit_logs"] >= before["audit_logs"]
    # the application writes at the new place
    with tenant_session(ctl, slug, actor="after-move") as s:
        assert s.execute(text("update tasks set title = title || '.'")).rowcount == 8
    # the source is kept, frozen, until purged; the neighbour in the shared tables is untouched
    assert exists_at(ctl, old.server, old.database, old.schema, old.tenant_id) == 5
    assert count_rows(ctl, neighbour)["members"] == 5
    r = cli("tenant", "move", slug, "--purge-source", "--force", "--json")
    assert r.exit_code == 0, r.stderr
    assert exists_at(ctl, old.server, old.database, old.schema, old.tenant_id) == 0
    assert count_rows(ctl, neighbour)["members"] == 5


def test_move_across_regions_needs_a_reason(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, slug)
    r = cli("tenant", "move", slug, "--to-tier", "schema", "--to-region", "id")
    assert r.exit_code == 2
    assert '--residency-change "reason"' in r.stderr
    r = cli(
        "tenant",
        "move",
        slug,
        "--to-tier",
        "schema",
        "--to-region",
        "id",
        "--residency-change",
        "customer asked for Jakarta",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    assert ctl.route(slug).region == "id" and ctl.route(slug).server == "id-1"
    status = json.loads(cli("tenant", "move", slug, "--status", "--json").stdout)
    assert status["status"] == "done"
    from bizosctl.catalog.models import Operation

    with ctl.catalog() as s:
        op = s.get(Operation, uuid.UUID(status["operation"]))
        assert op.params["residency_change"] == "customer asked for Jakarta"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--to-tier", "schema"), 2, "is already schema on global-1 in global"),
        (("--to-tier", "gold"), 2, "unknown tier 'gold'"),
        (
            ("--to-tier", "shared", "--to-region", "mars", "--residency-change", "x"),
            3,
            "unknown region 'mars'",
        ),
        (("--to-tier", "shared", "--to-server", "nope-1"), 3, "no server named 'nope-1'"),
        (
            ("--to-tier", "shared", "--to-server", "id-1"),
            2,
            "server 'id-1' is in region 'id', not 'global'",
        ),
        (("--to-tier", "shared", "--max-freeze", "0"), 2, "--max-freeze must be more than zero"),
        (("--to-tier", "shared", "--keep-source", "forever"), 2, "invalid --keep-source 'forever'"),
        (("--status", "--abort"), 2, "choose one of --status, --abort"),
        ((), 2, "--to-tier is required"),
    ],
)
def test_move_bad_input(make_tenant, cli, args, code, message):
    slug = make_tenant(tier="schema", region="global")
    r = cli("tenant", "move", slug, *args)
    assert r.exit_code == code, r.stderr
    assert message in r.stderr


def test_move_unknown_tenant(cli):
    r = cli("tenant", "move", "no-such-tenant", "--to-tier", "shared")
    assert r.exit_code == 3
    assert "no tenant named 'no-such-tenant'" in r.stderr


def test_move_not_enough_space(make_tenant, cli):
    slug = make_tenant(tier="schema", region="global")
    r = cli(
        "tenant",
        "move",
        slug,
        "--to-tier",
        "isolated",
        env={"BIZOS_MOVE_RESERVE_BYTES": str(2**60)},
    )
    assert r.exit_code == 2
    assert "not enough space on global-1" in r.stderr


def test_move_to_unreachable_target(fresh_home, cli, tcp_cluster_factory):
    assert cli("init").exit_code == 0
    port, stop = tcp_cluster_factory()
    assert (
        cli(
            "region",
            "add",
            "far",
            "--url",
            f"postgresql://byo_admin:byo-pass-123@127.0.0.1:{port}/postgres",
        ).exit_code
        == 0
    )
    assert (
        cli(
            "tenant", "create", "mover", "--name", "M", "--region", "global", "--tier", "schema"
        ).exit_code
        == 0
    )
    stop()
    r = cli(
        "tenant",
        "move",
        "mover",
        "--to-tier",
        "schema",
        "--to-region",
        "far",
        "--residency-change",
        "t",
    )
    assert r.exit_code == 1
    assert "target far-1: connection failed" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(cli("tenant", "show", "mover", "--json").stdout)["status"] == "active"


def test_checksum_mismatch_aborts_without_switching(ctl, make_tenant):
    slug = make_tenant(tier="shared", region="global")
    load_sample_data(ctl, slug)
    old = ctl.route(slug)

    def corrupt(move):
        with move.dst.begin() as c:
            c.execute(text("set local session_replication_role = replica"))
            c.execute(
                text(
                    f'update "{move.target.schema}".invoices set total = total + 1 '
                    "where ctid = (select min(ctid) from "
                    f'"{move.target.schema}".invoices)'
                )
            )

    with pytest.raises(OperationFailed, match="differ in invoices; the route is unchanged"):
        move_tenant(
            ctl, MoveRequest(slug=slug, to_tier="isolated"), hooks={"before_verify": corrupt}
        )
    route = ctl.route(slug)
    assert (route.tier, route.database, route.status) == ("shared", old.database, "active")
    assert exists_at(ctl, "global-1", "t_" + slug, "t_" + slug, old.tenant_id) == 0
    with tenant_session(ctl, slug, actor="t") as s:  # writes work again
        assert s.execute(text("update tasks set title = 'ok'")).rowcount == 8


MOVE_STEPS = [
    "move.registered",
    "move.provision",
    "move.capture",
    "move.copy:tasks",
    "move.freeze",
    "move.switch",
    "move.cleanup",
]


@pytest.mark.parametrize("point", MOVE_STEPS)
def test_sigkill_at_every_step_then_the_same_command_finishes(
    ctl, make_tenant, run_bizosctl, point
):
    slug = make_tenant(tier="shared", region="id")
    load_sample_data(ctl, slug)
    before = count_rows(ctl, slug)
    args = ("tenant", "move", slug, "--to-tier", "isolated", "--json")
    first = run_bizosctl(*args, env={"BIZOS_CRASH_AT": point})
    assert first.returncode == -9, first.stderr
    second = run_bizosctl(*args)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["status"] == "done" and report["resumed"] is True
    route = ctl.route(slug)
    assert route.tier == "isolated" and route.status == "active"
    after = count_rows(ctl, slug)
    assert {k: v for k, v in after.items() if k != "audit_logs"} == {
        k: v for k, v in before.items() if k != "audit_logs"
    }


def test_abort_returns_the_tenant(ctl, make_tenant, run_bizosctl, cli):
    slug = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, slug)
    assert (
        run_bizosctl(
            "tenant", "move", slug, "--to-tier", "isolated", env={"BIZOS_CRASH_AT": "move.freeze"}
        ).returncode
        == -9
    )
    # frozen: the database refuses writes with the retryable error
    with (
        pytest.raises(TenantNotWritable, match="tenant is moving"),
        tenant_session(ctl, slug, actor="x") as s,
    ):
        s.execute(text("update tasks set title = 'x'"))
    r = cli("tenant", "move", slug, "--abort", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "aborted"
    assert ctl.route(slug).tier == "schema" and ctl.route(slug).status == "active"
    assert exists_at(ctl, "global-1", "bizos_shared", "t_" + slug, ctl.route(slug).tenant_id) == 5
    with get_engine(ctl.server("global-1").admin_url("postgres"), pooled=False).connect() as c:
        assert not c.execute(
            text("select 1 from pg_database where datname = :d"), {"d": "t_" + slug}
        ).first()
    with tenant_session(ctl, slug, actor="x") as s:
        assert s.execute(text("update tasks set title = 'x'")).rowcount == 8
    r = cli("tenant", "move", slug, "--abort")
    assert r.exit_code == 2 and f"tenant '{slug}' is not moving" in r.stderr


def test_already_moving_is_refused_while_the_move_runs(ctl, make_tenant, run_bizosctl, cli):
    slug = make_tenant(tier="schema", region="global")
    assert (
        run_bizosctl(
            "tenant", "move", slug, "--to-tier", "isolated", env={"BIZOS_CRASH_AT": "move.capture"}
        ).returncode
        == -9
    )
    r = cli("tenant", "move", slug, "--to-tier", "shared", "--dry-run")
    assert r.exit_code == 2 and "is already moving" in r.stderr
    r = cli("tenant", "lock", slug)
    assert r.exit_code == 2 and "is moving" in r.stderr
    assert cli("tenant", "move", slug, "--resume", "--json").exit_code == 0


def test_writer_throughout_the_move_loses_nothing(ctl, make_tenant):
    """Every acknowledged write is at the target afterwards, exactly once, with its last value."""
    slug = make_tenant(tier="shared", region="global")
    load_sample_data(ctl, slug)
    with tenant_session(ctl, slug, actor="w") as s:
        project = s.execute(text("select id from projects limit 1")).scalar_one()
    acked: dict[str, int] = {}
    retried = [0]
    stop = threading.Event()

    errors: list[BaseException] = []

    def writer():
        try:
            write()
        except BaseException as exc:
            errors.append(exc)
            raise

    def write():
        n = 0
        while not stop.is_set():
            n += 1
            key = f"w-{n}"
            while True:
                try:
                    with tenant_session(ctl, slug, actor="writer") as s:
                        s.execute(
                            text(
                                "insert into tasks (tenant_id, project_id, title, position) "
                                "select tenant_id, :p, :k, 0 from tenant_state"
                            ),
                            {"p": project, "k": key},
                        )
                        if n > 1:  # update an earlier row too
                            s.execute(
                                text("update tasks set position = position + 1 where title = :k"),
                                {"k": f"w-{n - 1}"},
                            )
                    acked[key] = 0
                    if n > 1:
                        acked[f"w-{n - 1}"] += 1
                    break
                except TenantNotWritable:
                    retried[0] += 1
                    time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        report = move_tenant(ctl, MoveRequest(slug=slug, to_tier="isolated", max_freeze_ms=5000))
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert report.status == "done"
    assert len(acked) > 10
    with tenant_session(ctl, slug, actor="check", read_only=True) as s:
        rows = dict(
            s.execute(text("select title, position from tasks where title like 'w-%'")).all()
        )
        dupes = s.execute(
            text("select count(*) - count(distinct title) from tasks where title like 'w-%'")
        ).scalar_one()
    assert dupes == 0
    assert rows == acked  # every acknowledged insert and update, nothing more


def test_sync_and_delete_leave_a_moving_tenant_alone(ctl, make_tenant, run_bizosctl, cli):
    slug = make_tenant(tier="schema", region="global")
    assert (
        run_bizosctl(
            "tenant", "move", slug, "--to-tier", "isolated", env={"BIZOS_CRASH_AT": "move.capture"}
        ).returncode
        == -9
    )
    r = cli("schema", "sync", "--tenant", slug, "--json")
    assert r.exit_code == 1
    [busy] = json.loads(r.stdout)["failed"]
    assert busy["status"] == "busy" and f"tenant {slug} is moving" in busy["error"]
    r = cli("tenant", "delete", slug, "--yes")
    assert r.exit_code == 2 and f"tenant move --abort {slug}" in r.stderr
    assert cli("tenant", "move", slug, "--abort").exit_code == 0
    assert cli("tenant", "delete", slug, "--yes").exit_code == 0


def test_concurrent_writers_with_open_transactions_do_not_break_the_move(ctl, make_tenant):
    """Log sequence numbers are taken at insert, not commit: a slow transaction's entries
    appear after later ones were read. The catch-up must still apply them (regression)."""
    import random

    slug = make_tenant(tier="shared", region="global")
    load_sample_data(ctl, slug)
    with tenant_session(ctl, slug, actor="w") as s:
        project = s.execute(text("select id from projects limit 1")).scalar_one()
        s.execute(
            text(
                "insert into tasks (tenant_id, project_id, title) "
                "select tenant_id, :p, 'bulk-' || g from tenant_state, generate_series(1, 3000) g"
            ),
            {"p": project},
        )
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        rnd = random.Random(w)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                key = f"c{w}-{n}"
                while True:
                    try:
                        with tenant_session(ctl, slug, actor="writer") as s:
                            s.execute(
                                text(
                                    "insert into tasks (tenant_id, project_id, title) "
                                    "select tenant_id, :p, :k from tenant_state"
                                ),
                                {"p": project, "k": key},
                            )
                            time.sleep(rnd.uniform(0, 0.05))  # keep the transaction open a while
                        with lock:
                            acked.add(key)
                        break
                    except TenantNotWritable:
                        time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        report = move_tenant(ctl, MoveRequest(slug=slug, to_tier="isolated", max_freeze_ms=5000))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert report.status == "done"
    with tenant_session(ctl, slug, actor="check", read_only=True) as s:
        titles = s.execute(text("select title from tasks where title like 'c%-%'")).scalars().all()
    assert len(titles) == len(set(titles))
    assert set(titles) == acked


def test_change_committed_after_a_later_one_was_applied_is_not_skipped(ctl, make_tenant):
    """Deterministic version of the race above: transaction A logs a change and commits only
    after transaction B's later change has been read and applied by a catch-up."""
    slug = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, slug)
    with tenant_session(ctl, slug, actor="w") as s:
        project = s.execute(text("select id from projects limit 1")).scalar_one()
    insert = text(
        "insert into tasks (tenant_id, project_id, title) "
        "select tenant_id, :p, :k from tenant_state"
    )

    def race(move, tables):
        session_a = tenant_session(ctl, slug, actor="a")
        a = session_a.__enter__()
        a.execute(insert, {"p": project, "k": "slow-a"})  # logged first, not committed
        with tenant_session(ctl, slug, actor="b") as b:
            b.execute(insert, {"p": project, "k": "fast-b"})
        move.catch_up(tables, until_empty=True)  # applies B; A is not visible yet
        session_a.__exit__(None, None, None)  # A commits now

    report = move_tenant(
        ctl, MoveRequest(slug=slug, to_tier="isolated"), hooks={"after_copy": race}
    )
    assert report.status == "done"
    with tenant_session(ctl, slug, actor="check", read_only=True) as s:
        titles = set(
            s.execute(text("select title from tasks where title in ('slow-a', 'fast-b')")).scalars()
        )
    assert titles == {"slow-a", "fast-b"}


def test_deleting_a_moved_tenant_drops_its_kept_source(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, slug)
    old = ctl.route(slug)
    assert cli("tenant", "move", slug, "--to-tier", "isolated").exit_code == 0
    assert exists_at(ctl, old.server, old.database, old.schema, old.tenant_id) == 5
    r = cli("tenant", "delete", slug, "--yes")
    assert r.exit_code == 0, r.stderr
    assert exists_at(ctl, old.server, old.database, old.schema, old.tenant_id) == 0
    assert exists_at(ctl, "global-1", "t_" + slug, "t_" + slug, old.tenant_id) == 0
