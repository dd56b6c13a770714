"""``bizosctl doctor``: is this control plane healthy and safe? One check per line."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, text

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Route, Server, Tenant
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.db.migrate import current_revision, head
from bizosctl.errors import BizosError
from bizosctl.tenancy.names import SHARED_DB, SHARED_LOGIN, SHARED_SCHEMA
from bizosctl.tenancy.servers import app_roles_without_timeouts
from tenant_schema import TENANT_TABLES


class Check(BaseModel):
    name: str
    ok: bool
    detail: str
    #: Worth a look but not a failure (``ok`` stays true, the exit code 0).
    warning: bool = False


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
    from bizosctl.fleet_health import fleet_checks
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
            logins: dict[str, set[str]] = {}  # the login roles the catalog uses, per server
            for name, role in cs.execute(
                text(
                    "SELECT name, app_role FROM servers UNION SELECT r.server, r.role FROM routes "
                    "AS r JOIN tenants AS t ON t.id = r.tenant_id WHERE t.status <> 'deleted'"
                )
            ).all():
                logins.setdefault(name, set()).add(role)
        checks.append(
            Check(
                name="catalog",
                ok=control_rev == head("control"),
                detail=f"at {control_rev}, head is {head('control')}",
            )
        )
        _ = ctl.keyring
        checks.append(Check(name="keyring", ok=True, detail="the master key opens every data key"))
        from bizosctl.security.check import row_binding_check

        checks.append(row_binding_check(ctl))
    except BizosError as exc:
        checks.append(Check(name="catalog", ok=False, detail=exc.message))
        return DoctorReport(ok=False, checks=checks)

    checks += _name_checks(ctl)
    checks.append(_gdpr_check(ctl))
    checks += fleet_checks(ctl)
    from bizosctl.ai.health import ai_checks

    checks += ai_checks(ctl)
    tenant_head = head("tenant")
    for handle in handles:
        label = f"server {handle.name}"
        if handle.is_cloud:
            continue  # no shared database there (a project is checked by its tenant's sync)
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
                untimed = app_roles_without_timeouts(conn, s)
                checks.append(
                    Check(
                        name=f"role timeouts {handle.name}",
                        ok=not untimed,
                        detail="application login roles have lock, statement and idle timeouts"
                        if not untimed
                        else f"without the configured timeouts: {', '.join(untimed)} "
                        "(set at the next password rotation, or ALTER ROLE ... SET)",
                    )
                )
                checks += _target_checks(
                    conn, f"{handle.name}/{SHARED_SCHEMA}", SHARED_SCHEMA, tenant_head
                )
                isolated = [
                    t.database for t in targets if t.server == handle.name and t.tier == "isolated"
                ]
                checks += _connect_checks(conn, handle.name, [SHARED_DB, *isolated])
                checks.append(_idle_logins(conn, handle.name, logins.get(handle.name, set())))
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


def _gdpr_check(ctl: Control) -> Check:
    """Data-subject requests past their (extended) due date: a warning, with what to run."""
    from bizosctl.privacy.requests import overdue_count

    n = overdue_count(ctl)
    return Check(
        name="gdpr requests",
        ok=True,
        warning=bool(n),
        detail=(
            f"{n} data-subject request(s) overdue (GDPR Art. 12(3)): `bizosctl gdpr requests "
            "--overdue` lists them; finish them or record an extension with `gdpr extend`"
            if n
            else "no data-subject request is overdue"
        ),
    )


def _name_checks(ctl: Control) -> list[Check]:
    """No database, schema or login role serves two tenants; every slug follows the rule that
    makes names unique (older tenants may not: ``x--b`` took ``x``'s second login role)."""
    from bizosctl.tenancy.claims import double_claims
    from bizosctl.tenancy.names import is_new_slug_valid

    doubles = double_claims(ctl)
    with ctl.catalog() as cs:
        slugs = cs.execute(
            select(Tenant.slug).where(Tenant.status != "deleted").order_by(Tenant.slug)
        ).scalars()
        invalid = [repr(slug) for slug in slugs if not is_new_slug_valid(slug)]
    return [
        Check(
            name="tenant names",
            ok=not doubles,
            detail="; ".join(doubles)
            if doubles
            else "no role, database or schema serves two tenants",
        ),
        Check(
            name="tenant slugs",
            ok=not invalid,
            detail=(
                "not valid under the current rule (no '--', no trailing '-'), their names may "
                f"meet another tenant's: {', '.join(invalid)}; move their data to a new tenant"
                if invalid
                else "every slug is valid"
            ),
        ),
    ]


CONNECT_SQL = text(
    "SELECT d.datname, coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type "
    "FROM pg_database d "
    "CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
    "LEFT JOIN pg_roles r ON r.oid = a.grantee "
    "WHERE a.privilege_type IN ('CONNECT', 'TEMPORARY') AND d.datname = ANY(:dbs) "
    "AND NOT coalesce(r.rolsuper, false) ORDER BY 1, 2"
)


def _connect_checks(conn: object, server: str, databases: list[str]) -> list[Check]:
    """Who may connect: nobody but superusers to ``template1``, no tenant database open to
    PUBLIC, and no login role into two of the tenant databases."""
    from sqlalchemy.engine import Connection

    assert isinstance(conn, Connection)
    rows = conn.execute(CONNECT_SQL, {"dbs": ["template1", *databases]}).all()
    template1 = sorted({p for d, g, p in rows if d == "template1" and g == "PUBLIC"})
    opened: dict[str, list[str]] = {}
    public = []
    for database, grantee, privilege in rows:
        if database == "template1" or privilege != "CONNECT":
            continue
        if grantee == "PUBLIC":
            public.append(database)
        else:
            opened.setdefault(grantee, []).append(database)
    problems = [f"PUBLIC can connect to {d}" for d in public] + [
        f"role {role} can connect to {', '.join(dbs)}"
        for role, dbs in sorted(opened.items())
        if len(dbs) > 1
    ]
    return [
        Check(
            name=f"template1 {server}",
            ok=not template1,
            detail=(
                f"PUBLIC can connect to template1 ({', '.join(template1)}): "
                "REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC"
                if template1
                else "no login role can connect to template1"
            ),
        ),
        Check(
            name=f"connect {server}",
            ok=not problems,
            detail="; ".join(problems) if problems else "each login role opens one database",
        ),
    ]


def _idle_logins(conn: Any, server: str, used: set[str]) -> Check:
    """Application login roles that can log in although the catalog uses none of them: the
    previous role of an unfinished password rotation, or a moved tenant's source."""
    idle = sorted(
        set(
            conn.execute(
                text(
                    "SELECT rolname FROM pg_roles WHERE rolcanlogin "
                    "AND (rolname LIKE 't\\_%' OR rolname LIKE 'bizos\\_app\\_shared%')"
                )
            ).scalars()
        )
        - used
    )
    return Check(
        name=f"login roles {server}",
        ok=not idle,
        detail="only the roles the catalog uses can log in"
        if not idle
        else f"can log in but unused: {', '.join(idle)} (finish their rotation: bizosctl "
        "secrets rotate db-password --finish)",
    )


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
