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
from bizosctl.tenancy.names import TIERS
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


def same_data(before: dict[str, int], after: dict[str, int]) -> bool:
    """The tenant's rows are all there, but for the audit trail and the move's own event."""
    skip = {"audit_logs", "outbox"}
    return {k: v for k, v in after.items() if k not in skip} == {
        k: v for k, v in before.items() if k not in skip
    }


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
    assert same_data(before, after)
    assert after["audit_logs"] >= before["audit_logs"]
    # a move to a higher tier announces itself (tenant.upgraded), once; others do not
    upgrade = TIERS.index(dst) > TIERS.index(src)
    assert after["outbox"] == before["outbox"] + upgrade
    # the application writes at the new place
    with tenant_session(ctl, slug, actor="after-move") as s:
        assert s.execute(text("update tasks set title = title || '.'")).rowcount == 8
    # the source is kept, frozen, until purged; the neighbour in the shared tables is untouched
    assert exists_at(ctl, old.server, old.database, old.schema, old.tenant_id) == 5
    assert count_rows(ctl, neighbour)["members"] == 5
    r = cli("tenant", "move", slug, "--purge-source", "--force", "--yes", "--json")
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
            f"postgresql://byo_admin@127.0.0.1:{port}/postgres",
            "--insecure",
            env={"BIZOS_SERVER_PASSWORD": "byo-pass-123"},
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
    "move.announced",
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
    assert same_data(before, after)
    assert after["outbox"] == before["outbox"] + 1  # tenant.upgraded, once


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


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read"])
def test_statement_that_changes_its_row_after_the_freeze_is_not_lost(ctl, make_tenant, isolation):
    """An UPDATE passes the statement-level write guard before the freeze, then waits in a
    subquery (pg_sleep) and changes its row after the move switched. It must either fail with
    the retryable BZ503 (and then land on the target when retried) or be at the target: an
    acknowledged write on the abandoned source is a lost write."""
    slug = make_tenant(tier="shared", region="global")
    load_sample_data(ctl, slug)
    with tenant_session(ctl, slug, actor="w") as s:
        task = s.execute(text("select id from tasks order by id limit 1")).scalar_one()
    outcome: dict[str, object] = {}
    started = threading.Event()

    def slow_update() -> None:
        # As the application would: the route's login role, the tenant context set by hand
        # (tenant_session cannot choose the isolation level), retried on a retryable error.
        while True:
            route = ctl.route(slug)
            handle = ctl.server(route.server)
            eng = get_engine(handle.login_url(route.database, route.role, route.password))
            try:
                with eng.connect().execution_options(isolation_level=isolation.upper()) as c:
                    c.execute(
                        text(
                            "select set_config('bizos.tenant_id', :t, true), "
                            "set_config('search_path', :p, true)"
                        ),
                        {"t": str(route.tenant_id), "p": f'"{route.schema}"'},
                    )
                    started.set()
                    c.execute(
                        text(
                            "update tasks set description = 'late write' where id = "
                            "(select :id from (select pg_sleep(1.5)) as z)"
                        ),
                        {"id": task},
                    )
                    c.commit()
                outcome["acked"] = True
                return
            except Exception as exc:
                msg = str(exc)
                if "tenant is moving" not in msg and "could not serialize" not in msg:
                    outcome["error"] = exc
                    return
                outcome["refused"] = msg
                time.sleep(0.05)

    thread = threading.Thread(target=slow_update)

    def before_verify(move):
        # Start the writer and wait until its statement sleeps, past the write guard.
        thread.start()
        assert started.wait(10)
        admin = ctl.server(move.source.server)
        eng = get_engine(admin.admin_url(move.source.database), pooled=False)
        deadline = time.monotonic() + 10
        with eng.connect() as c:
            while time.monotonic() < deadline:
                if c.execute(
                    text("select count(*) from pg_stat_activity where wait_event = 'PgSleep'")
                ).scalar_one():
                    return
                c.rollback()
                time.sleep(0.01)
        raise AssertionError("the slow update never started")

    report = move_tenant(
        ctl,
        MoveRequest(slug=slug, to_tier="isolated", max_freeze_ms=5000),
        hooks={"before_verify": before_verify},
    )
    thread.join(timeout=30)
    assert report.status == "done"
    assert "error" not in outcome, outcome
    assert outcome.get("acked")
    assert "refused" in outcome  # the late change met the freeze, and was retried
    with tenant_session(ctl, slug, actor="check", read_only=True) as s:
        value = s.execute(
            text("select description from tasks where id = :id"), {"id": task}
        ).scalar_one()
    assert value == "late write"  # the acknowledged write is where the tenant lives now


