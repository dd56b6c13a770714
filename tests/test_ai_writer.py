"""The ledger's background writer (bizosctl.ai.writer) alone: order, flush, a full queue,
retries, close."""

from __future__ import annotations

import threading

from bizosctl.ai.writer import LedgerWriter, flush_all


def test_jobs_run_in_order_and_flush_waits_for_them() -> None:
    gate = threading.Event()
    done: list[int] = []
    w = LedgerWriter(capacity=100)
    w.submit(lambda: gate.wait(30))
    for i in range(5):
        w.submit(lambda i=i: done.append(i))
    assert not w.flush(0.1) and done == []  # the first job holds the others
    gate.set()
    assert w.flush(30) and flush_all(30)
    assert done == [0, 1, 2, 3, 4]
    w.close()


def test_a_full_queue_makes_the_caller_write() -> None:
    gate = threading.Event()
    where: list[str] = []
    w = LedgerWriter(capacity=1)
    w.submit(lambda: gate.wait(30))  # taken by the thread: the queue is empty again
    while w.pending:  # until the thread holds it
        pass
    w.submit(lambda: where.append(threading.current_thread().name))  # queued
    w.submit(lambda: where.append(threading.current_thread().name))  # full: here
    assert where == [threading.current_thread().name]
    gate.set()
    assert w.flush(30)
    assert where == [threading.current_thread().name, "bizosctl-ledger"]
    w.close()


def test_a_failing_job_is_tried_again_then_left() -> None:
    waits: list[float] = []
    tries: list[int] = []

    def flaky() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise OSError("not yet")

    def never() -> None:
        raise OSError("never")

    w = LedgerWriter(retries=(0.1, 0.5, 2.0), sleep=waits.append)
    w.submit(flaky)
    assert w.flush(30)
    assert (len(tries), waits, w.failed) == (3, [0.1, 0.5], 0)
    w.submit(never)
    assert w.flush(30)
    assert (waits[2:], w.failed) == ([0.1, 0.5, 2.0], 1)
    w.close()


def test_after_close_jobs_run_in_the_caller() -> None:
    w = LedgerWriter()
    ran: list[str] = []
    w.submit(lambda: ran.append("queued"))
    assert w.close(30)
    assert ran == ["queued"]
    w.submit(lambda: ran.append(threading.current_thread().name))
    assert ran == ["queued", threading.current_thread().name]
    assert w.flush(0)


def test_a_write_waits_for_a_callers_model_wait_or_a_flush() -> None:
    w = LedgerWriter(idle=60)
    first, second = threading.Event(), threading.Event()
    w.submit(first.set)
    assert not first.wait(0.2)  # callers are masking and reserving: not now
    w.waiting()  # a caller waits for its model's answer: the writer's turn
    assert first.wait(30)
    w.working()
    w.submit(second.set)
    assert not second.wait(0.2)
    assert w.flush(30) and second.is_set()  # a flush does not wait for a turn
    w.close()


def test_without_a_turn_a_write_goes_after_the_idle_time() -> None:
    w = LedgerWriter(idle=0.2)
    done = threading.Event()
    w.submit(done.set)
    assert done.wait(30)
    w.close()


def test_a_backlog_is_written_without_waiting_for_turns() -> None:
    from bizosctl.ai.writer import BACKLOG

    hold = threading.Event()
    w = LedgerWriter(idle=60)
    w.submit(lambda: hold.wait(30))
    w.waiting()  # the first write's turn; it holds the thread while the backlog grows
    while w.pending:
        pass
    w.working()
    done: list[int] = []
    for i in range(BACKLOG + 2):
        w.submit(lambda i=i: done.append(i))
    hold.set()
    pause = threading.Event()
    for _ in range(200):  # no turn, no flush: all of them within seconds, not minutes
        if len(done) == BACKLOG + 2 or pause.wait(0.05):
            break
    assert done == list(range(BACKLOG + 2))
    w.close()


def test_take_hands_jobs_over_and_a_flush_waits_until_they_are_written() -> None:
    w = LedgerWriter(idle=60)
    ran: list[str] = []

    def mine() -> None:
        ran.append("mine")

    w.submit(mine)
    w.submit(lambda: ran.append("other"))
    taken = w.take(lambda job: job is mine)
    assert taken == [mine] and w.pending == 1
    assert not w.flush(0.2)  # the queue is written, the taken job is not yet
    assert ran == ["other"]
    taken[0]()
    w.carried(1)
    assert w.flush(30) and ran == ["other", "mine"]
    w.close()
