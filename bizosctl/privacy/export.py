"""``gdpr export``: one person's data from every tenant, as a zip with a manifest.

Streaming end to end: each table's rows come through a server-side cursor (``yield_per``),
are decrypted one by one and written to a part file; the zip is assembled from the parts by
copying. Memory stays flat however many rows the person has. Each tenant's parts are one
checkpoint of the operation: a tenant that fails (its server down) leaves the others done and
the request ``partially_done``; the same command resumes with the missing tenants.

The output is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600: an existing file
or a symlink in its place is refused, never overwritten. The parts live next to it in a 0700
directory (``<out>.parts``) until the zip is complete.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import uuid
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from bizosctl.catalog.control import Control
from bizosctl.catalog.operations import (
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
    describe,
)
from bizosctl.errors import BizosError, InvalidInput, OperationFailed
from bizosctl.faults import crash_point
from bizosctl.privacy.dsr import DsrParams, drop_sealed, start, tenant_of, unseal
from bizosctl.privacy.locate import identify, tenant_conn
from bizosctl.privacy.requests import finish_request
from bizosctl.privacy.subjects import SubjectTenant
from bizosctl.security.fields import decrypt
from tenant_schema.models import ENCRYPTED_COLUMNS
from tenant_schema.privacy import POLICIES

#: Rows per round trip of the server-side cursor: SQLAlchemy's buffer of a streamed text()
#: result grows 5, 25, 125, ... up to ``max_row_buffer`` (``yield_per`` is ignored for text()).
#: At 500 a person with 1,000 rows already fills it, so the export's peak is the same for
#: 1,000 rows as for 100,000 (with the default 1,000 it did not: a 1.6x "growth" that was the
#: buffer, not the data).
FETCH = 500


class ExportResult(BaseModel):
    request: uuid.UUID
    operation: uuid.UUID
    out: str | None
    status: str
    tenants: list[dict[str, Any]]
    errors: list[dict[str, str]]
    files: int = 0
    rows: int = 0


def check_out(out: Path) -> Path:
    """The output path, refused (InvalidInput) when it exists (a symlink too, even dangling),
    when its directory does not exist or is not writable, or when it is not a .zip."""
    if out.suffix.lower() != ".zip":
        raise InvalidInput(f"{out}: the export is a zip file: name it FILE.zip")
    try:
        os.lstat(out)
    except FileNotFoundError:
        pass
    else:
        raise InvalidInput(f"{out} exists: an export never overwrites a file; choose another")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInput(f"{parent}: no such directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInput(f"{parent}: not writable")
    return out


def _clear(ctl: Control, table: str, row: dict[str, Any], tid: uuid.UUID) -> dict[str, Any]:
    enc = ENCRYPTED_COLUMNS.get(table, {})
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key.endswith(("_bidx", "_hash")):
            continue  # keys and hashes are no data of the person's
        if key in enc:
            name = key.removesuffix("_enc")
            out[name] = (
                None
                if value is None
                else decrypt(
                    ctl.keyring, value, tenant_id=tid, table=table, column=name, row=row.get("id")
                )
            )
            continue
        out[key] = value
    return out


def _write_table(
    ctl: Control, conn: Any, st: SubjectTenant, params: dict[str, Any], table: str, link: str,
    path: Path, fmt: str,
) -> tuple[int, str]:  # fmt: skip
    """Stream one table's rows of the person into ``path``; returns (rows, sha256)."""
    digest = hashlib.sha256()
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    result = conn.execution_options(stream_results=True, max_row_buffer=FETCH).execute(
        text(f"SELECT to_jsonb(t) FROM {table} AS t WHERE {link}"),
        params,
    )
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        writer: Any = None
        if fmt == "json":
            fh.write("[")
        for (raw,) in result:
            row = _clear(ctl, table, raw, st.tenant_id)
            if fmt == "json":
                fh.write(("\n" if n == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
            else:
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
                )
            n += 1
        if fmt == "json":
            fh.write("\n]\n")
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return n, digest.hexdigest()


def _export_tenant(
    ctl: Control, st: SubjectTenant, email: str, parts: Path, fmt: str, actor: str
) -> dict[str, Any]:
    folder = parts / st.slug
    folder.mkdir(mode=0o700, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    with tenant_conn(ctl, st, actor=actor) as conn:
        person = identify(ctl, conn, st, email)
        params = person.params(st.tenant_id)
        for p in POLICIES:
            name = f"{p.table}.{fmt}"
            rows, sha = _write_table(ctl, conn, st, params, p.table, p.where(), folder / name, fmt)
            if rows:
                files[f"tenants/{st.slug}/{name}"] = {"rows": rows, "sha256": sha}
            else:
                (folder / name).unlink()
    return {"tenant": st.slug, "region": st.region, "tier": st.tier, "files": files}


def _parts_dir(out: Path, op_id: uuid.UUID) -> Path:
    parts = out.parent / f".{out.name}.{op_id.hex[:12]}.parts"
    try:
        parts.mkdir(mode=0o700)
    except FileExistsError:
        st = os.lstat(parts)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise InvalidInput(f"{parts} is not this export's working directory") from None
    return parts


def _assemble(out: Path, parts: Path, manifest: dict[str, Any]) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
        for t in manifest["tenants"]:
            for name in t["files"]:
                src = parts / Path(name).relative_to("tenants")
                with open(src, "rb") as fh, zf.open(name, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(fh, dst, 1 << 16)
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, default=str))


def export_person(
    ctl: Control,
    email: str,
    *,
    out: Path,
    tenant: str | None = None,
    fmt: str = "json",
    actor: str,
    source: str = "cli",
) -> ExportResult:
    """Export the person's data to ``out`` (a new zip); resumes an unfinished export of the
    same person, tenant scope, file and format."""
    if fmt not in ("json", "csv"):
        raise InvalidInput("--format is json or csv")
    out = check_out(Path(os.path.abspath(out)))
    op_id, _rid, _resumed = start(
        ctl,
        kind=OperationKind.GDPR_EXPORT,
        email=email,
        tenant=tenant,
        actor=actor,
        source=source,
        out=str(out),
        fmt=fmt,
    )
    return ExportResult.model_validate(resume_export(ctl, describe(ctl, op_id, with_steps=False)))


def resume_export(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    params = DsrParams.model_validate(op.params)
    assert params.out is not None and params.request is not None and params.subject_sealed
    rid = uuid.UUID(params.request)
    out = Path(params.out)
    email = unseal(ctl, params.subject_sealed, ref=params.subject_ref)
    tenants = [tenant_of(ctl, t) for t in params.tenants]
    errors: list[dict[str, str]] = []
    with OperationRun(ctl, op.id) as run:
        parts = _parts_dir(out, op.id)
        for st in tenants:
            step = f"tenant:{st.slug}"
            if step in run.completed:
                continue
            try:
                data = _export_tenant(ctl, st, email, parts, params.format, f"gdpr:export:{rid}")
            except BizosError as exc:
                errors.append({"tenant": st.slug, "region": st.region, "error": exc.message})
                continue
            run.step(step, **data)
            crash_point("gdpr.export.tenant")
        done = {s.name: s.data for s in run.steps("tenant:")}
        summary = [
            {
                "tenant": d["tenant"],
                "region": d["region"],
                "tier": d["tier"],
                "rows": sum(f["rows"] for f in d["files"].values()),
                "tables": {Path(k).stem: f["rows"] for k, f in d["files"].items()},
            }
            for d in done.values()
        ]
        receipt = {"tenants": summary, "errors": errors, "rows": sum(t["rows"] for t in summary)}
        if errors:
            finish_request(ctl, rid, status="partially_done", receipt=receipt)
            run.set_progress(len(done), len(tenants), "partially done: run the same command again")
            raise OperationFailed(
                f"export {op.id}: {len(errors)} of {len(tenants)} tenants failed "
                f"({'; '.join(e['tenant'] + ': ' + e['error'] for e in errors)}); "
                "the others are done: run the same command again to finish"
            )
        manifest = {
            "request": str(rid),
            "operation": str(op.id),
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "format": params.format,
            "subject_ref": params.subject_ref,
            "tenants": list(done.values()),
        }
        if not out.exists():
            _assemble(out, parts, manifest)
        shutil.rmtree(parts, ignore_errors=True)
        finish_request(ctl, rid, status="done", receipt={**receipt, "file_sha256": _sha(out)})
        run.finish(OperationStatus.DONE, also=lambda c: drop_sealed(c, op.id))
    files = sum(len(d["files"]) for d in done.values())
    return {
        "request": rid, "operation": op.id, "out": str(out), "status": "done",
        "tenants": summary, "errors": [], "files": files, "rows": receipt["rows"],
    }  # fmt: skip


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()