def test_rerunning_a_finished_move_is_done_and_a_tenant_already_there_is_refused(
    ctl, make_tenant, cli
):
    """A script reruns the move it issued (a kill after the switch, a retry on timeout): the
    move is done (exit 0, when); the same request for a tenant that was always there is bad
    input (exit 2)."""
    slug = make_tenant(tier="shared", region="global")
    first = cli("tenant", "move", slug, "--to-tier", "isolated", "--json")
    assert first.exit_code == 0, first.output
    again = cli("tenant", "move", slug, "--to-tier", "isolated", "--json")
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["status"] == "done"
    assert doc["operation"] == json.loads(first.stdout)["operation"]
    assert doc["done_at"]
    born_isolated = make_tenant(tier="isolated", region="global")
    refused = cli("tenant", "move", born_isolated, "--to-tier", "isolated")
    assert refused.exit_code == 2
    assert "is already isolated" in refused.output
    # Another destination is a new move, not the old one.
    other = cli("tenant", "move", slug, "--to-tier", "schema", "--json")
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout)["operation"] != doc["operation"]


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("fast", "invalid --max-rate 'fast'"),
        ("10", "--max-rate must be at least 64KB a second"),
        ("20MB\n", "invalid --max-rate"),
        ("-5MB", "invalid --max-rate"),
    ],
)
def test_move_max_rate_bad_input(make_tenant, cli, rate, message):
    slug = make_tenant(tier="shared")
    result = cli("tenant", "move", slug, "--to-tier", "isolated", "--max-rate", rate)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_gentle_move_copies_under_its_rate(ctl, make_tenant, cli):
    """--max-rate caps the copy: the copy steps together take at least bytes / rate."""
    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)
    with tenant_session(ctl, slug, actor="load") as s:  # about 2 MB of task descriptions
        s.execute(
            text(
                "insert into tasks (tenant_id, project_id, title, description, position) "
                "select tenant_id, (select id from projects limit 1), 'bulk-' || g, "
                "repeat(md5(g::text), 64), g from tenant_state, generate_series(1, 1000) g"
            )
        )
    started = time.monotonic()
    result = cli("tenant", "move", slug, "--to-tier", "isolated", "--max-rate", "1MB", "--json")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["copied_bytes"] > 2 * 1024 * 1024
    # A lower bound only (the cap is a promise about slowness, not speed).
    assert elapsed >= doc["copied_bytes"] / (1024 * 1024) - 0.1


