"""``gdpr delete``: erasure by the per-table policy (:mod:`tenant_schema.privacy`), verified.

Per tenant, one transaction as the operator: the only-Admin check (refused unless
``--transfer-ownership-to`` names another member, who becomes Admin), every policy applied in
order (children first), then the audit rows about the person scrubbed, including those the
erasure itself just wrote. After the commit a verification pass, as the leading DSR tools
test it: the access step runs again with the person's former row ids and must find nothing
outside the kept records; the blind index is searched under every live key version in every
``*_bidx`` column; the e-mail and the person's names are searched in every clear text and JSON
column. Anything left fails the tenant (the operation stays open and the request
``partially_done``), naming table and column, never the value. Only a verified tenant loses
its routing key. Each tenant is one checkpoint: a re-run skips the verified ones, and running
the erasure again once it is done finds the person nowhere.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Connection

from bizosctl.catalog.control import Control
from bizosctl.catalog.operations import (
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
    describe,
)
from bizosctl.errors import BizosError, Conflict, NotFound, OperationFailed
from bizosctl.faults import crash_point
from bizosctl.privacy.dsr import DsrParams, drop_sealed, seal, start, tenant_of, unseal
from bizosctl.privacy.locate import Person, count_rows, identify, tenant_conn
from bizosctl.privacy.requests import finish_request
from bizosctl.privacy.subjects import SubjectTenant, forget_subject, subject_refs
from bizosctl.security.fields import blind_indexes
from tenant_schema.privacy import POLICIES

#: Tables whose rows stay linked to the person's former ids after erasure (kept anonymised).
KEPT_LINKED = {p.table for p in POLICIES if p.action == "keep"} | {"customers", "audit_logs"}
MIN_NAME = 3  # shorter names are not searched in free text (they match everything)


class Leftover(BaseModel):
    table: str
    column: str
    rows: int
    what: str  # rows | blind index | e-mail or name in clear


class EraseResult(BaseModel):
    request: uuid.UUID
    operation: uuid.UUID
    status: str
    dry_run: bool = False
    tenants: list[dict[str, Any]]
    errors: list[dict[str, Any]]


def _only_admin(conn: Connection, st: SubjectTenant, person: Person) -> bool:
    admins = {
        str(m)
        for (m,) in conn.execute(
            text(
                "SELECT mr.member_id FROM member_roles AS mr "
                "JOIN roles AS r ON r.tenant_id = mr.tenant_id AND r.id = mr.role_id "
                "JOIN members AS m ON m.tenant_id = mr.tenant_id AND m.id = mr.member_id "
                "WHERE mr.tenant_id = :tid AND lower(r.name) = 'admin' AND m.status = 'active'"
            ),
            {"tid": st.tenant_id},
        )
    }
    return bool(admins & set(person.mids)) and not admins - set(person.mids)


def _transfer(ctl: Control, conn: Connection, st: SubjectTenant, email: str) -> None:
    heir = conn.execute(
        text("SELECT id FROM members WHERE tenant_id = :tid AND email_bidx = ANY(:b)"),
        {"tid": st.tenant_id, "b": blind_indexes(ctl.keyring, email)},
    ).scalar_one_or_none()
    if heir is None:
        raise NotFound(f"tenant {st.slug}: the new owner is no member of this tenant")
    conn.execute(
        text(
            "INSERT INTO member_roles (tenant_id, member_id, role_id) "
            "SELECT :tid, :mid, r.id FROM roles AS r WHERE r.tenant_id = :tid "
            "AND lower(r.name) = 'admin' ORDER BY r.name LIMIT 1 ON CONFLICT DO NOTHING"
        ),
        {"tid": st.tenant_id, "mid": heir},
    )


def _apply(
    conn: Connection, st: SubjectTenant, person: Person, *, retention: int
) -> dict[str, dict[str, Any]]:
    """Apply every policy in order; the receipt: rows per table, action, reason, retention."""
    params = person.params(st.tenant_id)
    receipt: dict[str, dict[str, Any]] = {}
    for p in POLICIES:
        where = p.where(erasing=True)
        if p.action == "delete":
            sql = f"DELETE FROM {p.table} AS t WHERE {where}"
        elif p.action == "anonymise":
            sql = f"UPDATE {p.table} AS t SET {p.set} WHERE {where}"
        else:
            sql = f"SELECT count(*) FROM {p.table} AS t WHERE {where}"
        res = conn.execute(text(sql), params)
        n = int(res.scalar_one()) if p.action == "keep" else int(res.rowcount or 0)
        if n:
            receipt[p.table] = {"action": p.action, "rows": n, "reason": p.reason}
            if p.retention:
                receipt[p.table]["retention_years"] = retention
    if "invoices" in receipt:  # kept until the newest invoice's retention ends
        newest = conn.execute(
            text(
                "SELECT max(coalesce(issued_on, created_at::date)) FROM invoices AS t "
                "WHERE t.tenant_id = :tid AND t.customer_id = ANY(CAST(:cids AS uuid[]))"
            ),
            params,
        ).scalar_one()
        if newest is not None:
            try:
                until = newest.replace(year=newest.year + retention)
            except ValueError:  # 29 February into a common year
                until = newest.replace(year=newest.year + retention, day=28)
            for table in ("invoices", "invoice_items", "transactions", "customers"):
                if table in receipt:
                    receipt[table]["kept_until"] = until.isoformat()
    # the statements above wrote audit rows of their own (customers' old name): scrub again
    audit = next(p for p in POLICIES if p.table == "audit_logs")
    conn.execute(
        text(f"UPDATE audit_logs AS t SET {audit.set} WHERE {audit.where(erasing=True)}"),
        params,
    )
    return receipt


def _text_columns(conn: Connection, schema: str) -> list[tuple[str, str, str]]:
    return [
        (str(t), str(c), str(d))
        for t, c, d in conn.execute(
            text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = :s AND data_type IN ('text', 'jsonb', 'character varying') "
                "AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = :s) "
                "AND table_name <> 'alembic_version' ORDER BY table_name, ordinal_position"
            ),
            {"s": schema},
        )
    ]


def verify(ctl: Control, st: SubjectTenant, person: Person, *, actor: str) -> list[Leftover]:
    """What is left of the person in the tenant (empty: erased)."""
    left: list[Leftover] = []
    with tenant_conn(ctl, st, actor=actor) as conn:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        for table, n in count_rows(conn, st, person).items():
            if table not in KEPT_LINKED:
                left.append(Leftover(table=table, column="*", rows=n, what="rows"))
        bidx = blind_indexes(ctl.keyring, person.email)  # every live version, now
        pattern = pattern_of(person.email, person.names)
        for table, column, dtype in _text_columns(conn, st.schema):
            if column.endswith("_enc"):
                continue  # ciphertext
            col = f't."{column}"'
            if column.endswith("_bidx"):
                cond, what = f"{col} = ANY(:bidx)", "blind index"
            else:
                value = f"{col}::text" if dtype == "jsonb" else col
                cond, what = f"{value} ~* :pattern", "e-mail or name in clear"
            n = conn.execute(
                text(f'SELECT count(*) FROM "{table}" AS t WHERE t.tenant_id = :tid AND {cond}'),
                {"tid": st.tenant_id, "bidx": bidx, "pattern": pattern},
            ).scalar_one()
            if n:
                left.append(Leftover(table=table, column=column, rows=int(n), what=what))
    return left


def pattern_of(email: str, names: list[str]) -> str:
    """A PostgreSQL regex matching the e-mail or a whole name (case-insensitive with ~*)."""
    needles = [re.escape(email)] + [
        r"\m" + re.escape(n) + r"\M" for n in names if len(n) >= MIN_NAME
    ]
    return "(" + "|".join(needles) + ")"


def _erase_tenant(
    ctl: Control,
    st: SubjectTenant,
    email: str,
    transfer: str | None,
    actor: str,
    dry_run: bool,
    known: dict[str, Any] | None = None,
    on_identified: Callable[[Person], None] | None = None,
) -> tuple[dict[str, Any], Person]:
    """Erase in one tenant. ``known``: who the person was there, as a previous run of this
    operation identified them (the rows it deleted cannot say so any more)."""
    with tenant_conn(ctl, st, actor=actor) as conn:
        person = identify(ctl, conn, st, email)
        if known:
            person.mids = sorted(set(person.mids) | set(known.get("mids", [])))
            person.cids = sorted(set(person.cids) | set(known.get("cids", [])))
            person.names = sorted(set(person.names) | set(known.get("names", [])))
        person.pattern = pattern_of(email, person.names)
        if _only_admin(conn, st, person):
            if transfer is None:
                raise Conflict(
                    f"tenant {st.slug}: this person is its only Admin: pass "
                    "--transfer-ownership-to EMAIL (another member, who becomes Admin)"
                )
            _transfer(ctl, conn, st, transfer)
        if on_identified is not None:
            on_identified(person)  # committed before the erasure is
        years = ctl.settings.gdpr_retention_years.get(
            st.region, ctl.settings.gdpr_retention_default_years
        )
        receipt = _apply(conn, st, person, retention=years)
        if dry_run:
            conn.rollback()
            out = {"tenant": st.slug, "region": st.region, "tables": receipt, "dry_run": True}
            return out, person
    crash_point("gdpr.delete.erased")
    return {"tenant": st.slug, "region": st.region, "tables": receipt}, person


def _verify_tenant(ctl: Control, st: SubjectTenant, person: Person, actor: str) -> None:
    left = verify(ctl, st, person, actor=actor)
    if left:
        raise OperationFailed(
            f"tenant {st.slug}: verification found the person's data left in "
            + ", ".join(f"{x.table}.{x.column} ({x.rows} rows: {x.what})" for x in left)
        )
    forget_subject(ctl, subject_refs(ctl.keyring, person.email), st.tenant_id)


def erase_person(
    ctl: Control,
    email: str,
    *,
    tenant: str | None = None,
    transfer_to: str | None = None,
    dry_run: bool = False,
    actor: str,
    source: str = "cli",
    background: bool = False,
) -> EraseResult | Any:
    """Erase the person's data (all tenants, or ``tenant``); resumes an unfinished erasure.
    ``dry_run``: every tenant's counts, rolled back, nothing logged but the request."""
    if dry_run:
        return _dry_run(ctl, email, tenant=tenant, transfer_to=transfer_to, actor=actor)
    if transfer_to is None:
        _refuse_only_admin(ctl, email, tenant)
    op_id, _rid, resumed = start(
        ctl,
        kind=OperationKind.GDPR_DELETE,
        email=email,
        tenant=tenant,
        actor=actor,
        source=source,
        transfer_to=transfer_to,
        queued=background,
    )
    if background:
        from bizosctl.jobs.background import submit

        # recorded (queued) by start(); a re-run re-queues it if this enqueue were lost
        return submit(ctl, lambda _s: (op_id, resumed))
    return EraseResult.model_validate(resume_erase(ctl, describe(ctl, op_id, with_steps=False)))


