"""Sources that finished moves kept (``--keep-source``): listed, purged one by one or all, and
expired on their own.

Every move keeps its source, frozen, until its ``keep_until``; a tenant that moves several times
has several. Two moves can leave a source at the same place (moved away from the shared tier,
back, and away again): the place is then one kept source, kept as long as its latest move says.
A place where the tenant lives again is not a kept source at all.

PII rotation does not re-encrypt kept sources: they are frozen copies for investigation, and
once the old data key is retired their PII no longer decrypts. Purge them, or keep them
knowing that.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bizosctl.catalog.control import Control
from bizosctl.errors import InvalidInput, NotFound
from bizosctl.plans import Plan

if TYPE_CHECKING:
    from bizosctl.tenancy.placement import Placement


@dataclass
class KeptSource:
    slug: str
    tenant_id: uuid.UUID
    source: dict[str, Any]  # a Placement's stored fields (see ``placement()``)
    keep_until: float | None
    operations: list[str] = field(default_factory=list)  # every move that left it, newest last

    @property
    def operation(self) -> str:
        return self.operations[-1]

    @property
    def expired(self) -> bool:
        return (self.keep_until or 0) <= time.time()

    def placement(self) -> Placement:
        from bizosctl.tenancy.placement import Placement

        return Placement.of(self.source)

    def public(self) -> dict[str, Any]:
        public_source = {k: v for k, v in self.source.items() if k != "password_enc"}
        return {
            "slug": self.slug,
            "operation": self.operation,
            "operations": self.operations,
            "source": public_source,
            "keep_until": self.keep_until,
            "expired": self.expired,
        }


def kept_sources(
    ctl: Control, slug: str | None = None, *, moves: list[Any] | None = None
) -> list[KeptSource]:
    """The kept sources of one tenant, or of every live tenant (oldest first); ``moves``:
    ``reads.finished_moves`` as the caller read it (read here otherwise)."""
    from bizosctl.catalog import reads

    if moves is None:
        with reads.catalog(ctl) as conn:
            moves = reads.finished_moves(conn, slug)
    rows = moves
    places: dict[tuple[str, str, str, str], KeptSource] = {}
    for op_id, params, tslug, tid, server, database, schema in rows:
        if params.get("source_purged") or "source" not in params:
            continue
        if params.get("tenant_id") != str(tid):
            continue  # a move of an earlier tenant with the same slug (deleted since)
        src = dict(params["source"])
        where = (src["server"], src["database"], src["schema"])
        if where == (server, database, schema):
            continue  # the tenant lives there again
        key = (tslug, *where)
        kept = places.get(key)
        if kept is None:
            places[key] = KeptSource(tslug, tid, src, params.get("keep_until"), [str(op_id)])
        else:  # a later move left the same place: its time counts
            kept.operations.append(str(op_id))
            kept.keep_until = params.get("keep_until")
            kept.source = src
    return sorted(places.values(), key=lambda k: (k.slug, k.keep_until or 0))


def _select(ctl: Control, slug: str, *, operation: str | None, force: bool) -> list[KeptSource]:
    from bizosctl.moves.plan import current_endpoint

    current_endpoint(ctl, slug)  # NotFound for an unknown tenant
    kept = kept_sources(ctl, slug)
    if operation is not None:
        op = operation.strip().lower()
        if len(op) < 4:
            raise InvalidInput("--operation needs at least 4 characters of the operation id")
        kept = [k for k in kept if any(o.startswith(op) for o in k.operations)]
        if not kept:
            raise NotFound(f"tenant {slug!r} has no kept source from operation {operation!r}")
    if not kept:
        raise NotFound(f"tenant {slug!r} has no kept source to purge")
    if force:
        return kept
    due = [k for k in kept if k.expired]
    if not due:
        when = min(k.keep_until or 0 for k in kept)
        raise InvalidInput(
            f"the kept source(s) of {slug!r} are kept until "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(when))} at the earliest; pass "
            "--force to purge them now"
        )
    return due


class PurgePlan(Plan):
    """``tenant move SLUG --purge-source --dry-run``: each kept source, what dropping it does
    (``action``) and its statements (``sql``)."""

    slug: str
    sources: list[dict[str, Any]]


def plan_purge_sources(
    ctl: Control, slug: str, *, operation: str | None = None, force: bool = False
) -> PurgePlan:
    """What ``purge_sources`` would drop, changing nothing (``--dry-run``).

    Args:
        slug: the tenant.
        operation: only the source that move left (a unique prefix of its id).
        force: also sources whose ``--keep-source`` has not expired.
    """
    out = []
    for k in _select(ctl, slug, operation=operation, force=force):
        action, sql = k.placement().drop_summary(ctl, k.tenant_id)
        out.append({**k.public(), "action": action, "sql": sql})
    return PurgePlan(slug=slug, sources=out)


def purge_sources(
    ctl: Control, slug: str, *, operation: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Drop the tenant's kept sources (see ``plan_purge_sources`` for the arguments)."""
    return {"slug": slug, "purged": [_purge(ctl, k) for k in _select(
        ctl, slug, operation=operation, force=force)]}  # fmt: skip


def _purge(ctl: Control, k: KeptSource) -> dict[str, Any]:
    from bizosctl.catalog.operations import patch_params

    k.placement().drop(ctl, k.tenant_id)
    with ctl.catalog() as s:
        for op_id in k.operations:
            patch_params(s, uuid.UUID(op_id), source_purged=True)
    return {"operation": k.operation, "source": k.public()["source"]}


def purge_expired_sources(ctl: Control, *, dry_run: bool = False) -> dict[str, Any]:
    """Every tenant's kept sources whose time is up (for cron and the scheduler)."""
    due = [k for k in kept_sources(ctl) if k.expired]
    if dry_run:
        return {"dry_run": True, "would_purge": [k.public() for k in due]}
    purged = []
    for k in due:
        purged.append({"slug": k.slug, **_purge(ctl, k)})
    return {"purged": purged}