def test_another_destination_while_a_move_is_unfinished_is_refused(
    ctl, make_tenant, run_bizosctl, cli
):
    """`tenant move X --to-tier shared` while X's move to isolated is unfinished names that
    move instead of silently resuming it."""
    slug = make_tenant(tier="schema", region="global")
    killed = run_bizosctl(
        "tenant", "move", slug, "--to-tier", "isolated", env={"BIZOS_CRASH_AT": "move.capture"}
    )
    assert killed.returncode == -9
    r = cli("tenant", "move", slug, "--to-tier", "shared")
    assert r.exit_code == 2, r.output
    assert "has an unfinished move to isolated on global-1" in r.stderr
    assert f"tenant move {slug} --resume" in r.stderr and "--abort" in r.stderr
    assert ctl.route(slug).tier == "schema"
    # the same command again finishes that move
    again = cli("tenant", "move", slug, "--to-tier", "isolated", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["resumed"] is True


def _admin(ctl, slug):
    route = ctl.route(slug)
    return route, get_engine(ctl.server(route.server).admin_url(route.database), pooled=False)


def test_move_of_a_drifted_source_is_refused_before_anything_is_made(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema", region="global")
    load_sample_data(ctl, slug)
    route, eng = _admin(ctl, slug)
    with eng.begin() as c:
        c.execute(text(f'alter table "{route.schema}".tasks add column hand_made text'))
    try:
        r = cli("tenant", "move", slug, "--to-tier", "isolated")
        assert r.exit_code == 2, r.output
        assert "differs from revision" in r.stderr and "tasks.hand_made" in r.stderr
        assert "Nothing was changed" in r.stderr
        assert ctl.route(slug).status == "active"
        assert exists_at(ctl, "global-1", "t_" + slug, "t_" + slug, route.tenant_id) == 0
    finally:  # the fleet is shared: later tests' `schema drift` must not see it
        with eng.begin() as c:
            c.execute(text(f'alter table "{route.schema}".tasks drop column hand_made'))


def test_move_of_a_source_ahead_of_the_code_is_refused(ctl, make_tenant, cli):
    slug = make_tenant(tier="schema", region="global")
    route, eng = _admin(ctl, slug)
    table = f'"{route.schema}".alembic_version'
    with eng.begin() as c:
        before = c.execute(text(f"select version_num from {table}")).scalar_one()
        c.execute(text(f"update {table} set version_num = 't999'"))
    try:
        r = cli("tenant", "move", slug, "--to-tier", "isolated")
        assert r.exit_code == 2, r.output
        assert "is at revision t999, which this bizosctl does not know" in r.stderr
        assert ctl.route(slug).status == "active"
    finally:  # the fleet is shared: later tests' `schema status` must not see t999
        with eng.begin() as c:
            c.execute(text(f"update {table} set version_num = :v"), {"v": before})


def test_a_move_that_fails_after_it_started_says_how_to_continue_or_undo(ctl, make_tenant, cli):
    slug = make_tenant(tier="shared", region="global")

    def fail(move, tables):
        raise OperationFailed("the target went away")

    with pytest.raises(OperationFailed) as err:
        move_tenant(ctl, MoveRequest(slug=slug, to_tier="isolated"), hooks={"after_copy": fail})
    message = str(err.value)
    assert message.startswith("the target went away. The move of")
    assert f"tenant move {slug} --resume" in message and f"tenant move {slug} --abort" in message
    r = cli("tenant", "move", slug, "--abort", "--json")
    assert r.exit_code == 0, r.output
    assert ctl.route(slug).status == "active" and ctl.route(slug).tier == "shared"


def test_every_kept_source_is_listed_purgeable_and_expires(ctl, make_tenant, cli):
    """shared -> isolated -> schema -> shared keeps two sources (the shared rows are where it
    lives again): both are listed, one can be purged by its move, the others all at once, and
    a move back to isolated is possible again; expired ones go by `tenant purge-sources`."""
    slug = make_tenant(tier="shared")
    ops = []
    for tier in ("isolated", "schema", "shared"):
        r = cli("tenant", "move", slug, "--to-tier", tier, "--json")
        assert r.exit_code == 0, r.output
        ops.append(json.loads(r.stdout)["operation"])
    shown = json.loads(cli("tenant", "show", slug, "--json").stdout)["kept_sources"]
    assert [(k["source"]["tier"], k["operation"]) for k in shown] == [
        ("isolated", ops[1]),
        ("schema", ops[2]),
    ]
    status = json.loads(cli("tenant", "move", slug, "--status", "--json").stdout)
    assert [k["operation"] for k in status["kept_sources"]] == [ops[1], ops[2]]
    # the database the isolated copy holds blocks a move back to isolated, with advice
    r = cli("tenant", "move", slug, "--to-tier", "isolated")
    assert r.exit_code == 2 and "--purge-source" in r.stderr
    r = cli("tenant", "move", slug, "--purge-source", "--yes")
    assert r.exit_code == 2 and "pass --force" in r.stderr  # not expired yet
    r = cli("tenant", "move", slug, "--purge-source", "--operation", ops[2][:8], "--force",
            "--yes", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [p["source"]["tier"] for p in json.loads(r.stdout)["purged"]] == ["schema"]
    r = cli("tenant", "move", slug, "--purge-source", "--force", "--yes", "--json")
    assert [p["source"]["tier"] for p in json.loads(r.stdout)["purged"]] == ["isolated"]
    assert json.loads(cli("tenant", "show", slug, "--json").stdout)["kept_sources"] == []
    r = cli("tenant", "move", slug, "--to-tier", "isolated", "--keep-source", "0s", "--json")
    assert r.exit_code == 0, r.output
    r = cli("tenant", "purge-sources", "--dry-run", "--json")
    assert slug in {k["slug"] for k in json.loads(r.stdout)["would_purge"]}
    r = cli("tenant", "purge-sources", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert slug in {p["slug"] for p in json.loads(r.stdout)["purged"]}
    assert json.loads(cli("tenant", "show", slug, "--json").stdout)["kept_sources"] == []
    assert exists_at(ctl, "global-1", "bizos_shared", "shared", ctl.route(slug).tenant_id) == 0