def _refuse_only_admin(ctl: Control, email: str, tenant: str | None) -> None:
    """Conflict (exit 2) before anything starts when the person is a tenant's only Admin."""
    from bizosctl.privacy.find import scope, subject_email

    email = subject_email(email)
    alone = []
    for st in scope(ctl, email, tenant):
        try:
            with tenant_conn(ctl, st, actor="gdpr:delete:check") as conn:
                if _only_admin(conn, st, identify(ctl, conn, st, email)):
                    alone.append(st.slug)
        except BizosError:
            continue  # unreachable now: the run reports it
    if alone:
        raise Conflict(
            f"this person is the only Admin of {', '.join(alone)}: pass "
            "--transfer-ownership-to EMAIL (another member there, who becomes Admin)"
        )


def _dry_run(
    ctl: Control, email: str, *, tenant: str | None, transfer_to: str | None, actor: str
) -> EraseResult:
    from bizosctl.privacy.find import scope, subject_email

    email = subject_email(email)
    targets = scope(ctl, email, tenant)
    if not targets:
        raise NotFound("no data about this person in any tenant")
    tenants, errors = [], []
    for st in targets:
        try:
            tenants.append(_erase_tenant(ctl, st, email, transfer_to, actor, dry_run=True)[0])
        except BizosError as exc:
            errors.append({"tenant": st.slug, "region": st.region, "error": exc.message})
    zero = uuid.UUID(int=0)
    return EraseResult(
        request=zero, operation=zero, status="dry_run", dry_run=True, tenants=tenants, errors=errors
    )


