"""Make one tenant's digest for one day (or find the one made already), and fan out.

:func:`make_digest` reads the figures (one round trip), asks the gate for three insights
(masked; the offline rules answer when no model does), then in one transaction of the
tenant's database stores the digest, leaves each active Admin a notification card and queues
their e-mails; the ``email.send`` jobs are deferred after that commit. A digest for a tenant
and day is made once: a second run finds it (``created`` false) and makes nothing (it only
re-defers e-mails still queued, in case the first run died before deferring them);
``force`` adds a new version.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, select, text

from bizosctl.digest.figures import Figures, collect
from bizosctl.digest.insights import SYSTEM, DigestInsights, Insight, offline_insights, prompt
from bizosctl.errors import InvalidInput, NotFound
from bizosctl.tenancy.zones import local_yesterday, zone_of

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from sqlalchemy.orm import Session

    from bizosctl.ai.gate import Gate
    from bizosctl.catalog.control import Control

Deliver = Literal["email", "card", "both"]
DELIVER = ("email", "card", "both")
FEATURE = "digest"
ACTOR = "bizosctl:digest"


class TenantRef(BaseModel):
    slug: str
    region: str
    time_zone: str | None = None


class DigestPublic(BaseModel):
    tenant: str
    date: dt.date
    version: int
    zone: str
    insights: list[Insight]
    degraded: bool
    reason: str | None
    provider: str
    model: str
    delivered: list[str]
    created: bool
    emails: int
    id: uuid.UUID
    created_at: dt.datetime
    figures: Figures | None = None


class DigestPreview(BaseModel):
    """What ``--dry-run`` shows: the prompt as it would leave, and the offline rules'
    insights (a dry run asks no model: a model call writes a ledger row)."""

    tenant: str
    date: dt.date
    zone: str
    masked_prompt: str
    system: str
    insights: list[Insight]
    exists: bool


def tenant_refs(ctl: Control, slugs: list[str] | None) -> list[TenantRef]:
    """The live tenants named (every active one when ``slugs`` is None: a locked or moving
    tenant cannot store its digest, and is left to a later run), with their zones."""
    from bizosctl.catalog.models import Tenant

    with ctl.catalog() as s:
        statuses = ("active",) if slugs is None else ("active", "read_only", "moving")
        stmt = select(Tenant).where(Tenant.status.in_(statuses))
        if slugs is not None:
            stmt = stmt.where(Tenant.slug.in_(slugs))
        rows = {t.slug: t for t in s.execute(stmt.order_by(Tenant.slug)).scalars()}
    if slugs is not None:
        missing = [x for x in slugs if x not in rows]
        if missing:
            raise NotFound(f"no active tenant {missing[0]!r}")
    return [
        TenantRef(slug=t.slug, region=t.region, time_zone=getattr(t, "time_zone", None))
        for t in rows.values()
    ]


def zone_for(ref: TenantRef) -> ZoneInfo:
    """The tenant's zone; InvalidInput naming the tenant and the zone when it is unknown."""
    try:
        return zone_of(region=ref.region, time_zone=ref.time_zone)
    except InvalidInput as exc:
        raise InvalidInput(f"tenant {ref.slug!r}: {exc}") from exc


def parse_day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--date {value!r}: use an ISO date such as 2026-12-01") from None


