"""What export and erasure share: the operation (one per request, a checkpoint per tenant),
its params, and the subject's e-mail sealed in them while it runs.

The runner needs the e-mail to compute blind indexes; the catalog must hold no PII. So the
params carry it sealed under the keyring's ``gdpr`` key (AES-GCM, bound to the request) for
as long as the operation is open, and :func:`unseal_done` removes it when the request ends.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import update

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Operation
from bizosctl.catalog.operations import OperationKind, patch_params, start_or_resume
from bizosctl.errors import NotFound
from bizosctl.privacy.find import scope, subject_email
from bizosctl.privacy.requests import finish_request, open_request, request_for_operation
from bizosctl.privacy.subjects import SubjectTenant, subject_ref
from bizosctl.security.fields import decrypt, encrypt


class DsrParams(BaseModel):
    request: str | None = None
    subject_ref: str
    subject_sealed: str | None = None
    tenant: str | None = None
    tenants: list[dict[str, Any]] = []
    out: str | None = None
    format: str = "json"
    transfer_sealed: str | None = None


def seal(ctl: Control, value: str, *, ref: str) -> str:
    return encrypt(
        ctl.keyring, value, tenant_id="catalog", table="gdpr", column=ref, purpose="gdpr"
    )


def unseal(ctl: Control, token: str, *, ref: str) -> str:
    return decrypt(
        ctl.keyring, token, tenant_id="catalog", table="gdpr", column=ref, purpose="gdpr"
    )


def tenant_dict(st: SubjectTenant) -> dict[str, Any]:
    return {
        "tenant_id": str(st.tenant_id), "slug": st.slug, "tier": st.tier, "region": st.region,
        "status": st.status, "server": st.server, "database": st.database, "schema": st.schema,
    }  # fmt: skip


def tenant_of(ctl: Control, d: dict[str, Any]) -> SubjectTenant:
    """Where the tenant lives now (a move since the request started changes it)."""
    from sqlalchemy import text

    with ctl.catalog_engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT t.id, t.slug, t.tier, t.region, t.status, r.server, r.database, r.schema "
                "FROM tenants AS t JOIN routes AS r ON r.tenant_id = t.id WHERE t.id = :tid"
            ),
            {"tid": uuid.UUID(d["tenant_id"])},
        ).one_or_none()
    if row is None:
        return SubjectTenant(**{**d, "tenant_id": uuid.UUID(d["tenant_id"])})
    return SubjectTenant(*row)


def start(
    ctl: Control,
    *,
    kind: OperationKind,
    email: str,
    tenant: str | None,
    actor: str,
    source: str,
    out: str | None = None,
    fmt: str = "json",
    transfer_to: str | None = None,
    queued: bool = False,
) -> tuple[uuid.UUID, uuid.UUID, bool]:
    """Start (or resume: the same command again) the request's operation.
    Returns ``(operation id, request id, resumed)``."""
    from bizosctl.catalog.operations import OperationStatus

    email = subject_email(email)
    ref = subject_ref(ctl.keyring, email)
    targets = scope(ctl, email, tenant)
    params = DsrParams(
        subject_ref=ref,
        subject_sealed=seal(ctl, email, ref=ref),
        tenant=tenant,
        tenants=[tenant_dict(t) for t in targets],
        out=out,
        format=fmt,
        transfer_sealed=seal(ctl, subject_email(transfer_to), ref=ref) if transfer_to else None,
    )
    if not targets:
        rid = open_request(
            ctl,
            kind="export" if kind == OperationKind.GDPR_EXPORT else "delete",
            subject_ref=ref,
            tenant=tenant,
            actor=actor,
            source=source,
        )
        finish_request(ctl, rid, status="done", receipt={"tenants": [], "errors": [], "rows": 0})
        raise NotFound(f"no data about this person in any tenant (request {rid} logged)")
    status = OperationStatus.QUEUED if queued else OperationStatus.RUNNING
    with ctl.catalog() as s:
        op_id, resumed = start_or_resume(
            ctl,
            s,
            kind=kind,
            target=f"gdpr:{ref}",
            params=params,
            exclusive=True,
            match=("tenant", "out", "format"),
            status=status,
        )
    if resumed and params.transfer_sealed:  # how to run it, given again: the new one counts
        with ctl.catalog() as s:
            patch_params(s, op_id, transfer_sealed=params.transfer_sealed)
    found = request_for_operation(ctl, op_id) if resumed else None
    rid = found or open_request(
        ctl,
        kind="export" if kind == OperationKind.GDPR_EXPORT else "delete",
        subject_ref=ref,
        tenant=tenant,
        actor=actor,
        source=source,
        operation_id=op_id,
    )
    with ctl.catalog() as s:
        patch_params(s, op_id, request=str(rid))
    return op_id, rid, resumed


def drop_sealed(conn: Any, op_id: uuid.UUID, *, idents: bool = False) -> None:
    """Remove the sealed e-mails from the params and, with ``idents``, the steps that name
    who the person was in each tenant (the request ended)."""
    if idents:
        from sqlalchemy import delete

        from bizosctl.catalog.models import OperationStep

        conn.execute(
            delete(OperationStep).where(
                OperationStep.op_id == op_id, OperationStep.name.startswith("ident:")
            )
        )
    conn.execute(
        update(Operation)
        .where(Operation.id == op_id)
        .values(params=Operation.params.op("-")("subject_sealed").op("-")("transfer_sealed"))
    )
