"""Routing keys: which tenants hold one person's data, kept in the catalog without PII.

A person's reference is an HMAC-SHA256 of the normalised e-mail under the keyring's ``gdpr``
key (``g<version>:<hex>``). It is not the tenants' blind index (that one is keyed by ``pii``),
so a catalog dump cannot be joined to tenant rows, and it says nothing about the person without
the key. :func:`note_subject` runs wherever a member or a customer with an e-mail is written,
*before* the tenant's transaction commits: the catalog may name a tenant that ends up without
the person (a rolled-back insert; harmless, ``find`` counts zero there and ``reconcile`` drops
it) but never misses one. ``gdpr reconcile`` rebuilds the keys from the tenants themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import TextClause, text

from bizosctl.catalog.control import Control
from bizosctl.db.engines import translate_errors
from bizosctl.security.keyring import Keyring

PURPOSE = "gdpr"


def subject_ref(keyring: Keyring, email: str, *, version: int | None = None) -> str:
    """The routing key of a (normalised) e-mail under the primary ``gdpr`` key, or ``version``."""
    dk = keyring.primary(PURPOSE) if version is None else keyring.get(PURPOSE, version)
    key = hashlib.sha256(b"bizos gdpr subject\0" + dk.key).digest()
    digest = hmac.new(key, email.encode(), hashlib.sha256).hexdigest()
    return f"g{dk.version}:{digest}"


def subject_refs(keyring: Keyring, email: str) -> list[str]:
    """The routing key under every live ``gdpr`` version (a rotation of that key in flight)."""
    return [subject_ref(keyring, email, version=dk.version) for dk in keyring.versions(PURPOSE)]


_NOTE = text(
    "INSERT INTO gdpr_subjects (subject_ref, tenant_id) "
    "SELECT :ref, t.id FROM tenants AS t WHERE t.id = :tid "
    "ON CONFLICT DO NOTHING"
)


def note_sql() -> TextClause:
    """The insert of one ``(:ref, :tid)`` pair, for a caller adding it in its own transaction."""
    return _NOTE


def note_subject(ctl: Control, email: str, tenant_id: uuid.UUID) -> None:
    """Record that the person with (normalised) ``email`` has data in the tenant (idempotent)."""
    note_subjects(ctl, [(subject_ref(ctl.keyring, email), tenant_id)])


def note_subjects(ctl: Control, pairs: Iterable[tuple[str, uuid.UUID]]) -> int:
    """Record many ``(routing key, tenant id)`` pairs in one transaction; returns how many."""
    rows = [{"ref": ref, "tid": tid} for ref, tid in pairs]
    if not rows:
        return 0
    with translate_errors("catalog"), ctl.catalog_engine.begin() as conn:
        conn.execute(_NOTE, rows)
    return len(rows)


def forget_subject(ctl: Control, refs: list[str], tenant_id: uuid.UUID) -> int:
    """Drop the person's routing keys for one tenant (after a verified erasure there)."""
    with translate_errors("catalog"), ctl.catalog_engine.begin() as conn:
        n = conn.execute(
            text("DELETE FROM gdpr_subjects WHERE subject_ref = ANY(:refs) AND tenant_id = :tid"),
            {"refs": refs, "tid": tenant_id},
        ).rowcount
    return int(n or 0)


@dataclass(frozen=True)
class SubjectTenant:
    """A tenant the routing keys name for a person, and where its data lives."""

    tenant_id: uuid.UUID
    slug: str
    tier: str
    region: str
    status: str
    server: str
    database: str
    schema: str


_TENANTS = text(
    "SELECT DISTINCT t.id, t.slug, t.tier, t.region, t.status, r.server, r.database, r.schema "
    "FROM gdpr_subjects AS g JOIN tenants AS t ON t.id = g.tenant_id "
    "JOIN routes AS r ON r.tenant_id = t.id "
    "WHERE g.subject_ref = ANY(:refs) AND t.status NOT IN ('deleted', 'deleting') "
    "ORDER BY t.slug"
)


def tenants_of(ctl: Control, email: str) -> list[SubjectTenant]:
    """The tenants the routing keys name for (normalised) ``email``: one indexed catalog query,
    whatever the size of the fleet."""
    with translate_errors("catalog"), ctl.catalog_engine.connect() as conn:
        rows = conn.execute(_TENANTS, {"refs": subject_refs(ctl.keyring, email)}).all()
    return [SubjectTenant(*row) for row in rows]
