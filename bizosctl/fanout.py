"""Fan-out over tenant placements: run one function per item on a pool, within limits.

:func:`for_each` runs ``fn`` for each item, never more than ``parallel`` at once nor
``per_key`` at once for one key (by default the item's ``server``: a server's connections are
what a fleet-wide operation must not exhaust), and returns one :class:`Outcome` per item in
input order. The schema sync (on its own process pool) and the PII rotation (on threads) use
it (issue #13); GDPR erasure is meant to.

Failures the caller expects (``catch``, by default any :class:`~bizosctl.errors.BizosError`)
become outcomes and do not stop the others; anything else is a bug or the machine failing: it
stops submitting, lets what is in flight finish (and reports it to ``on_done``), then
re-raises. ``should_stop`` (``--fail-fast``, ``ops cancel``) is asked before each round of
submissions; once it is true nothing more is submitted and the rest is reported as skipped.
All bookkeeping (``prepare``, ``should_stop``, ``on_done``) runs in the calling thread, so it
may use the caller's connection; only ``fn`` runs on the executor.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from bizosctl.errors import BizosError, InvalidInput

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[T, R]):
    """What became of one item: ``result`` (ok), ``error`` (one of ``catch``) or ``skipped``."""

    item: T
    result: R | None = None
    error: BaseException | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return not self.skipped and self.error is None


def _server(item: Any) -> Hashable:
    server: Hashable = item.server
    return server


@overload
def for_each(
    items: Iterable[T],
    fn: Callable[[T], R],
    *,
    key: Callable[[T], Hashable] = ...,
    parallel: int = ...,
    per_key: int = ...,
    executor: Executor | None = ...,
    should_stop: Callable[[], bool] | None = ...,
    on_done: Callable[[Outcome[T, R]], None] | None = ...,
    prepare: None = ...,
    catch: tuple[type[BaseException], ...] = ...,
) -> list[Outcome[T, R]]: ...


@overload
def for_each(
    items: Iterable[T],
    fn: Callable[[A], R],
    *,
    key: Callable[[T], Hashable] = ...,
    parallel: int = ...,
    per_key: int = ...,
    executor: Executor | None = ...,
    should_stop: Callable[[], bool] | None = ...,
    on_done: Callable[[Outcome[T, R]], None] | None = ...,
    prepare: Callable[[T], A],
    catch: tuple[type[BaseException], ...] = ...,
) -> list[Outcome[T, R]]: ...


def for_each(
    items: Iterable[Any],
    fn: Callable[[Any], Any],
    *,
    key: Callable[[Any], Hashable] = _server,
    parallel: int = 4,
    per_key: int = 4,
    executor: Executor | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_done: Callable[[Outcome[Any, Any]], None] | None = None,
    prepare: Callable[[Any], Any] | None = None,
    catch: tuple[type[BaseException], ...] = (BizosError,),
) -> list[Outcome[Any, Any]]:
    """Run ``fn`` for each of ``items``; one outcome per item, in input order.

    ``key``: what ``per_key`` limits (default: ``item.server``). ``parallel``: at most this
    many calls at once. ``executor``: where ``fn`` runs (the caller's, e.g. a process pool,
    left open; default: threads of our own, or the calling thread itself when ``parallel``
    is 1). ``prepare``: turns an item into ``fn``'s argument, in the calling thread just
    before it is submitted (a process pool then gets a small picklable value; default: the
    item). ``on_done``: called with each outcome as it is known (completion order; skipped
    items in input order when the stop is seen). ``catch``: the exceptions from ``fn`` that
    become outcomes (``()``: every exception is re-raised).
    """
    todo = list(items)
    if parallel < 1 or per_key < 1:
        raise InvalidInput(f"parallel and per_key must be at least 1 (got {parallel}, {per_key})")
    if executor is None and parallel == 1:
        return _inline(todo, fn, should_stop, on_done, prepare, catch)
    run = _Fanout(todo, fn, key, parallel, per_key, should_stop, on_done, prepare, catch)
    if executor is not None or not todo:
        return run.on(executor)
    with ThreadPoolExecutor(min(parallel, len(todo)), thread_name_prefix="bz-fanout") as own:
        return run.on(own)


def _inline(
    todo: list[Any],
    fn: Callable[[Any], Any],
    should_stop: Callable[[], bool] | None,
    on_done: Callable[[Outcome[Any, Any]], None] | None,
    prepare: Callable[[Any], Any] | None,
    catch: tuple[type[BaseException], ...],
) -> list[Outcome[Any, Any]]:
    """One at a time in the calling thread: nothing is in flight when something raises."""
    out: list[Outcome[Any, Any]] = []
    for i, item in enumerate(todo):
        if should_stop is not None and should_stop():
            for rest in todo[i:]:
                out.append(Outcome(rest, skipped=True))
                if on_done is not None:
                    on_done(out[-1])
            break
        try:
            outcome: Outcome[Any, Any] = Outcome(
                item, result=fn(prepare(item) if prepare else item)
            )
        except catch as exc:
            outcome = Outcome(item, error=exc)
        out.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return out


class _Fanout:
    """One :func:`for_each` on an executor: the queue, what is in flight, the per-key load."""

    def __init__(
        self,
        todo: list[Any],
        fn: Callable[[Any], Any],
        key: Callable[[Any], Hashable],
        parallel: int,
        per_key: int,
        should_stop: Callable[[], bool] | None,
        on_done: Callable[[Outcome[Any, Any]], None] | None,
        prepare: Callable[[Any], Any] | None,
        catch: tuple[type[BaseException], ...],
    ) -> None:
        self.todo, self.fn, self.parallel, self.per_key = todo, fn, parallel, per_key
        self.keys = [key(item) for item in todo]
        self.should_stop, self.on_done, self.prepare, self.catch = (
            should_stop,
            on_done,
            prepare,
            catch,
        )
        self.outcomes: list[Outcome[Any, Any] | None] = [None] * len(todo)
        self.failure: Exception | None = None  # the first unexpected one: re-raised at the end

    def on(self, executor: Executor | None) -> list[Outcome[Any, Any]]:
        queue = deque(range(len(self.todo)))
        inflight: dict[Future[Any], int] = {}
        load: Counter[Hashable] = Counter()
        while inflight or (queue and self.failure is None):
            if queue and self.failure is None:
                try:
                    self._submit(executor, queue, inflight, load)
                except Exception as exc:  # in prepare, should_stop or submit: drain, then raise
                    self.failure = exc
            if not inflight:
                continue
            finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=inflight.__getitem__):
                i = inflight.pop(fut)
                load[self.keys[i]] -= 1
                try:
                    outcome = Outcome(self.todo[i], result=fut.result())
                except self.catch as exc:
                    outcome = Outcome(self.todo[i], error=exc)
                except Exception as exc:
                    self.failure = self.failure or exc
                    continue
                self._done(i, outcome)
        if self.failure is not None:
            raise self.failure
        return [o for o in self.outcomes if o is not None]

    def _submit(
        self,
        executor: Executor | None,
        queue: deque[int],
        inflight: dict[Future[Any], int],
        load: Counter[Hashable],
    ) -> None:
        """One round: skip the rest if told to stop, else submit what the limits allow (items
        whose key is at its limit keep their place in the queue)."""
        assert executor is not None
        if self.should_stop is not None and self.should_stop():
            while queue:
                i = queue.popleft()
                self._done(i, Outcome(self.todo[i], skipped=True))
            return
        deferred: deque[int] = deque()
        while queue and len(inflight) < self.parallel:
            i = queue.popleft()
            if load[self.keys[i]] >= self.per_key:
                deferred.append(i)
                continue
            arg = self.prepare(self.todo[i]) if self.prepare is not None else self.todo[i]
            inflight[executor.submit(self.fn, arg)] = i
            load[self.keys[i]] += 1
        queue.extendleft(reversed(deferred))

    def _done(self, i: int, outcome: Outcome[Any, Any]) -> None:
        self.outcomes[i] = outcome
        if self.on_done is not None:
            try:
                self.on_done(outcome)
            except Exception as exc:  # not called again; what is in flight still finishes
                self.on_done = None
                self.failure = self.failure or exc
