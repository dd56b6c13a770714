"""The LLM gate: :func:`ask` is the one function every model call of bizosctl goes through.

Out: the prompt is masked (the tenant's members' and customers' names are the dictionary,
with every other kind the masking module finds); only the masked text and the feature's
instructions (``system``, written in code, never tenant data) leave. Back: the placeholders
are restored, for the tenant's own eyes. A structured answer is asked for with the JSON
schema of a pydantic model and validated; a malformed one is asked again once, then the
offline provider answers.

Every attempt has a timeout, the whole call a deadline; 429 and 5xx answers, timeouts and
connection errors are retried with exponential backoff (a 429's ``Retry-After`` is honoured
when it fits in the deadline, and otherwise keeps the provider out for that long). A breaker
per provider opens after the first failures, so while a provider is down calls go straight to
the offline provider instead of each paying for failed attempts. Whenever the offline provider
answers in place of the configured one the answer is ``degraded`` (with the reason): the
feature still gets an answer.

Every call writes one ledger row in the tenant's database (``bizosctl.ai.ledger``); a priced
call first reserves its worst-case cost against the month's budget in the transaction that
writes the row, and is refused (:class:`~bizosctl.errors.BudgetExceeded`) or answered
offline (the tenant's ``ai_over_budget``) when the budget would be exceeded. The row is
settled (the real cost) after the answer is returned, with the tenant's next reservation or
by the gate's background writer (:mod:`bizosctl.ai.writer`; the reservation counts until
then): read the ledger in the same process after :meth:`Gate.flush` or
:func:`bizosctl.ai.writer.flush_all`.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from bizosctl.ai import ledger, plans
from bizosctl.ai.breaker import Breaker, BreakerState
from bizosctl.ai.providers import (
    Completion,
    OfflineProvider,
    OfflineRule,
    Prompt,
    Provider,
    configured,
)
from bizosctl.ai.writer import LedgerWriter
from bizosctl.errors import (
    BizosError,
    BudgetExceeded,
    InvalidInput,
    OperationFailed,
    ProviderFailed,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from bizosctl.catalog.control import Control, RouteInfo
    from bizosctl.config import Settings
    from bizosctl.privacy.masking import Masked
    from bizosctl.privacy.persons import Dictionary

#: Seconds a tenant's plan and budget are kept by a gate (the spending itself is never cached).
TERMS_TTL = 5.0
FEATURE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_T = TypeVar("_T")
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class Answer:
    """What the gate returns: the answer with the tenant's values restored, and its account."""

    text: str
    #: the validated structured answer (an instance of the schema) when one was asked for
    data: Any
    provider: str
    model: str
    degraded: bool
    reason: str | None  # why the offline provider answered instead (None: it did not)
    tokens_in: int
    tokens_out: int
    cost: Decimal
    usage_id: uuid.UUID
    latency_ms: float
    overhead_ms: float
    attempts: int
    entities: dict[str, int] = field(default_factory=dict)


@dataclass
class _Call:
    """The bookkeeping of one call while it runs."""

    started: float
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    model_seconds: float = 0.0  # in the provider or waiting for a retry: not the gate's overhead
    reason: str | None = None


