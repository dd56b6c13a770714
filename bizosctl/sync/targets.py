"""Migration targets: the shared schema of every server, each tenant schema, each database.

Revisions are read from the targets themselves (the truth), one connection per database and
one query per database for all its schemas.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bizosctl.catalog import reads
from bizosctl.catalog.control import Control
from bizosctl.errors import BizosError, NotFound
from bizosctl.providers.local import CLOUD_PROVIDERS
from bizosctl.tenancy.names import SHARED_DB, SHARED_SCHEMA, check_region_name, check_tier
from bizosctl.tenancy.placement import Placement


@dataclass
class Target:
    """A migration target: where it is (a placement) and what sync knows of it."""

    placement: Placement
    tenant: str | None  # the tenant whose schema it is (None: a server's shared schema)
    revision: str | None = None
    status: str | None = None  # last recorded: ok | failed
    error: str | None = None
    size_bytes: int = 0
    reachable: bool = True
    moving: str | None = None  # why a tenant move holds this target, if one does
    #: selected shared-tier tenants whose rows live in this (shared) target
    holds: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:  # shared | schema | isolated
        return self.placement.tier

    @property
    def region(self) -> str:
        return self.placement.region

    @property
    def server(self) -> str:
        return self.placement.server

    @property
    def database(self) -> str:
        return self.placement.database

    @property
    def schema(self) -> str:
        return self.placement.schema

    @property
    def key(self) -> tuple[str, str, str]:
        return self.placement.key

    @property
    def label(self) -> str:
        return self.tenant or f"{self.server}/{self.schema}"

    def public(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "tenant": self.tenant, "region": self.region, "server": self.server,
            "database": self.database, "schema": self.schema, "revision": self.revision,
            "status": self.status, "error": self.error,
            **({"holds": self.holds} if self.holds else {}),
        }  # fmt: skip


@dataclass
class Selection:
    tenants: list[str] = field(default_factory=list)
    tier: str | None = None
    region: str | None = None

    def validate(self) -> None:
        if self.tier is not None:
            check_tier(self.tier)
        if self.region is not None:
            check_region_name(self.region)

    def describe(self) -> str:
        """Short and stable: it names the run's operation (a long --tenant list is hashed)."""
        names = ",".join(sorted(self.tenants))
        if len(self.tenants) > 10:
            import hashlib

            digest = hashlib.sha256(names.encode()).hexdigest()[:12]
            names = f"{','.join(sorted(self.tenants)[:10])}+{len(self.tenants) - 10} more#{digest}"
        parts = [
            f"tenant={names}" if self.tenants else "",
            f"tier={self.tier}" if self.tier else "",
            f"region={self.region}" if self.region else "",
        ]
        return " ".join(p for p in parts if p) or "all"


def list_targets(ctl: Control, selection: Selection | None = None) -> list[Target]:
    """Every target the selection names, with its last recorded status (not yet its revision)."""
    sel = selection or Selection()
    sel.validate()
    servers, rows, recorded_rows, moves = reads.target_rows(ctl)
    recorded = {(t.server, t.database, t.schema): t for t in recorded_rows}
    known = {r.slug for r in rows}
    missing = [t for t in sel.tenants if t not in known]
    if missing:
        raise NotFound(f"unknown tenant(s): {', '.join(missing)}")
    if sel.region is not None and sel.region not in {srv.region for srv in servers}:
        reads.region_check(ctl, sel.region)
    targets: list[Target] = []
    if not sel.tenants and sel.tier in (None, "shared"):
        for srv in servers:
            if srv.provider in CLOUD_PROVIDERS:
                continue  # a cloud account or project has no shared database
            if sel.region in (None, srv.region):
                targets.append(Target(_shared(srv), None))
    by_server = {srv.name: srv for srv in servers}
    for r in rows:
        if r.tier == "shared":
            # It lives in its server's shared target: a selected shared-tier tenant selects
            # that target (once), which says whose rows it holds.
            if r.slug in sel.tenants:
                shared = next(
                    (t for t in targets if t.kind == "shared" and t.server == r.server), None
                )
                if shared is None:
                    shared = Target(_shared(by_server[r.server]), None)
                    targets.append(shared)
                shared.holds.append(r.slug)
            continue
        if sel.tenants and r.slug not in sel.tenants:
            continue
        if sel.tier not in (None, r.tier) or sel.region not in (None, r.region):
            continue
        place = Placement(r.tier, r.region, r.server, r.database, r.schema, r.role)
        targets.append(Target(place, r.slug))
    held = _held_by_moves(moves)
    for t in targets:
        rec = recorded.get(t.key)
        if rec is not None:
            t.status, t.error = rec.status, rec.error
        t.moving = held.get(t.key)
    return targets


def _shared(srv: Any) -> Placement:
    """A server's shared schema, where its shared-tier tenants live (``srv``: a ``servers``
    row)."""
    return Placement("shared", srv.region, srv.name, SHARED_DB, SHARED_SCHEMA, srv.app_role)


def _held_by_moves(moves: list[Any]) -> dict[tuple[str, str, str], str]:
    """Targets that a running tenant move (``moves``: their operations) reads from or writes
    to: both sides must stay at one revision until the move has switched."""
    held: dict[tuple[str, str, str], str] = {}
    for op_id, slug, params in moves:
        for side in ("source", "target"):
            where = params.get(side)
            if where:  # only the target's key: any move's params hold it, old or new
                key = (where["server"], where["database"], where["schema"])
                held[key] = (
                    f"tenant {slug} is moving (operation {op_id}); sync again after the move"
                )
    return held


def read_revisions(ctl: Control, targets: list[Target], *, sizes: bool = False) -> None:
    """Fill ``revision`` (and ``size_bytes`` with ``sizes``) from the targets: a couple of
    queries per database, whatever the number of schemas in it."""
    by_db: dict[tuple[str, str], list[Target]] = defaultdict(list)
    for t in targets:
        by_db[(t.server, t.database)].append(t)
    for (server, database), group in by_db.items():
        schemas = [t.schema for t in group]
        try:
            handle = ctl.server(server)
            handle.ensure_ready()
            revisions, size_of = reads.schema_revisions(
                handle.admin_conninfo(database), schemas, sizes=sizes, what=f"server {server}"
            )
        except BizosError as exc:
            for t in group:
                t.reachable, t.error = False, exc.message
            continue
        for t in group:
            t.revision = revisions.get(t.schema)
            t.size_bytes = int(size_of.get(t.schema) or 0)


def status_report(ctl: Control, selection: Selection) -> dict[str, Any]:
    """``schema status``: the tenant head, each target's revision, how many targets are at
    each, and the revisions the fleet has that this code does not know."""
    from bizosctl.db.migrate import head, known_revision

    targets = list_targets(ctl, selection)
    read_revisions(ctl, targets)
    summary = Counter(t.revision or "none" for t in targets)
    unknown = sorted(r for r in summary if r != "none" and not known_revision("tenant", r))
    return {
        "head": head("tenant"),
        "targets": [t.public() for t in targets],
        "summary": dict(summary),
        # revisions the fleet has and this code does not: the code is older than the fleet
        "unknown_revisions": unknown,
    }