def make_digest(
    ctl: Control,
    ref: TenantRef,
    *,
    day: dt.date | None = None,
    deliver: Deliver = "both",
    force: bool = False,
    dry_run: bool = False,
    gate: Gate | None = None,
    slots: Callable[[str], threading.Semaphore] | None = None,
) -> DigestPublic | DigestPreview:
    """Make (or find) ``ref``'s digest of ``day`` (default: yesterday in its zone).

    Args:
        deliver: ``card`` (a notification for each active Admin), ``email`` (an e-mail to
            each) or ``both``.
        force: make a new version even when one exists.
        dry_run: return the masked prompt and the offline insights; store and send nothing.
        gate: the LLM gate (default: the control plane's).
        slots: the provider's semaphore (``--all`` bounds the calls waiting on one provider).
    """
    from bizosctl.ai.gate import get_gate
    from bizosctl.tenancy.router import tenant_session

    if deliver not in DELIVER:
        raise InvalidInput(f"--deliver {deliver!r}: one of email, card, both")
    zone = zone_for(ref)
    day = day or local_yesterday(zone)
    gate = gate or get_gate(ctl)
    route = ctl.route(ref.slug)  # for the reads; the write looks it up again (a move meanwhile)
    with tenant_session(ctl, ref.slug, actor=ACTOR, read_only=True, route=route) as s:
        existing = _latest(s, day)
        if existing is not None and not force and not dry_run:
            found = _public(s, ref.slug, existing, created=False)
        else:
            found = None
            figures, enc_names = collect(s, day=day, zone=zone)
    if found is not None:
        _defer_queued(ctl, ref.slug, found.id)
        return found
    names = _owner_names(ctl, route.tenant_id, enc_names)
    text_ = prompt(figures, names)
    offline = offline_insights(figures, names)
    if dry_run:
        from bizosctl.privacy.masking import mask

        masked = mask(text_, names=gate.tenant_names(ref.slug))
        return DigestPreview(
            tenant=ref.slug,
            date=day,
            zone=zone.key,
            masked_prompt=masked.text,
            system=SYSTEM,
            insights=offline.insights,
            exists=existing is not None,
        )
    provider = gate.provider.name if gate.provider is not None else "offline"
    sem = slots(provider) if slots is not None and gate.provider is not None else None
    if sem is not None:
        sem.acquire()
    try:
        answer = gate.ask(
            ref.slug,
            feature=FEATURE,
            prompt=text_,
            system=SYSTEM,
            schema=DigestInsights,
            offline=lambda _masked: offline,
        )
    finally:
        if sem is not None:
            sem.release()
    insights: DigestInsights = answer.data
    with tenant_session(ctl, ref.slug, actor=ACTOR) as s:
        # One maker per (tenant, day) at a time: two runs at once make one digest. The key
        # names the tenant: shared-tier tenants share a database, and must not wait on each other.
        s.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"bizos-digest:{route.tenant_id}:{day.isoformat()}"},
        )
        existing = _latest(s, day)
        if existing is not None and not force:
            return _public(s, ref.slug, existing, created=False)
        from tenant_schema.models import Digest

        version = (existing.version + 1) if existing is not None else 1
        row = Digest(
            id=uuid.uuid4(),
            tenant_id=route.tenant_id,  # the same wherever the tenant lives
            day=day,
            version=version,
            zone=zone.key,
            figures=figures.model_dump(mode="json"),
            insights=[i.model_dump(mode="json") for i in insights.insights],
            provider=answer.provider,
            model=answer.model,
            degraded=answer.degraded,
            reason=answer.reason,
            usage_id=answer.usage_id,
            deliver=deliver,
            cards=0,
        )
        s.add(row)
        s.flush()
        message_ids = _deliver(ctl, s, ref.slug, row, insights, deliver)
        public = _public(s, ref.slug, row, created=True)
    if message_ids:
        from bizosctl.notify.email import defer_send

        defer_send(ctl, ref.slug, message_ids)
    return public


def ctl_tenant_id(s: Session) -> uuid.UUID:
    return uuid.UUID(s.execute(text("SELECT current_setting('bizos.tenant_id')")).scalar_one())


def _latest(s: Session, day: dt.date) -> Any:
    from tenant_schema.models import Digest

    return s.execute(
        select(Digest).where(Digest.day == day).order_by(Digest.version.desc()).limit(1)
    ).scalar_one_or_none()


def admins(s: Session) -> list[uuid.UUID]:
    """The tenant's active Admins (the role named Admin, any case)."""
    from tenant_schema.models import Member, MemberRole, Role

    return list(
        s.execute(
            select(MemberRole.member_id)
            .join(Role, Role.id == MemberRole.role_id)
            .join(Member, Member.id == MemberRole.member_id)
            .where(func.lower(Role.name) == "admin", Member.status == "active")
            .order_by(MemberRole.member_id)
            .distinct()
        ).scalars()
    )


def card_text(day: dt.date, insights: list[Insight]) -> tuple[str, str]:
    title = f"Digest for {day.isoformat()}: {insights[0].title}"
    body = "\n\n".join(
        f"{n}. {i.title}\n{i.detail}\nAction: {i.action} [{i.figure}]"
        for n, i in enumerate(insights, 1)
    )
    return title, body


def _deliver(
    ctl: Control, s: Session, slug: str, row: Any, insights: DigestInsights, deliver: Deliver
) -> list[uuid.UUID]:
    from bizosctl.resources.notifications import notify_member

    members = admins(s)
    title, body = card_text(row.day, insights.insights)
    if deliver in ("card", "both"):
        for mid in members:
            notify_member(s, member_id=mid, kind="digest", title=title, body=body)
        row.cards = len(members)
    if deliver not in ("email", "both") or not ctl.settings.smtp_host:
        return []
    from bizosctl.notify.email import queue_message

    context = {
        "tenant": slug,
        "day": row.day.isoformat(),
        "insights": [i.model_dump(mode="json") for i in insights.insights],
        "degraded": row.degraded,
    }
    return [
        queue_message(
            s,
            member_id=mid,
            template="digest",
            subject=f"Your digest for {row.day.isoformat()}",
            context=context,
            digest_id=row.id,
        )
        for mid in members
    ]


def _public(s: Session, slug: str, row: Any, *, created: bool) -> DigestPublic:
    from tenant_schema.models import EmailMessage

    emails = s.execute(
        select(func.count()).select_from(EmailMessage).where(EmailMessage.digest_id == row.id)
    ).scalar_one()
    delivered = [c for c, on in (("card", row.cards), ("email", emails)) if on]
    return DigestPublic(
        tenant=slug,
        date=row.day,
        version=row.version,
        zone=row.zone,
        insights=[Insight.model_validate(i) for i in row.insights],
        degraded=row.degraded,
        reason=row.reason,
        provider=row.provider,
        model=row.model,
        delivered=delivered,
        created=created,
        emails=emails,
        id=row.id,
        created_at=row.created_at or dt.datetime.now(dt.UTC),
        figures=Figures.model_validate(row.figures),
    )


