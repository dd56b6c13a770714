"""Finding one person's rows in one tenant, by the blind index only.

The tenants come from the routing keys (:mod:`bizosctl.privacy.subjects`); inside each, the
person is the member and customer rows whose ``email_bidx`` is the e-mail's blind index under
any live ``pii`` version (a rotation may be half way), and the rows that reference those
(:data:`tenant_schema.privacy.POLICIES`). Nothing here scans plain text, and nothing read
leaves the machine running the command: counts go to the catalog, rows only to an export.

Tenant data is read as the operator (the server's admin login), with every query filtered by
the tenant id: a suspended or read-only tenant must still answer a data-subject request.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.catalog.control import Control
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.privacy.subjects import SubjectTenant
from bizosctl.security.fields import blind_indexes, decrypt
from tenant_schema.privacy import POLICIES

_CONTEXT = text(
    "SELECT set_config('search_path', :path, true), set_config('bizos.actor', :actor, true)"
)


@dataclass
class Person:
    """One person as one tenant knows them: the ids of their rows and the values to look for."""

    email: str
    bidx: list[str]
    mids: list[str] = field(default_factory=list)
    cids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    #: erasure only: a regex of the e-mail and names, for audit rows that quote them in
    #: clear (``find`` leaves it None: it never scans plain text)
    pattern: str | None = None

    def params(self, tenant_id: uuid.UUID) -> dict[str, Any]:
        return {
            "tid": tenant_id,
            "mids": self.mids,
            "cids": self.cids,
            "bidx": self.bidx,
            "actors": [f"member:{m}" for m in self.mids],
            "pattern": self.pattern,
        }  # (pattern: read only by the erasing predicates)

    @property
    def found(self) -> bool:
        return bool(self.mids or self.cids)


class TenantFound(BaseModel):
    tenant: str
    region: str
    tier: str
    rows: int
    tables: dict[str, int]


@contextlib.contextmanager
def tenant_conn(ctl: Control, st: SubjectTenant, *, actor: str) -> Iterator[Connection]:
    """One transaction on the tenant's database as the operator, in its schema."""
    handle = ctl.server(st.server)
    handle.ensure_ready()
    engine = get_engine(handle.admin_url(st.database))
    with translate_errors(f"tenant {st.slug}"), engine.begin() as conn:
        conn.execute(_CONTEXT, {"path": f'"{st.schema}", public', "actor": actor})
        yield conn


def identify(ctl: Control, conn: Connection, st: SubjectTenant, email: str) -> Person:
    """The person's member and customer rows in this tenant, and their names (decrypted)."""
    person = Person(email=email, bidx=blind_indexes(ctl.keyring, email))
    for mid, name_enc in conn.execute(
        text("SELECT id, name_enc FROM members WHERE tenant_id = :tid AND email_bidx = ANY(:b)"),
        {"tid": st.tenant_id, "b": person.bidx},
    ):
        person.mids.append(str(mid))
        if name_enc:
            person.names.append(
                decrypt(
                    ctl.keyring,
                    name_enc,
                    tenant_id=st.tenant_id,
                    table="members",
                    column="name",
                    row=mid,
                )
            )
    for cid, name in conn.execute(
        text("SELECT id, name FROM customers WHERE tenant_id = :tid AND email_bidx = ANY(:b)"),
        {"tid": st.tenant_id, "b": person.bidx},
    ):
        person.cids.append(str(cid))
        if name:
            person.names.append(name)
    person.names = sorted(set(person.names))
    return person


def count_rows(conn: Connection, st: SubjectTenant, person: Person) -> dict[str, int]:
    """Rows per table that belong to or mention the person (one query for all tables)."""
    parts = [
        f"SELECT '{p.table}' AS tbl, count(*) AS n FROM {p.table} AS t WHERE {p.where()}"
        for p in POLICIES
    ]
    rows = conn.execute(text(" UNION ALL ".join(parts)), person.params(st.tenant_id)).all()
    return {str(tbl): int(n) for tbl, n in rows if n}


def find_in_tenant(
    ctl: Control, st: SubjectTenant, email: str, *, actor: str
) -> tuple[TenantFound, Person]:
    with tenant_conn(ctl, st, actor=actor) as conn:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        person = identify(ctl, conn, st, email)
        # without a member or customer row, failed logins of the address are what is left
        tables = count_rows(conn, st, person)
    found = TenantFound(
        tenant=st.slug, region=st.region, tier=st.tier, rows=sum(tables.values()), tables=tables
    )
    return found, person