class Gate:
    """Providers, their breakers and the names cache of one control plane."""

    def __init__(
        self,
        ctl: Control,
        *,
        settings: Settings | None = None,
        provider: Provider | str | None = "configured",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctl = ctl
        self.settings = settings or ctl.settings
        s = self.settings
        self.provider: Provider | None = configured(s) if isinstance(provider, str) else provider
        self.offline = OfflineProvider()
        self.breaker = Breaker(
            failures=s.ai_breaker_failures, cooldown=s.ai_breaker_cooldown, clock=clock
        )
        self._clock = clock
        self._sleep = sleep
        self._names: dict[str, tuple[float, tuple[str, ...], Dictionary]] = {}
        self._names_lock = threading.Lock()
        self._terms: dict[str, tuple[float, plans.TenantPlan]] = {}
        self._routes: dict[str, tuple[float, RouteInfo]] = {}
        #: settles calls after they answered (see bizosctl.ai.writer); flush() waits for it
        self.writer = LedgerWriter()
        if self.provider is not None:
            ledger.prices(s, self.provider.model)  # a model without a price: refuse at once

    # -- the one entry point ---------------------------------------------------------------
    def ask(
        self,
        tenant: str,
        *,
        feature: str,
        prompt: str,
        system: str | None = None,
        schema: type[BaseModel] | None = None,
        member: uuid.UUID | None = None,
        offline: OfflineRule | None = None,
        names: Iterable[str] = (),
        max_output_tokens: int | None = None,
    ) -> Answer:
        """Ask the configured model (or the offline provider) on behalf of ``tenant``.

        Args:
            tenant: the tenant's slug; the call is recorded and budgeted in its database.
            feature: what asks (``digest``, ``precheck.invoice``): a ledger column.
            prompt: the text, with tenant data; masked before it leaves.
            system: the feature's instructions (code, not tenant data: it is not masked).
            schema: a pydantic model: the answer is asked for as its JSON and validated.
            member: the member on whose behalf (a ledger column).
            offline: the feature's deterministic rule, answering the masked prompt when the
                model is not configured, down, slow, malformed or over budget.
            names: more names to mask on top of the tenant's members and customers.
        """
        from bizosctl.privacy.masking import mask

        call = _Call(started=time.perf_counter())
        if not FEATURE.match(feature):
            raise InvalidInput(f"feature {feature!r}: lower-case letters, digits, . _ - only")
        plan = self.tenant_terms(tenant)
        extra = tuple(names)
        known = [*self.tenant_names(tenant), *extra] if extra else self.tenant_dictionary(tenant)
        masked = mask(prompt, names=known)
        entities = masked.counts()
        out = Prompt(
            text=masked.text,
            system=system,
            schema=schema.model_json_schema() if schema is not None else None,
            schema_name=schema.__name__ if schema is not None else "answer",
            max_output_tokens=max_output_tokens or self.settings.ai_max_output_tokens,
        )
        provider = self.provider
        if provider is None:
            return self._offline(plan, call, out, masked, schema, offline, member, feature,
                                 entities, reason=None)  # fmt: skip
        if self.breaker.is_open():  # nothing to reserve: the provider is out for now
            return self._offline(plan, call, out, masked, schema, offline, member, feature,
                                 entities, reason="breaker-open")  # fmt: skip
        amount = ledger.cost(
            self.settings,
            provider.model,
            ledger.worst_case_tokens(out.text, out.system) * (2 if schema else 1),
            out.max_output_tokens * (2 if schema else 1),  # a malformed answer is asked twice
        )
        route = self.tenant_route(tenant)  # for the reservation and the settlement
        row_id = uuid.uuid4()  # sent again (see below), the reservation is held once

        def reserve(run: ledger.Run) -> ledger.Reservation | None:
            return ledger.reserve(run, plan=plan, amount=amount, member=member,
                                  feature=feature, provider=provider.name,
                                  model=provider.model, entities=entities,
                                  row_id=row_id)  # fmt: skip

        # The settlements of this tenant's earlier calls that wait for the writer ride with
        # the reservation: the same round trip, no thread's work on a caller's path.
        riders = [r for r in self.writer.take(lambda job: isinstance(job, _Settlement)
                                              and job.slug == tenant)
                  if isinstance(r, _Settlement)]  # fmt: skip
        try:
            held, route = self._in_tenant(tenant, feature, route, reserve,
                                          before=[r.statement for r in riders])  # fmt: skip
        except BaseException as exc:
            for rider in riders:  # back to the writer (written twice is harmless)
                self.writer.submit(rider)
            if not riders or not isinstance(exc, BizosError):
                raise
            held, route = self._in_tenant(tenant, feature, route, reserve)  # alone, once more
        finally:
            self.writer.carried(len(riders))
        if held is None and plan.over_budget == "refuse":
            run = self._runner(route, feature)
            spent = ledger.spent(run, tenant_id=plan.tenant_id)
            ledger.record(
                run,
                tenant_id=plan.tenant_id,
                member=member,
                feature=feature,
                entities=entities,
                status="refused",
                outcome=ledger.Outcome(
                    provider=provider.name,
                    model=provider.model,
                    overhead_ms=_ms(time.perf_counter() - call.started),
                    reason="over-budget",
                ),
            )
            raise BudgetExceeded(
                f"tenant {tenant!r} has spent its AI budget for this month ({spent:.6f} of "
                f"{plan.budget} USD, plan {plan.plan}): the call was refused; raise it with "
                f"`bizosctl ai budget {tenant} --budget USD` or answer offline with "
                "`--over-budget offline`"
            )
        if held is None:
            return self._offline(plan, call, out, masked, schema, offline, member, feature,
                                 entities, reason="over-budget")  # fmt: skip
        try:
            data, text = self._remote(provider, call, out, schema)
            if text is None:
                data, text = self._answer_offline(out, schema, offline)
        except BaseException:
            # Never leave the reservation held: what the provider billed so far is recorded.
            billed = ledger.cost(self.settings, provider.model, call.tokens_in, call.tokens_out)
            call.reason = call.reason or "error"
            self._settle(tenant, feature, plan, held, provider, call, degraded=True,
                         cost=billed, route=route, background=False)  # fmt: skip
            raise
        answer_cost = ledger.cost(self.settings, provider.model, call.tokens_in, call.tokens_out)
        degraded = call.reason is not None
        overhead = self._settle(tenant, feature, plan, held, provider, call, degraded=degraded,
                                cost=answer_cost, route=route, background=True)  # fmt: skip
        by, model = ("offline", "offline") if degraded else (provider.name, provider.model)
        return self._answer(masked, data, text, by, model, call, answer_cost, held.id, overhead,
                            entities)  # fmt: skip

    # -- the model -------------------------------------------------------------------------
    def _remote(
        self, provider: Provider, call: _Call, out: Prompt, schema: type[BaseModel] | None
    ) -> tuple[Any, str | None]:
        """The validated answer of the provider, or (None, None) with ``call.reason`` set."""
        deadline = self._clock() + self.settings.ai_deadline
        for ask_no in range(2 if schema is not None else 1):
            completion = self._attempts(provider, call, out, deadline)
            if completion is None:
                return None, None
            if schema is None:
                return None, completion.text
            data = _parse(schema, completion.text)
            if data is not None:
                return data, completion.text
            call.reason = "malformed"
            if ask_no == 1:
                return None, None
        return None, None  # pragma: no cover

    def _attempts(
        self, provider: Provider, call: _Call, out: Prompt, deadline: float
    ) -> Completion | None:
        s = self.settings
        delay = s.ai_backoff
        tries = 0
        while True:
            if not self.breaker.allow():
                call.reason = "breaker-open"
                return None
            remaining = deadline - self._clock()
            if remaining <= 0:
                self.breaker.release()
                call.reason = "deadline"
                return None
            tries += 1
            call.attempts += 1
            t0 = time.perf_counter()
            self.writer.waiting()  # the ledger writer's turn while the model answers
            try:
                completion = provider.complete(out, timeout=min(s.ai_timeout, remaining))
            except ProviderFailed as exc:
                call.model_seconds += time.perf_counter() - t0
                call.reason = exc.reason
                limit = 1 if exc.reason == "malformed" else s.ai_retries
                wait = exc.retry_after
                if wait is None:
                    wait = delay * (1 + random.random() / 10)
                    delay *= 2
                give_up = not exc.retryable or tries > limit or self._clock() + wait >= deadline
                # A 429 whose Retry-After we cannot wait for keeps the provider out that long.
                hold = exc.retry_after if give_up and exc.retry_after else None
                self.breaker.failure(exc.reason, hold=hold)
                if give_up:
                    return None
                t1 = time.perf_counter()
                self._sleep(wait)
                call.model_seconds += time.perf_counter() - t1
                continue
            except BaseException:
                self.breaker.release()
                raise
            finally:
                self.writer.working()
            call.model_seconds += time.perf_counter() - t0
            self.breaker.success()
            call.reason = None
            call.tokens_in += completion.tokens_in
            call.tokens_out += completion.tokens_out
            return completion

    def _answer_offline(
        self, out: Prompt, schema: type[BaseModel] | None, rule: OfflineRule | None
    ) -> tuple[Any, str]:
        text = self.offline.answer(out, rule)
        if schema is None:
            return None, text
        data = _parse(schema, text)
        if data is None:
            raise OperationFailed(
                f"the offline answer is not a valid {schema.__name__}: give the feature an "
                "offline rule (ask(..., offline=rule)) that returns one"
            )
        return data, text

    def _offline(
        self,
        plan: plans.TenantPlan,
        call: _Call,
        out: Prompt,
        masked: Masked,
        schema: type[BaseModel] | None,
        rule: OfflineRule | None,
        member: uuid.UUID | None,
        feature: str,
        entities: dict[str, int],
        *,
        reason: str | None,
    ) -> Answer:
        data, text = self._answer_offline(out, schema, rule)
        elapsed = _ms(time.perf_counter() - call.started)
        call.reason = reason
        outcome = ledger.Outcome(
            provider="offline",
            model="offline",
            latency_ms=elapsed,
            overhead_ms=elapsed,
            degraded=reason is not None,
            reason=reason,
        )
        usage_id, _ = self._in_tenant(
            plan.slug,
            feature,
            self.tenant_route(plan.slug),
            lambda run: ledger.record(
                run,
                tenant_id=plan.tenant_id,
                member=member,
                feature=feature,
                entities=entities,
                outcome=outcome,
            ),
        )
        return self._answer(masked, data, text, "offline", "offline", call, Decimal(0),
                            usage_id, elapsed, entities)  # fmt: skip

    def _settle(
        self,
        tenant: str,
        feature: str,
        plan: plans.TenantPlan,
        held: ledger.Reservation,
        provider: Provider,
        call: _Call,
        *,
        degraded: bool,
        cost: Decimal = Decimal(0),
        route: RouteInfo,
        background: bool,
    ) -> float:
        """Settle ``held`` with what the call came to; ``background``: by the gate's writer,
        after this returns (the reservation counts until then), else here and now."""
        elapsed = time.perf_counter() - call.started
        overhead = _ms(elapsed - call.model_seconds)
        outcome = ledger.Outcome(
            provider=provider.name,
            model=provider.model,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            cost=cost,
            latency_ms=_ms(elapsed),
            overhead_ms=overhead,
            attempts=call.attempts,
            degraded=degraded,
            reason=call.reason if degraded else None,
        )

        # A tenant that moved while the model answered: the reservation was copied with it,
        # and is settled where the tenant is now (see _in_tenant).
        statement = ledger.settlement(tenant_id=plan.tenant_id, reservation=held, outcome=outcome)
        write = _Settlement(self, tenant, feature, route, statement)
        if background:
            self.writer.submit(write)
        else:
            write()
        return overhead

    def _answer(
        self,
        masked: Masked,
        data: Any,
        text: str,
        provider: str,
        model: str,
        call: _Call,
        cost: Decimal,
        usage_id: uuid.UUID,
        overhead_ms: float,
        entities: dict[str, int],
    ) -> Answer:
        if data is not None:
            restored = _restore(masked, data.model_dump(mode="json"))
            data = type(data).model_validate(restored)
            text = json.dumps(restored, ensure_ascii=False)
        else:
            text = masked.restore(text)
        return Answer(
            text=text,
            data=data,
            provider=provider,
            model=model,
            degraded=call.reason is not None,
            reason=call.reason,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            cost=cost,
            usage_id=usage_id,
            latency_ms=_ms(time.perf_counter() - call.started),
            overhead_ms=overhead_ms,
            attempts=call.attempts,
            entities=entities,
        )

    # -- tenants ---------------------------------------------------------------------------
    def _runner(
        self, route: RouteInfo, feature: str, before: Sequence[ledger.Statement] = ()
    ) -> ledger.Run:
        from bizosctl.tenancy.router import tenant_statement

        actor = f"bizosctl:ai:{feature}"
        return lambda sql, params: tenant_statement(
            self.ctl, route, actor=actor, sql=sql, params=params, before=before
        )

    def _in_tenant(
        self,
        slug: str,
        feature: str,
        route: RouteInfo,
        op: Callable[[ledger.Run], _T],
        *,
        before: Sequence[ledger.Statement] = (),
    ) -> tuple[_T, RouteInfo]:
        """``op`` on the tenant's database at ``route`` (a cached one), and the route used.

        A route kept for :data:`TERMS_TTL` may be stale: a moved tenant's old place refuses
        writes (the write guard), a rotated password no longer logs in, a suspended tenant
        has no context. On such an error the route is read again, and ``op`` runs once more
        only when the route did change: a failure where the tenant still is (whose commit
        may or may not have happened) is never repeated.
        """
        try:
            return op(self._runner(route, feature, before)), route
        except BizosError:
            fresh = self.tenant_route(slug, fresh=True)
            if fresh == route:
                raise
            return op(self._runner(fresh, feature, before)), fresh

    def tenant_route(self, slug: str, *, fresh: bool = False) -> RouteInfo:
        """Where the tenant lives, kept for :data:`TERMS_TTL` seconds (``fresh``: read now);
        see :meth:`_in_tenant` for what a stale one does."""
        now = self._clock()
        hit = None if fresh else self._routes.get(slug)
        if hit is not None and hit[0] > now:
            return hit[1]
        route = self.ctl.route(slug)
        self._routes[slug] = (now + TERMS_TTL, route)
        return route

    def tenant_terms(self, slug: str) -> plans.TenantPlan:
        """The tenant's plan and budget, cached for :data:`TERMS_TTL` seconds (a change made
        with ``ai budget`` applies within that)."""
        now = self._clock()
        hit = self._terms.get(slug)
        if hit is not None and hit[0] > now:
            return hit[1]
        terms = plans.tenant_plan(self.ctl, slug, self.settings)
        self._terms[slug] = (now + TERMS_TTL, terms)
        return terms

    def tenant_names(self, slug: str) -> tuple[str, ...]:
        """The tenant's members' and customers' names (the masking dictionary), cached for
        ``ai_names_ttl`` seconds."""
        return self._tenant_names(slug)[1]

    def tenant_dictionary(self, slug: str) -> Dictionary:
        """:meth:`tenant_names` compiled for the masking, kept with them (compiled again
        only when the names read after ``ai_names_ttl`` differ)."""
        return self._tenant_names(slug)[2]

    def _tenant_names(self, slug: str) -> tuple[float, tuple[str, ...], Dictionary]:
        now = self._clock()
        with self._names_lock:
            hit = self._names.get(slug)
        if hit is not None and hit[0] > now:
            return hit
        from bizosctl.privacy.dictionary import tenant_names
        from bizosctl.privacy.masking import compile_names

        # A member name that does not decrypt fails the call: without the whole dictionary
        # the gate cannot promise the names stay home.
        names = tuple(sorted(set(tenant_names(self.ctl, slug, actor="bizosctl:ai:names"))))
        compiled = hit[2] if hit is not None and hit[1] == names else compile_names(names)
        kept = (now + self.settings.ai_names_ttl, names, compiled)
        with self._names_lock:
            self._names[slug] = kept
        return kept

    def probe(self) -> tuple[bool, str | None, float]:
        """One tiny request to the configured provider, through the breaker (``ai check``):
        (reachable, why not, milliseconds). It carries no tenant data and has no ledger row;
        a provider whose breaker is open is not asked."""
        if self.provider is None:
            return True, None, 0.0
        call = _Call(started=time.perf_counter())
        prompt = Prompt(text="Reply with: ok", max_output_tokens=8)
        done = self._attempts(
            self.provider, call, prompt, self._clock() + self.settings.ai_deadline
        )
        return done is not None, call.reason, _ms(time.perf_counter() - call.started)

    def breaker_state(self) -> BreakerState:
        return self.breaker.snapshot()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the settlements of the calls made so far are written: before reading
        the ledger in this process. False when ``timeout`` seconds passed first."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        from bizosctl.ai.providers import close

        self.writer.close()
        close(self.provider)


@dataclass(frozen=True)
class _Settlement:
    """A call's settlement, for the gate's writer (or a later reservation to carry)."""

    gate: Gate
    slug: str
    feature: str
    route: RouteInfo
    statement: ledger.Statement

    def __call__(self) -> None:
        self.gate._in_tenant(self.slug, self.feature, self.route, lambda run: run(*self.statement))


def _parse(schema: type[BaseModel], text: str) -> Any:
    from pydantic import ValidationError

    m = _FENCE.match(text)
    try:
        return schema.model_validate_json(m.group(1) if m else text)
    except ValidationError:
        return None


def _restore(masked: Masked, value: Any) -> Any:
    if isinstance(value, str):
        return masked.restore(value)
    if isinstance(value, list):
        return [_restore(masked, v) for v in value]
    if isinstance(value, dict):
        return {k: _restore(masked, v) for k, v in value.items()}
    return value


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


_gates: dict[str, Gate] = {}
_gates_lock = threading.Lock()


def get_gate(ctl: Control) -> Gate:
    """The control plane's gate (one per home and settings: the breaker state lives here)."""
    key = str(ctl.settings.home)
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None or gate.settings is not ctl.settings or gate.ctl is not ctl:
            if gate is not None:
                gate.close()
            gate = _gates[key] = Gate(ctl)
        return gate


def reset_gates() -> None:
    with _gates_lock:
        for gate in _gates.values():
            gate.close()
        _gates.clear()


def ask(ctl: Control, tenant: str, **kw: Any) -> Answer:
    """The gate's one function: see :meth:`Gate.ask`."""
    return get_gate(ctl).ask(tenant, **kw)
