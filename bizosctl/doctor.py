"""``bizosctl doctor``: is this control plane healthy and safe? One check per line."""

from __future__ import annotations

import os

from pydantic import BaseModel
from sqlalchemy import select, text

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Route, Server, Tenant
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.db.migrate import current_revision, head
from bizosctl.errors import BizosError
from bizosctl.tenancy.names import SHARED_DB, SHARED_LOGIN, SHARED_SCHEMA
from tenant_schema import TENANT_TABLES


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class DoctorReport(BaseModel):
    ok: bool
    checks: list[Check]


RLS_SQL = text(
    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relkind = 'r' "
    "AND c.relname = ANY(:tables)"
)


def _target_checks(conn: object, label: str, schema: str, tenant_head: str) -> list[Check]:
    from sqlalchemy.engine import Connection

    assert isinstance(conn, Connection)
    checks = []
    rev = current_revision(conn, schema=schema)
    checks.append(
        Check(
            name=f"revision {label}",
            ok=rev == tenant_head,
            detail=f"at {rev or 'nothing'}, head is {tenant_head}",
        )
    )
    rows = conn.execute(RLS_SQL, {"s": schema, "tables": list(TENANT_TABLES)}).all()
    bad = sorted(
        {t for t, enabled, forced in rows if not (enabled and forced)}
        | (set(TENANT_TABLES) - {r[0] for r in rows})
    )
    checks.append(
        Check(
            name=f"rls {label}",
            ok=not bad,
            detail="enabled and forced on every table"
            if not bad
            else f"missing or not forced on: {', '.join(bad)}",
        )
    )
    return checks


def run_doctor(ctl: Control) -> DoctorReport:
    from bizosctl.security.masterkey import key_file_mode

    checks: list[Check] = []
    s = ctl.settings
    if s.master_key is not None:
        checks.append(Check(name="master key", ok=True, detail="from BIZOS_MASTER_KEY"))
    else:
        mode = key_file_mode(s.key_file)
        detail = f"{s.key_file} missing" if mode is None else f"{s.key_file} mode {mode:04o}"
        if mode is not None and os.path.islink(s.key_file):
            detail = f"{s.key_file} is a symlink (refused)"
        checks.append(Check(name="master key", ok=mode == 0o600, detail=detail))
    try:
        with ctl.catalog() as cs:
            servers = cs.execute(select(Server).order_by(Server.name)).scalars().all()
            handles = [ctl.handle_for(row) for row in servers]
            targets = cs.execute(
                select(Tenant.slug, Tenant.tier, Route.server, Route.database, Route.schema)
                .join(Route, Route.tenant_id == Tenant.id)
                .where(Tenant.status.not_in(["deleted", "provisioning"]))
                .order_by(Tenant.slug)
            ).all()
            control_rev = current_revision(cs.connection(), schema=None)
        checks.append(
            Check(
                name="catalog",
                ok=control_rev == head("control"),
                detail=f"at {control_rev}, head is {head('control')}",
            )
        )
        _ = ctl.keyring
        checks.append(Check(name="keyring", ok=True, detail="the master key opens every data key"))
    except BizosError as exc:
        checks.append(Check(name="catalog", ok=False, detail=exc.message))
        return DoctorReport(ok=False, checks=checks)

    tenant_head = head("tenant")
    for handle in handles:
        label = f"server {handle.name}"
        try:
            handle.ensure_ready()
            with (
                translate_errors(label),
                get_engine(handle.admin_url(SHARED_DB), pooled=False).connect() as conn,
            ):
                version = conn.execute(text("SHOW server_version")).scalar_one()
                vector = conn.execute(
                    text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                ).scalar_one_or_none()
                checks.append(Check(name=label, ok=True, detail=f"PostgreSQL {version}"))
                checks.append(
                    Check(
                        name=f"pgvector {handle.name}",
                        ok=vector is not None,
                        detail=f"vector {vector}" if vector else "not installed",
                    )
                )
                bypass = conn.execute(
                    text(
                        "SELECT string_agg(rolname, ', ') FROM pg_roles "
                        "WHERE (rolbypassrls OR rolsuper) "
                        "AND (rolname LIKE 'bizos\\_%' OR rolname LIKE 't\\_%')"
                    )
                ).scalar_one()
                checks.append(
                    Check(
                        name=f"roles {handle.name}",
                        ok=bypass is None,
                        detail="no application role bypasses RLS"
                        if bypass is None
                        else f"roles with BYPASSRLS or SUPERUSER: {bypass}",
                    )
                )
                checks += _target_checks(
                    conn, f"{handle.name}/{SHARED_SCHEMA}", SHARED_SCHEMA, tenant_head
                )
                if handle.provider != "embedded":
                    checks.append(_tls_check(conn, handle.name))
            checks.append(_password_enforced(handle))
            if handle.provider == "embedded":
                checks += _host_checks(handle)
        except BizosError as exc:
            checks.append(Check(name=label, ok=False, detail=exc.message))
            continue
        for slug, tier, server, database, schema in targets:
            if server != handle.name or tier == "shared":
                continue
            try:
                with (
                    translate_errors(f"tenant {slug}"),
                    get_engine(handle.admin_url(database), pooled=False).connect() as conn,
                ):
                    checks += _target_checks(conn, f"{slug} ({tier})", schema, tenant_head)
            except BizosError as exc:
                checks.append(Check(name=f"tenant {slug}", ok=False, detail=exc.message))
    return DoctorReport(ok=all(c.ok for c in checks), checks=checks)


