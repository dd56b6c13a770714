"""The operations engine's few round trips keep their guarantees: the run's lock, the
checkpoints in order with a caller's writes, the unlock only after the close is committed, and
catalog connections pinged only when idle yet never handed out dead for long."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text

from bizosctl.catalog.operations import (
    OperationRun,
    OperationStatus,
    _lock_key,
    claim,
    describe,
    is_alive,
    steps_of,
)
from bizosctl.db.engines import get_engine, is_disconnect, psycopg_conninfo
from bizosctl.errors import Busy, InvalidInput, NotFound
from bizosctl.runners import resume, start_ping


def other_session(ctl):
    """A plain psycopg session on the catalog (another process, as far as locks go)."""
    return psycopg.connect(**psycopg_conninfo(ctl.catalog_engine.url), autocommit=True)


def _wait_gone(ctl, pid: int, timeout: float = 30.0) -> None:
    """Until the server process of a closed session has exited (its locks with it)."""
    deadline = time.monotonic() + timeout
    with other_session(ctl) as probe:
        while probe.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} is still there"
            time.sleep(0.01)


def new_ping(ctl):
    with ctl.catalog() as s:
        return start_ping(s, status=OperationStatus.QUEUED)


def test_a_run_holds_the_lock_until_its_close_is_committed(ctl):
    op_id = new_ping(ctl)
    with other_session(ctl) as other, OperationRun(ctl, op_id) as run:
        assert is_alive(ctl, op_id)
        assert describe(ctl, op_id).status == OperationStatus.RUNNING
        run.step("one", n=1)
        run.finish(OperationStatus.DONE)
        # unlocked by finish, after its commit: whoever gets the lock sees it done
        got = other.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(op_id),)).fetchone()
        assert got == (True,)
        status = other.execute("SELECT status FROM operations WHERE id = %s", (op_id,)).fetchone()
        assert status == ("done",)
        other.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(op_id),))
    assert [s.name for s in steps_of(ctl, op_id)] == ["one"]
    assert steps_of(ctl, op_id)[0].data == {"n": 1}


def test_a_second_run_of_a_live_operation_is_busy_and_changes_nothing(ctl):
    op_id = new_ping(ctl)
    with other_session(ctl) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (_lock_key(op_id),))
        with pytest.raises(Busy), OperationRun(ctl, op_id):
            pass
        assert describe(ctl, op_id, check_alive=False).status == OperationStatus.QUEUED
        pid = other.info.backend_pid
    # the lock dies with that session (its backend exits a moment after the client closed):
    # then the operation runs
    _wait_gone(ctl, pid)
    with OperationRun(ctl, op_id) as run:
        run.finish(OperationStatus.DONE)


def test_an_unknown_operation_is_not_found_and_leaves_no_lock(ctl):
    import uuid

    op_id = uuid.uuid4()
    with pytest.raises(NotFound), OperationRun(ctl, op_id):
        pass
    assert not is_alive(ctl, op_id)


def test_a_checkpoint_commits_what_the_caller_wrote_on_the_run_and_a_failure_neither(ctl):
    op_id = new_ping(ctl)
    with OperationRun(ctl, op_id) as run:
        run.conn.execute(
            text("UPDATE operations SET progress = '{\"done\": 7}' WHERE id = :id"), {"id": op_id}
        )
        run.step("with-a-write")
        assert describe(ctl, op_id).progress == {"done": 7}
        run.conn.execute(
            text("UPDATE operations SET progress = '{\"done\": 8}' WHERE id = :id"), {"id": op_id}
        )
        with pytest.raises(Exception, match="invalid input"):
            run.conn.execute(text("SELECT 'x'::int"))
    # the run's end rolled back the failed transaction and its pending write
    assert describe(ctl, op_id).progress == {"done": 7}
    assert not is_alive(ctl, op_id)


def test_finish_with_also_commits_both_or_neither(ctl):
    op_id = new_ping(ctl)

    def also(conn):
        conn.execute(
            text("UPDATE operations SET progress = '{\"x\": 1}' WHERE id = :id"), {"id": op_id}
        )

    with OperationRun(ctl, op_id) as run:
        run.finish(OperationStatus.DONE, also=also)
    op = describe(ctl, op_id)
    assert (op.status, op.progress) == ("done", {"x": 1})
    assert not is_alive(ctl, op_id)


def test_an_error_with_quotes_and_percent_signs_is_stored_as_given(ctl):
    op_id = new_ping(ctl)
    message = "it's 100% broken; DROP TABLE operations; -- %(id)s"
    with OperationRun(ctl, op_id) as run:
        run.finish(OperationStatus.FAILED, message)
    assert describe(ctl, op_id).error == message


def test_a_connection_idle_past_ping_idle_is_pinged_and_a_dead_one_replaced(ctl):
    engine = get_engine(ctl.catalog_engine.url, ping_idle=0.05)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with other_session(ctl) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (first,))
    deadline = time.monotonic() + 0.06
    while time.monotonic() < deadline:  # the pooled connection has been idle long enough
        time.sleep(0.01)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first


def test_a_connection_used_a_moment_ago_is_not_pinged_and_a_dead_one_is_a_disconnect(ctl):
    engine = get_engine(ctl.catalog_engine.url, ping_idle=3600)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.rollback()
    with other_session(ctl) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (first,))
    with engine.connect() as conn:
        with pytest.raises(Exception) as caught:
            conn.execute(text("SELECT 1"))
        assert is_disconnect(caught.value)
    with engine.connect() as conn:  # the dead one was dropped from the pool
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first


def test_a_raw_psycopg_error_of_a_dead_connection_is_a_disconnect(ctl):
    with other_session(ctl) as victim, other_session(ctl) as other:
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.Error) as caught:
            victim.execute("SELECT 1")
        assert is_disconnect(caught.value)
        with pytest.raises(psycopg.Error) as bad_sql:
            other.execute("SELECT 'x'::int")
        assert not is_disconnect(bad_sql.value)


# -- resume's claim: the read and the run's claim in one statement ---------------------------


def op_row(ctl, op_id):
    with other_session(ctl) as other:
        return other.execute(
            "SELECT status, pid, host, finished_at FROM operations WHERE id = %s", (op_id,)
        ).fetchone()


def test_a_claim_marks_the_run_and_the_run_opened_in_it_takes_it_over(ctl):
    import os

    op_id = new_ping(ctl)
    with claim(ctl, op_id, kinds=["ops.ping"]) as op:
        # what the runner gets is the operation as it was before the claim
        assert (op.status, op.pid, op.alive) == ("queued", None, False)
        assert op_row(ctl, op_id)[:2] == ("running", os.getpid())
        assert is_alive(ctl, op_id)  # held by the claim
        with OperationRun(ctl, op_id) as run:  # not Busy: it took the claim over
            run.step("one")
            run.finish(OperationStatus.DONE, step="two", data={"n": 2})
        assert not is_alive(ctl, op_id)
    assert op_row(ctl, op_id)[0] == "done"
    assert [(s.name, s.data) for s in steps_of(ctl, op_id)] == [("one", {}), ("two", {"n": 2})]
    assert not is_alive(ctl, op_id)


def test_a_claim_no_run_took_is_given_back_as_it_was(ctl):
    op_id = new_ping(ctl)
    before = op_row(ctl, op_id)
    with claim(ctl, op_id, kinds=["ops.ping"]):
        assert op_row(ctl, op_id)[0] == "running"
    assert op_row(ctl, op_id) == before
    assert not is_alive(ctl, op_id)


def test_a_claim_of_a_finished_operation_changes_nothing_and_takes_no_lock(ctl):
    op_id = new_ping(ctl)
    with OperationRun(ctl, op_id) as run:
        run.finish(OperationStatus.DONE)
    before = op_row(ctl, op_id)
    with claim(ctl, op_id, kinds=["ops.ping"]) as op:
        assert (op.status, op.alive) == ("done", False)
        assert not is_alive(ctl, op_id)
        with pytest.raises(InvalidInput):
            resume(ctl, op_id)
    assert op_row(ctl, op_id) == before
    assert resume(ctl, op_id, finished_ok=True)["already_finished"] is True


def test_a_claim_of_an_operation_another_process_runs_refuses_and_changes_nothing(ctl):
    op_id = new_ping(ctl)
    with OperationRun(ctl, op_id):  # a live run (its own connection: another session)
        before = op_row(ctl, op_id)
        with claim(ctl, op_id, kinds=["ops.ping"]) as op:
            assert op.alive and op.status == "running"
            with pytest.raises(Busy):
                OperationRun(ctl, op_id).__enter__()
        assert op_row(ctl, op_id) == before
        with pytest.raises(Busy):
            resume(ctl, op_id)
        assert is_alive(ctl, op_id)  # the live run kept its lock


def test_a_claim_of_a_kind_not_listed_only_reads(ctl):
    op_id = new_ping(ctl)
    with claim(ctl, op_id, kinds=[]) as op:
        assert op.status == "queued"
        assert op_row(ctl, op_id)[0] == "queued"
        assert not is_alive(ctl, op_id)
        with OperationRun(ctl, op_id) as run:  # the run claims it itself
            run.finish(OperationStatus.DONE)
    assert op_row(ctl, op_id)[0] == "done"


def step_rows(ctl, op_id):
    with other_session(ctl) as other:  # committed rows only
        return other.execute(
            "SELECT name, status, data FROM operation_steps WHERE op_id = %s ORDER BY at",
            (op_id,),
        ).fetchall()


def test_a_claim_records_the_kinds_first_step_and_the_run_finds_it_done(ctl):
    op_id = new_ping(ctl)
    with claim(ctl, op_id, kinds=["ops.ping"], first_steps={"ops.ping": "started"}) as op:
        assert op.status == "queued"
        # committed with the claim: a run killed now resumes after it
        assert step_rows(ctl, op_id) == [("started", "done", {})]
        with OperationRun(ctl, op_id) as run:
            assert "started" in run.completed
            run.finish(OperationStatus.DONE, step="waited")
    assert [s.name for s in steps_of(ctl, op_id)] == ["started", "waited"]


def test_a_claim_of_another_kind_records_no_first_step(ctl):
    op_id = new_ping(ctl)
    with claim(ctl, op_id, kinds=["ops.ping"], first_steps={"schema.sync": "started"}):
        assert step_rows(ctl, op_id) == []


def test_a_claim_no_run_took_takes_its_first_step_back(ctl):
    op_id = new_ping(ctl)
    before = op_row(ctl, op_id)
    with claim(ctl, op_id, kinds=["ops.ping"], first_steps={"ops.ping": "started"}):
        assert step_rows(ctl, op_id) == [("started", "done", {})]
    assert step_rows(ctl, op_id) == []
    assert op_row(ctl, op_id) == before
    assert not is_alive(ctl, op_id)


def test_a_first_step_an_earlier_run_recorded_stays_as_it_was(ctl):
    op_id = new_ping(ctl)
    with OperationRun(ctl, op_id) as run:  # a run that stopped after its first step
        run.step("started", n=1)
    with claim(ctl, op_id, kinds=["ops.ping"], first_steps={"ops.ping": "started"}) as op:
        assert op.status == "running" and not op.alive
    # the claim found it done and, taken by no run, did not remove what it had not written
    assert step_rows(ctl, op_id) == [("started", "done", {"n": 1})]
    with claim(ctl, op_id, kinds=["ops.ping"], first_steps={"ops.ping": "started"}):
        with OperationRun(ctl, op_id) as run:
            assert "started" in run.completed
            run.finish(OperationStatus.DONE)
    assert step_rows(ctl, op_id) == [("started", "done", {"n": 1})]


def test_a_resumed_ping_writes_only_its_close_its_first_step_came_with_the_claim(ctl, monkeypatch):
    written: list[str] = []
    original = OperationRun.step

    def step(self, name, **data):
        written.append(name)
        original(self, name, **data)

    monkeypatch.setattr(OperationRun, "step", step)
    op_id = new_ping(ctl)
    assert resume(ctl, op_id)["status"] == "done"
    assert written == []  # no checkpoint round trip of its own
    assert [s.name for s in steps_of(ctl, op_id)] == ["started", "waited"]


def test_a_claim_of_an_unknown_operation_is_not_found_and_leaves_no_lock(ctl):
    import uuid

    op_id = uuid.uuid4()
    with pytest.raises(NotFound), claim(ctl, op_id, kinds=["ops.ping"]):
        pass
    assert not is_alive(ctl, op_id)


def test_finish_with_a_last_step_commits_the_step_and_the_close_in_one_transaction(ctl):
    op_id = new_ping(ctl)
    with OperationRun(ctl, op_id) as run:
        run.step("first")
        run.finish(OperationStatus.DONE, step="last", data={"it's": "100%"})
        assert "last" in run.completed
    with other_session(ctl) as other:
        (op_xmin,) = other.execute(
            "SELECT xmin::text FROM operations WHERE id = %s", (op_id,)
        ).fetchone()
        xmins = dict(
            other.execute(
                "SELECT name, xmin::text FROM operation_steps WHERE op_id = %s", (op_id,)
            ).fetchall()
        )
    assert xmins["last"] == op_xmin != xmins["first"]  # one transaction: both or neither
    assert describe(ctl, op_id).status == "done"
    assert steps_of(ctl, op_id)[-1].data == {"it's": "100%"}
    assert not is_alive(ctl, op_id)


def test_finish_as_failed_with_a_last_step_keeps_its_status_and_error(ctl):
    op_id = new_ping(ctl)
    with OperationRun(ctl, op_id) as run:
        run.finish(OperationStatus.FAILED, "it broke", step="last", data={"n": 1})
    op = describe(ctl, op_id)
    assert (op.status, op.error) == ("failed", "it broke")
    assert [(s.name, s.status, s.data) for s in op.steps or []] == [("last", "done", {"n": 1})]


def test_resume_of_a_ping_whose_runner_fails_before_its_run_gives_the_claim_back(ctl):
    with ctl.catalog() as s:
        op_id = start_ping(s, status=OperationStatus.QUEUED)
        s.execute(
            text("UPDATE operations SET params = '{\"seconds\": -1}' WHERE id = :id"),
            {"id": op_id},
        )
    with pytest.raises(Exception, match="seconds"):
        resume(ctl, op_id)
    assert op_row(ctl, op_id)[:2] == ("queued", None)
    assert not is_alive(ctl, op_id)
