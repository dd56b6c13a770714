"""``gdpr find`` and ``gdpr reconcile``: where a person has data, and the routing keys that
say so."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from bizosctl.catalog.control import Control
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.errors import InvalidInput, NotFound
from bizosctl.fanout import for_each
from bizosctl.privacy.locate import TenantFound, find_in_tenant
from bizosctl.privacy.requests import finish_request, open_request
from bizosctl.privacy.subjects import SubjectTenant, subject_ref, tenants_of
from bizosctl.security.fields import decrypt
from bizosctl.tenancy.members import check_email


class TenantError(BaseModel):
    tenant: str
    region: str
    error: str


class FindResult(BaseModel):
    request: uuid.UUID
    subject_ref: str
    found: bool
    tenants: list[TenantFound]
    errors: list[TenantError]


def subject_email(email: str) -> str:
    """The e-mail as the indexes know it (InvalidInput, exit 2, for a malformed one); the
    message never repeats the value (it would reach logs)."""
    try:
        return check_email(email)
    except InvalidInput:
        raise InvalidInput("not an e-mail address (expected local@domain.tld)") from None


def scope(ctl: Control, email: str, tenant: str | None) -> list[SubjectTenant]:
    found = tenants_of(ctl, email)
    if tenant is not None:
        ctl.route(tenant)  # NotFound for an unknown slug
        found = [t for t in found if t.slug == tenant]
    return found


def receipt_of(tenants: list[TenantFound], errors: list[TenantError]) -> dict[str, Any]:
    return {
        "tenants": [t.model_dump() for t in tenants],
        "errors": [e.model_dump() for e in errors],
        "rows": sum(t.rows for t in tenants),
    }


def find_person(
    ctl: Control,
    email: str,
    *,
    tenant: str | None = None,
    actor: str,
    source: str = "cli",
    log: bool = True,
) -> FindResult:
    """Every tenant (any tier, region, server) holding the person's data, with the rows per
    table, through the routing keys and the blind index only. Logs a ``find`` request.

    Raises NotFound (exit 3) when nothing is found anywhere (the request is logged as done,
    the answer being "no data"); a tenant that cannot be reached is in ``errors`` and leaves
    the request ``partially_done``. ``log=False`` (a dry run's look) logs no request.
    """
    email = subject_email(email)
    ref = subject_ref(ctl.keyring, email)
    targets = scope(ctl, email, tenant)
    rid = (
        open_request(ctl, kind="find", subject_ref=ref, tenant=tenant, actor=actor, source=source)
        if log
        else uuid.UUID(int=0)
    )
    outcomes = for_each(
        targets,
        lambda st: find_in_tenant(ctl, st, email, actor=f"gdpr:find:{rid}")[0],
        parallel=8,
    )
    tenants = [o.result for o in outcomes if o.result is not None and o.result.rows]
    errors = [
        TenantError(tenant=o.item.slug, region=o.item.region, error=str(o.error))
        for o in outcomes
        if o.error is not None
    ]
    status = "partially_done" if errors else "done"
    if log:
        finish_request(ctl, rid, status=status, receipt=receipt_of(tenants, errors))
    result = FindResult(
        request=rid, subject_ref=ref, found=bool(tenants), tenants=tenants, errors=errors
    )
    if not tenants and not errors:
        logged = f" (request {rid} logged)" if log else ""
        raise NotFound(f"no data about this person in any tenant{logged}")
    return result


# -- reconcile -------------------------------------------------------------------------------


class ReconcileResult(BaseModel):
    tenants: int
    keys: int  # routing keys the tenants' data calls for
    added: int
    removed: int
    errors: list[TenantError]
    dry_run: bool


_LIVE = text(
    "SELECT t.id, t.slug, t.tier, t.region, t.status, r.server, r.database, r.schema "
    "FROM tenants AS t JOIN routes AS r ON r.tenant_id = t.id "
    "WHERE t.status NOT IN ('deleted', 'deleting', 'provisioning') ORDER BY t.slug"
)


def _refs_in(ctl: Control, st: SubjectTenant) -> set[str]:
    ring = ctl.keyring
    handle = ctl.server(st.server)
    handle.ensure_ready()
    engine = get_engine(handle.admin_url(st.database))
    out: set[str] = set()
    with translate_errors(f"tenant {st.slug}"), engine.connect() as conn:
        for table in ("members", "customers"):
            rows = conn.execute(
                text(
                    f'SELECT id, email_enc FROM "{st.schema}".{table} '
                    "WHERE tenant_id = :tid AND email_enc IS NOT NULL"
                ),
                {"tid": st.tenant_id},
            )
            for row_id, token in rows:
                email = decrypt(
                    ring, token, tenant_id=st.tenant_id, table=table, column="email", row=row_id
                )
                out.add(subject_ref(ring, email))
    return out


def reconcile(ctl: Control, *, dry_run: bool = False) -> ReconcileResult:
    """Rebuild the routing keys from the tenants' own data (data written before they existed,
    keys under a retired ``gdpr`` version, keys of people since gone)."""
    with translate_errors("catalog"), ctl.catalog_engine.connect() as conn:
        live = [SubjectTenant(*row) for row in conn.execute(_LIVE)]
    outcomes = for_each(live, lambda st: _refs_in(ctl, st), parallel=4)
    added = removed = keys = 0
    errors = []
    for o in outcomes:
        if o.error is not None or o.result is None:
            errors.append(TenantError(tenant=o.item.slug, region=o.item.region, error=str(o.error)))
            continue
        want = o.result
        keys += len(want)
        with translate_errors("catalog"), ctl.catalog_engine.begin() as conn:
            have = set(
                conn.execute(
                    text("SELECT subject_ref FROM gdpr_subjects WHERE tenant_id = :tid"),
                    {"tid": o.item.tenant_id},
                ).scalars()
            )
            add, drop = want - have, have - want
            added, removed = added + len(add), removed + len(drop)
            if dry_run:
                conn.rollback()
                continue
            if drop:
                conn.execute(
                    text(
                        "DELETE FROM gdpr_subjects WHERE tenant_id = :tid "
                        "AND subject_ref = ANY(:refs)"
                    ),
                    {"tid": o.item.tenant_id, "refs": sorted(drop)},
                )
            if add:
                conn.execute(
                    text(
                        "INSERT INTO gdpr_subjects (subject_ref, tenant_id) VALUES (:ref, :tid) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    [{"ref": r, "tid": o.item.tenant_id} for r in sorted(add)],
                )
    return ReconcileResult(
        tenants=len(live), keys=keys, added=added, removed=removed, errors=errors, dry_run=dry_run
    )