def _ident(ctl: Control, person: Person, ref: str) -> dict[str, Any]:
    return {
        "mids": person.mids,
        "cids": person.cids,
        "names_sealed": seal(ctl, json.dumps(person.names), ref=ref),
    }


def _known(ctl: Control, data: dict[str, Any], ref: str) -> dict[str, Any] | None:
    if not data:
        return None
    names = (
        json.loads(unseal(ctl, data["names_sealed"], ref=ref)) if data.get("names_sealed") else []
    )
    return {"mids": data.get("mids", []), "cids": data.get("cids", []), "names": names}


def resume_erase(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    params = DsrParams.model_validate(op.params)
    assert params.request is not None and params.subject_sealed
    rid = uuid.UUID(params.request)
    email = unseal(ctl, params.subject_sealed, ref=params.subject_ref)
    transfer = (
        unseal(ctl, params.transfer_sealed, ref=params.subject_ref)
        if params.transfer_sealed
        else None
    )
    tenants = [tenant_of(ctl, t) for t in params.tenants]
    errors: list[dict[str, Any]] = []
    with OperationRun(ctl, op.id) as run:
        for st in tenants:
            step = f"tenant:{st.slug}"
            if step in run.completed:
                continue
            if run.cancel_requested():  # between two tenants: what is done stays done
                done = [s.data for s in run.steps("tenant:")]
                finish_request(ctl, rid, status="partially_done", receipt={"tenants": done})
                run.finish(OperationStatus.CANCELLED, "cancelled by the operator")
                return {"request": rid, "operation": op.id, "status": "cancelled",
                        "tenants": done, "errors": []}  # fmt: skip
            actor = f"gdpr:delete:{rid}"
            try:
                known = _known(ctl, run.step_data(f"ident:{st.slug}"), params.subject_ref)
                # who the person was here, for a re-run after a crash or a failed
                # verification: ids in clear (random uuids), names sealed; dropped at the end
                slug = st.slug

                def note(p: Person, slug: str = slug) -> None:
                    run.step(f"ident:{slug}", **_ident(ctl, p, params.subject_ref))

                data, person = _erase_tenant(
                    ctl, st, email, transfer, actor, False, known, on_identified=note
                )
                _verify_tenant(ctl, st, person, actor)
            except BizosError as exc:
                errors.append({"tenant": st.slug, "region": st.region, "error": exc.message})
                continue
            run.step(step, **data, verified=True)
        done = [s.data for s in run.steps("tenant:")]
        receipt = {"tenants": done, "errors": errors}
        if errors or len(done) < len(tenants):
            finish_request(ctl, rid, status="partially_done", receipt=receipt)
            run.set_progress(len(done), len(tenants), "partially done: run the same command again")
            raise OperationFailed(
                f"erasure {op.id}: {len(tenants) - len(done)} of {len(tenants)} tenants not "
                f"erased ({'; '.join(e['tenant'] + ': ' + e['error'] for e in errors)}); the "
                "others are done: run the same command again to finish"
            )
        finish_request(ctl, rid, status="done", receipt=receipt)
        run.finish(OperationStatus.DONE, also=lambda c: drop_sealed(c, op.id, idents=True))
    return {
        "request": rid, "operation": op.id, "status": "done", "tenants": done, "errors": [],
    }  # fmt: skip
