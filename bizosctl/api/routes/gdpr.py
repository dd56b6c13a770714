"""The signed-in member's own data-subject requests, and ``/.well-known/security.txt``.

``GET /api/v1/me/export`` and ``POST /api/v1/me/delete`` log the same requests as ``gdpr
export`` and ``gdpr delete`` (source ``api``), limited to the tenant the member signed in to:
a session in one tenant proves nothing about the person's accounts elsewhere. An API key is
no person: 403.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, status
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from bizosctl.api.deps import CtlDep, Ctx, Needs
from bizosctl.errors import Forbidden, NotFound

router = APIRouter(tags=["gdpr"])


class DeleteRequest(BaseModel):
    confirm: Literal[True]
    transfer_ownership_to: str | None = None


class DeleteAccepted(BaseModel):
    request: uuid.UUID
    operation: uuid.UUID
    status: str


def _email(ctx: Ctx) -> str:
    from bizosctl.tenancy.members import get_member, member_public

    c = ctx.caller
    if c.kind != "member" or c.member_id is None:
        raise Forbidden("only a signed-in member can ask for their own data")
    with ctx.session(read_only=True) as s:
        return member_public(ctx.ctl, s, get_member(s, c.member_id)).email


@router.get(
    "/api/v1/me/export",
    summary="A zip of my data in this tenant (GDPR Art. 15 and 20)",
    response_class=FileResponse,
)
def export_me(ctx: Ctx = Depends(Needs(None, None, group="gdpr"))) -> FileResponse:
    from bizosctl.privacy.export import export_person

    email = _email(ctx)
    work = Path(tempfile.mkdtemp(prefix="bizos-export-"))
    out = work / "export.zip"
    try:
        result = export_person(
            ctx.ctl, email, out=out, tenant=ctx.caller.tenant, actor=ctx.caller.actor,
            source="api",
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(
        out,
        media_type="application/zip",
        filename=f"export-{result.request}.zip",
        headers={"X-Request-ID-GDPR": str(result.request), "Cache-Control": "no-store"},
        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
    )


@router.post(
    "/api/v1/me/delete",
    summary="Erase my data in this tenant (GDPR Art. 17); runs on a worker",
    status_code=status.HTTP_202_ACCEPTED,
)
def delete_me(
    body: DeleteRequest, ctx: Ctx = Depends(Needs(None, None, group="gdpr"))
) -> DeleteAccepted:
    from bizosctl.privacy.erase import erase_person
    from bizosctl.privacy.requests import request_for_operation

    email = _email(ctx)
    sub = erase_person(
        ctx.ctl, email, tenant=ctx.caller.tenant, transfer_to=body.transfer_ownership_to,
        actor=ctx.caller.actor, source="api", background=True,
    )  # fmt: skip
    rid = request_for_operation(ctx.ctl, sub.operation)
    assert rid is not None
    return DeleteAccepted(request=rid, operation=sub.operation, status="in_progress")


@router.get(
    "/.well-known/security.txt",
    summary="How to report a vulnerability (RFC 9116)",
    response_class=PlainTextResponse,
)
def security_txt(ctl: CtlDep) -> PlainTextResponse:
    s = ctl.settings
    if not s.security_contact:
        raise NotFound("no security contact is configured (BIZOS_SECURITY_CONTACT)")
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(
        days=s.security_txt_expires_days
    )
    lines = [f"Contact: {c}" for c in s.security_contact]
    lines.append(f"Expires: {expires.isoformat().replace('+00:00', 'Z')}")
    if s.security_policy_url:
        lines.append(f"Policy: {s.security_policy_url}")
    if s.security_languages:
        lines.append(f"Preferred-Languages: {', '.join(s.security_languages)}")
    if s.public_url:
        lines.append(f"Canonical: {s.public_url.rstrip('/')}/.well-known/security.txt")
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; charset=utf-8")