#: Caller secrets that must never be in an embedded server's environment.
ENV_SECRETS = (b"BIZOS_", b"AWS_SECRET", b"STRIPE")


def _host_checks(handle: object) -> list[Check]:
    """The embedded server runs as its home's own OS user, with a minimal environment."""
    import pwd

    from bizosctl.db.embedded import os_user_name
    from bizosctl.providers.local import ServerHandle

    assert isinstance(handle, ServerHandle)
    cluster = handle.cluster
    out: list[Check] = []
    if os.geteuid() == 0:
        owner = os.stat(cluster.pgdata).st_uid
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        expected = os_user_name(cluster.owner_root)
        out.append(
            Check(
                name=f"os user {handle.name}",
                ok=name == expected,
                detail=f"runs as {name}, this home's own user"
                if name == expected
                else f"runs as {name!r}, which other homes may share: `bizosctl down`, then "
                f"`chown -R {expected}: {cluster.pgdata}` (useradd --system --user-group "
                f"{expected} first if it does not exist)",
            )
        )
    pid = cluster.postmaster_pid()
    if pid is not None:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            environ = b""
        leaked = sorted(
            {
                var.split(b"=", 1)[0].decode(errors="replace")
                for var in environ.split(b"\0")
                if any(var.startswith(prefix) for prefix in ENV_SECRETS)
            }
        )
        out.append(
            Check(
                name=f"environment {handle.name}",
                ok=not leaked,
                detail="minimal (no caller secrets)"
                if not leaked
                else f"started with the caller's {', '.join(leaked)}: restart it "
                "(`bizosctl down`; the next command starts it clean)",
            )
        )
    return out


def _tls_check(conn: object, server: str) -> Check:
    """A server of our own network path (not embedded) must be reached over TLS."""
    from sqlalchemy.engine import Connection

    assert isinstance(conn, Connection)
    row = conn.execute(
        text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    ).one_or_none()
    if row is not None and row[0]:
        return Check(name=f"tls {server}", ok=True, detail=f"encrypted ({row[1]})")
    return Check(
        name=f"tls {server}",
        ok=False,
        detail="the connection is not encrypted (added with --insecure?): enable TLS on the "
        "server, then re-add it without --insecure",
    )


def _password_enforced(handle: object) -> Check:
    """A login role with a wrong password must be refused (the cluster is not 'trust')."""
    from sqlalchemy.exc import OperationalError

    from bizosctl.providers.local import ServerHandle

    assert isinstance(handle, ServerHandle)
    url = handle.login_url(SHARED_DB, SHARED_LOGIN, "definitely-not-the-password")
    try:
        with get_engine(url, pooled=False).connect():
            pass
    except OperationalError:
        return Check(
            name=f"auth {handle.name}", ok=True, detail="login roles must present their password"
        )
    return Check(
        name=f"auth {handle.name}",
        ok=False,
        detail=f"{SHARED_LOGIN} logged in with a wrong password: fix pg_hba.conf",
    )
