"""bizosctl.fanout.for_each on real threads (no database): limits, order, errors, stopping."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from bizosctl.errors import BizosError, InvalidInput, NotFound
from bizosctl.fanout import Outcome, for_each

DEADLINE_S = 10.0


@dataclass(frozen=True)
class Item:
    name: str
    server: str


def items(spec: str) -> list[Item]:
    """``"aab"`` -> a0 and a1 on server a, b2 on server b."""
    return [Item(f"{s}{i}", s) for i, s in enumerate(spec)]


class Gate:
    """Counts calls in flight (in total and per server) and holds each call until the
    scheduler cannot start another one, so the limits are reached, not only respected."""

    def __init__(self, todo: list[Item], parallel: int, per_key: int) -> None:
        self.todo, self.parallel, self.per_key = todo, parallel, per_key
        self.cond = threading.Condition()
        self.running: Counter[str] = Counter()
        self.started: set[str] = set()
        self.max_total = 0
        self.max_key: Counter[str] = Counter()

    def saturated(self) -> bool:
        if sum(self.running.values()) >= self.parallel:
            return True
        waiting = [i for i in self.todo if i.name not in self.started]
        return all(self.running[i.server] >= self.per_key for i in waiting)

    def __call__(self, item: Item) -> str:
        with self.cond:
            self.started.add(item.name)
            self.running[item.server] += 1
            self.max_total = max(self.max_total, sum(self.running.values()))
            self.max_key[item.server] = max(self.max_key[item.server], self.running[item.server])
            self.cond.notify_all()
            if not self.cond.wait_for(self.saturated, timeout=DEADLINE_S):
                raise AssertionError("the scheduler did not start what the limits allow")
            self.running[item.server] -= 1
            self.cond.notify_all()
        return item.name.upper()


@pytest.mark.parametrize(
    ("spec", "parallel", "per_key", "max_total", "max_key"),
    [
        ("abcdefghij", 3, 4, 3, {"a": 1}),  # only the overall limit binds
        ("aaaaaabbbbbbc", 4, 2, 4, {"a": 2, "b": 2, "c": 1}),  # both bind
        ("aaaaaaab", 8, 3, 4, {"a": 3, "b": 1}),  # the per-server limit binds
    ],
)
def test_parallel_and_per_key_limits_are_reached_never_exceeded(
    spec: str, parallel: int, per_key: int, max_total: int, max_key: dict[str, int]
) -> None:
    todo = items(spec)
    gate = Gate(todo, parallel, per_key)
    out = for_each(todo, gate, parallel=parallel, per_key=per_key)
    assert [o.result for o in out] == [i.name.upper() for i in todo]
    assert gate.max_total == max_total
    assert {k: gate.max_key[k] for k in max_key} == max_key


def test_outcomes_come_in_input_order_whatever_the_completion_order() -> None:
    todo = items("abcde")
    reported = {i.name: threading.Event() for i in todo}
    done_order: list[str] = []

    def fn(item: Item) -> int:  # each waits for the next one's report: last to first
        n = todo.index(item)
        if n + 1 < len(todo):
            assert reported[todo[n + 1].name].wait(DEADLINE_S)
        return n

    def on_done(o: Outcome[Item, int]) -> None:
        done_order.append(o.item.name)
        reported[o.item.name].set()

    out = for_each(todo, fn, parallel=5, on_done=on_done)
    assert [(o.item, o.result, o.ok) for o in out] == [(i, n, True) for n, i in enumerate(todo)]
    assert done_order == [i.name for i in reversed(todo)]


@pytest.mark.parametrize("parallel", [1, 3])
def test_a_bizos_error_from_one_item_does_not_stop_the_others(parallel: int) -> None:
    todo = items("aabbc")

    def fn(item: Item) -> str:
        if item.name == "a1":
            raise NotFound("no tenant a1")
        return item.name

    out = for_each(todo, fn, parallel=parallel)
    assert [o.ok for o in out] == [True, False, True, True, True]
    assert isinstance(out[1].error, NotFound) and str(out[1].error) == "no tenant a1"
    assert (out[1].result, out[1].skipped) == (None, False)
    assert [o.result for o in out if o.ok] == ["a0", "b2", "b3", "c4"]


@pytest.mark.parametrize("parallel", [1, 4])
def test_should_stop_submits_nothing_more_and_skips_the_rest(parallel: int) -> None:
    # per_key 1 on one server: one call at a time even on the pool, so the stop is exact
    todo = items("aaaaa")
    ran: list[str] = []
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def fn(item: Item) -> str:
        ran.append(item.name)
        return item.name

    def on_done(o: Outcome[Item, str]) -> None:
        seen.append((o.item.name, o.skipped))
        if o.item.name == "a1":
            stop.set()

    out = for_each(todo, fn, parallel=parallel, per_key=1, should_stop=stop.is_set, on_done=on_done)
    assert ran == ["a0", "a1"]
    assert [(o.ok, o.skipped, o.result) for o in out] == [
        (True, False, "a0"),
        (True, False, "a1"),
        (False, True, None),
        (False, True, None),
        (False, True, None),
    ]
    assert seen == [("a0", False), ("a1", False), ("a2", True), ("a3", True), ("a4", True)]


def test_an_unexpected_exception_is_raised_after_the_work_in_flight_finished() -> None:
    # a0 fails while b1 runs; a2 waits for a0's server and is never submitted
    todo = items("aba")
    boomed = threading.Event()
    finished: list[str] = []
    reported: list[str] = []

    def fn(item: Item) -> str:
        if item.name == "a0":
            boomed.set()
            raise ValueError("a bug")
        assert boomed.wait(DEADLINE_S)
        finished.append(item.name)
        return item.name

    with pytest.raises(ValueError, match="a bug"):
        for_each(todo, fn, parallel=2, per_key=1, on_done=lambda o: reported.append(o.item.name))
    assert finished == ["b1"] and reported == ["b1"]


def test_an_unexpected_exception_on_the_calling_thread_stops_at_once() -> None:
    todo = items("abc")
    ran: list[str] = []

    def fn(item: Item) -> str:
        if item.name == "b1":
            raise KeyError(item.name)
        ran.append(item.name)
        return item.name

    with pytest.raises(KeyError):
        for_each(todo, fn, parallel=1)
    assert ran == ["a0"]


def test_catch_decides_which_exceptions_become_outcomes() -> None:
    def fn(item: Item) -> str:
        raise (BizosError if item.server == "a" else OSError)(item.name)

    out = for_each(items("ab"), fn, parallel=2, catch=(Exception,))
    assert [type(o.error) for o in out] == [BizosError, OSError]
    with pytest.raises(BizosError, match="a0"):
        for_each(items("a"), fn, parallel=1, catch=())


def test_prepare_runs_in_the_calling_thread_and_the_callers_executor_stays_open() -> None:
    todo = items("abc")
    prepared_in: set[str] = set()

    def prepare(item: Item) -> str:
        prepared_in.add(threading.current_thread().name)
        return item.name

    with ThreadPoolExecutor(2, thread_name_prefix="callers") as pool:
        out = for_each(todo, str.upper, executor=pool, parallel=2, prepare=prepare)
        assert pool.submit(time.monotonic).result() > 0  # still usable
    assert [o.result for o in out] == ["A0", "B1", "C2"]
    assert prepared_in == {threading.current_thread().name}


def test_nothing_to_do_returns_nothing() -> None:
    assert for_each([], str.upper) == []
    assert for_each([], str.upper, parallel=1) == []


@pytest.mark.parametrize(("parallel", "per_key"), [(0, 1), (1, 0)])
def test_limits_below_one_are_refused(parallel: int, per_key: int) -> None:
    with pytest.raises(InvalidInput) as exc:
        for_each(items("a"), str, parallel=parallel, per_key=per_key)
    assert str(exc.value) == (
        f"parallel and per_key must be at least 1 (got {parallel}, {per_key})"
    )