def _owner_names(ctl: Control, tid: uuid.UUID, enc: dict[uuid.UUID, str]) -> dict[str, str]:
    if not enc:
        return {}
    from bizosctl.security.fields import decrypt

    return {
        str(mid): decrypt(
            ctl.keyring, token, tenant_id=tid, table="members", column="name", row=mid
        )
        for mid, token in enc.items()
    }


def _defer_queued(ctl: Control, slug: str, digest_id: uuid.UUID) -> None:
    """E-mails of a digest that are still queued get their job again (a queueing lock per
    message: one that has a job already is left alone)."""
    from bizosctl.notify.email import defer_send, queued_messages

    ids = queued_messages(ctl, slug, digest_id=digest_id)
    if ids:
        defer_send(ctl, slug, ids)


class DigestFailure(BaseModel):
    tenant: str
    error: str
    exit_code: int


class DigestRun(BaseModel):
    digests: list[DigestPublic] = []
    previews: list[DigestPreview] = []
    failed: list[DigestFailure] = []
    summary: dict[str, int] = {}


def run_digests(
    ctl: Control,
    refs: list[TenantRef],
    *,
    day: dt.date | None = None,
    deliver: Deliver = "both",
    force: bool = False,
    dry_run: bool = False,
    gate: Gate | None = None,
    on_done: Callable[[str, str | None], None] | None = None,
) -> DigestRun:
    """Every tenant's digest, concurrently: at most ``digest_parallel`` at once,
    ``digest_per_region`` in one region, ``digest_per_provider`` waiting on one model
    provider. One tenant's failure is reported and never stops the others."""
    from bizosctl.ai.gate import get_gate
    from bizosctl.fanout import for_each

    s = ctl.settings
    gate = gate or get_gate(ctl)
    sems: dict[str, threading.Semaphore] = {}
    lock = threading.Lock()

    def slots(provider: str) -> threading.Semaphore:
        with lock:
            return sems.setdefault(provider, threading.BoundedSemaphore(s.digest_per_provider))

    def one(ref: TenantRef) -> DigestPublic | DigestPreview:
        return make_digest(
            ctl, ref, day=day, deliver=deliver, force=force, dry_run=dry_run, gate=gate, slots=slots
        )

    def done(o: Any) -> None:
        if on_done is not None:
            on_done(o.item.slug, None if o.error is None else str(o.error))

    outcomes = for_each(
        refs,
        one,
        key=lambda r: r.region,
        parallel=s.digest_parallel,
        per_key=s.digest_per_region,
        on_done=done,
    )
    out = DigestRun()
    for o in outcomes:
        if o.error is not None:
            code = getattr(o.error, "exit_code", 1)
            out.failed.append(DigestFailure(tenant=o.item.slug, error=str(o.error), exit_code=code))
        elif isinstance(o.result, DigestPreview):
            out.previews.append(o.result)
        elif o.result is not None:
            out.digests.append(o.result)
    out.summary = {
        "created": sum(d.created for d in out.digests),
        "existing": sum(not d.created for d in out.digests),
        "degraded": sum(d.degraded for d in out.digests if d.created),
        "previewed": len(out.previews),
        "failed": len(out.failed),
    }
    return out


def list_digests(
    ctl: Control, slug: str, *, since: dt.date | None = None, limit: int = 30
) -> list[DigestPublic]:
    """The tenant's digests, newest day (and version) first."""
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Digest

    if not 1 <= limit <= 1000:
        raise InvalidInput(f"--limit {limit}: between 1 and 1000")
    with tenant_session(ctl, slug, actor=ACTOR, read_only=True) as s:
        stmt = select(Digest).order_by(Digest.day.desc(), Digest.version.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(Digest.day >= since)
        return [_public(s, slug, r, created=False) for r in s.execute(stmt).scalars()]


def show_digest(
    ctl: Control, slug: str, *, day: dt.date | None = None, version: int | None = None
) -> DigestPublic:
    """One digest (default: the latest day; the latest version of it)."""
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Digest

    with tenant_session(ctl, slug, actor=ACTOR, read_only=True) as s:
        stmt = select(Digest).order_by(Digest.day.desc(), Digest.version.desc()).limit(1)
        if day is not None:
            stmt = stmt.where(Digest.day == day)
        if version is not None:
            stmt = stmt.where(Digest.version == version)
        row = s.execute(stmt).scalar_one_or_none()
        if row is None:
            what = f" for {day.isoformat()}" if day else ""
            what += f" version {version}" if version else ""
            raise NotFound(f"tenant {slug!r} has no digest{what}")
        return _public(s, slug, row, created=False)
