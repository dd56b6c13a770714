"""Database password rotation: every login role alternates between two roles.

An isolated tenant logs in as ``t_x`` or ``t_x__b``; a server's shared database (every shared-
and schema-tier tenant there) as ``bizos_app_shared`` or ``bizos_app_shared__b`` (tenant roles
start with ``t_``, so neither name can be a tenant's). A rotation gives the idle role a new
password and LOGIN, switches the catalog to it, and after a grace period takes LOGIN and the
password from the previous role and ends its sessions.

The rotation is an operation (kind ``secrets.db-password``): the switch of each role is a
checkpoint, and the end of the grace is its last step. A run interrupted during the grace
(Ctrl-C, SIGKILL) leaves the operation unfinished; the next ``secrets rotate db-password``
(any selection, or ``--finish``) ends it at once, so the previous roles never keep LOGIN.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sqlalchemy import select, text

from bizosctl.catalog.models import Operation, Route, Server, Tenant
from bizosctl.catalog.operations import (
    OPEN,
    OperationKind,
    OperationPublic,
    OperationRun,
    is_alive,
    start_or_resume,
)
from bizosctl.db.engines import dispose_all, get_engine, translate_errors
from bizosctl.errors import Busy, InvalidInput, NotFound
from bizosctl.faults import crash_point
from bizosctl.plans import Plan
from bizosctl.security.keycache import auth_changed
from bizosctl.tenancy.names import SHARED_DB, SHARED_LOGIN, check_slug, other_login_role, q
from bizosctl.tenancy.servers import new_password, set_login_role
from tenant_schema.ddl import APP_GROUP

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from bizosctl.catalog.control import Control

KIND = OperationKind.ROTATE_DB_PASSWORD
MAX_GRACE_MS = 3_600_000  # the grace covers sessions that looked the route up just before
SHARED_LOGIN_B = SHARED_LOGIN + "__b"


def check_grace(grace_ms: int) -> int:
    """The grace blocks the command (and keeps two roles able to log in): at most 1h."""
    if grace_ms < 0:
        raise InvalidInput("--grace must not be negative")
    if grace_ms > MAX_GRACE_MS:
        raise InvalidInput("--grace must be at most 1h (a session that needs longer reconnects)")
    return grace_ms


def other_role(role: str) -> str:
    """``t_x`` <-> ``t_x__b``, ``bizos_app_shared`` <-> ``bizos_app_shared__b``."""
    return role.removesuffix("__b") if role.endswith("__b") else role + "__b"


def shared_login(ctl: Control, server: str) -> str:
    """The login role of ``server``'s shared database now (for new shared/schema routes)."""
    with ctl.catalog() as s:
        role = s.execute(select(Server.app_role).where(Server.name == server)).scalar_one_or_none()
    return role or SHARED_LOGIN


@dataclass
class Switch:
    """One login role to rotate: a tenant's (``tenant_id`` set) or a server's shared role."""

    server: str
    database: str
    old: str
    new: str
    tenant_id: str | None = None
    slug: str | None = None

    @property
    def name(self) -> str:
        return f"{self.server}:{self.new}"

    def public(self) -> dict[str, Any]:
        who = {"tenant": self.slug} if self.tenant_id else {"shared": self.server}
        return {**who, "server": self.server, "role": self.new, "previous": self.old}


# -- what to rotate -----------------------------------------------------------------------------
def plan_rotation(
    ctl: Control,
    *,
    tenant: str | None = None,
    all_: bool = False,
    server: str | None = None,
    region: str | None = None,
    refused: list[dict[str, str]] | None = None,
) -> list[Switch]:
    """The roles a rotation would switch: one tenant, one server's or region's shared role, or
    (``all_``) every isolated tenant and every server's shared role. Changes nothing.

    With ``all_``, a tenant whose roles cannot be rotated safely is left out and described
    in ``refused`` (with ``tenant``, the error is raised)."""
    if refused is None:
        refused = []
    if sum(x is not None for x in (tenant, server, region)) + int(all_) != 1:
        raise InvalidInput("pass one of --tenant SLUG, --shared REGION, --server NAME or --all")
    out: list[Switch] = []
    with ctl.catalog() as s:
        if tenant is not None or all_:
            stmt = (
                select(Tenant.id, Tenant.slug, Route)
                .join(Route, Route.tenant_id == Tenant.id)
                .where(
                    Tenant.status.not_in(["deleted", "provisioning", "deleting"]),
                    Route.password_enc.is_not(None),
                )
                .order_by(Tenant.slug)
            )
            if tenant is not None:
                check_slug(tenant)
                stmt = stmt.where(Tenant.slug == tenant)
            for tid, slug, route in s.execute(stmt).all():
                # The other of the tenant's two login roles comes from its database name,
                # never from the role name: a tenant made under the old naming (``x--b`` ->
                # ``t_x__b``) shares that name with another tenant's second role.
                try:
                    new = other_login_role(route.database, route.role)
                except InvalidInput as exc:
                    if tenant is not None:
                        raise
                    refused.append({"tenant": slug, "reason": exc.message})
                    continue
                out.append(Switch(route.server, route.database, route.role, new, str(tid), slug))
            if tenant is not None and not out:
                raise NotFound(
                    f"no isolated tenant named {tenant!r} (only isolated tenants have their own "
                    "role; shared and schema tiers use their server's: --server NAME)"
                )
        if tenant is None:
            stmt2 = select(Server).where(Server.app_password_enc.is_not(None)).order_by(Server.name)
            if server is not None:
                stmt2 = stmt2.where(Server.name == server)
            if region is not None:
                stmt2 = stmt2.where(Server.region == region)
            servers = s.execute(stmt2).scalars().all()
            if server is not None and not servers:
                raise NotFound(f"no server named {server!r}")
            if region is not None and not servers:
                raise NotFound(f"no region named {region!r}")
            out += [Switch(v.name, SHARED_DB, v.app_role, other_role(v.app_role)) for v in servers]
    return out


# -- the rotation -------------------------------------------------------------------------------
def rotate_db_password(
    ctl: Control,
    *,
    tenant: str | None = None,
    all_: bool = False,
    server: str | None = None,
    region: str | None = None,
    grace_ms: int = 2000,
    wait: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """New password for login roles, with no failed request.

    Args:
        tenant / server / region / all_: what to rotate (see ``plan_rotation``).
        grace_ms: how long the previous roles keep logging in (at most 1h), for sessions that
            looked the route up just before the switch; then they lose LOGIN and password and
            their sessions are terminated.

    Rotations an earlier run left in their grace are finished first.
    """
    check_grace(grace_ms)
    previous = finish_db_password_rotations(ctl)
    refused: list[dict[str, str]] = []
    planned = plan_rotation(
        ctl, tenant=tenant, all_=all_, server=server, region=region, refused=refused
    )
    switches = []
    for sw in planned:
        try:
            _check_free(ctl, sw)
        except InvalidInput as exc:
            if tenant is not None:
                raise
            refused.append({"tenant": sw.slug or sw.server, "reason": exc.message})
            continue
        switches.append(sw)
    params = DbPasswordParams(grace_ms=grace_ms, switches=[asdict(sw) for sw in switches])
    with ctl.catalog() as s:
        # the earlier ones were finished above: this is new, unless a process died in between
        op_id, _resumed = start_or_resume(
            ctl,
            s,
            kind=OperationKind.ROTATE_DB_PASSWORD,
            target="db-password",
            params=params,
            exclusive=True,
            other_params="new",
        )
    with OperationRun(ctl, op_id) as run:
        for sw in switches:
            if f"switch:{sw.name}" not in run.completed:
                _switch(ctl, run, sw)
        until = time.time() + grace_ms / 1000
        run.step("switched", grace_until=until)
        crash_point("rotate.db-password.switched")
        doc = _end_grace(ctl, run, switches, until, wait=wait)
    doc["finished_earlier"] = previous
    doc["refused"] = refused
    return doc


class DbPasswordParams(BaseModel):
    """What a ``secrets.db-password`` operation records: the grace and every role it switches
    (as :class:`Switch` fields)."""

    grace_ms: int = Field(2000, ge=0, le=MAX_GRACE_MS)
    switches: list[dict[str, Any]] = Field(default_factory=list)


def resume_db_password_rotation(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: finish a rotation whose process died, as ``--finish`` does: the
    switches it made stay, the previous roles lose LOGIN at once (the run that owned the grace
    is gone), the roles it had not switched yet keep their password (rotate them again)."""
    params = DbPasswordParams.model_validate(op.params)
    switches = [Switch(**sw) for sw in params.switches]
    with OperationRun(ctl, op.id) as run:
        return _end_grace(ctl, run, switches, time.time(), wait=time.sleep)


class DbPasswordPlan(Plan):
    """``secrets rotate db-password --dry-run``: the roles it would switch (``previous`` ->
    ``role`` on ``server``), the grace, the interrupted rotations it would finish first, and the
    tenants it would leave out (and why)."""

    would_rotate: list[dict[str, Any]]
    grace_ms: int
    would_finish: list[str]
    refused: list[dict[str, str]]


class FinishPlan(Plan):
    """``secrets rotate db-password --finish --dry-run``."""

    would_finish: list[str]


def plan_db_password(
    ctl: Control,
    *,
    tenant: str | None = None,
    all_: bool = False,
    server: str | None = None,
    region: str | None = None,
    grace_ms: int = 2000,
) -> DbPasswordPlan:
    """What :func:`rotate_db_password` would do, changing nothing: the roles it would switch,
    the grace, the interrupted rotations it would finish first, the tenants it would leave
    out (and why)."""
    refused: list[dict[str, str]] = []
    switches = plan_rotation(
        ctl, tenant=tenant, all_=all_, server=server, region=region, refused=refused
    )
    return DbPasswordPlan(
        would_rotate=[sw.public() for sw in switches],
        grace_ms=check_grace(grace_ms),
        would_finish=[str(op.id) for op in pending_rotations(ctl)],
        refused=refused,
    )


def plan_finish(ctl: Control) -> FinishPlan:
    """What :func:`finish_db_password_rotations` would finish (``--finish --dry-run``)."""
    return FinishPlan(would_finish=[str(op.id) for op in pending_rotations(ctl)])


def _check_free(ctl: Control, sw: Switch) -> None:
    """A tenant's idle role must be its own: no other tenant uses it, and it opens no other
    database (InvalidInput otherwise)."""
    if sw.tenant_id is None:
        return
    from bizosctl.tenancy.claims import check_role_free

    handle = ctl.server(sw.server)
    handle.ensure_ready()
    with translate_errors(f"server {sw.server}"):
        admin = get_engine(handle.admin_url("postgres"), pooled=False)
        with admin.connect() as conn:
            check_role_free(
                ctl,
                conn,
                role=sw.new,
                server=sw.server,
                tenant_id=uuid.UUID(sw.tenant_id),
                database=sw.database,
            )


def _switch(ctl: Control, run: OperationRun, sw: Switch) -> None:
    password = new_password()
    handle = ctl.server(sw.server)
    handle.ensure_ready()
    with translate_errors(f"server {sw.server}"):
        admin = get_engine(handle.admin_url("postgres"), pooled=False)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            set_login_role(conn, sw.new, password, member_of=APP_GROUP)
            _copy_role_settings(conn, sw.old, sw.new)
            conn.execute(text(f"GRANT CONNECT ON DATABASE {q(sw.database)} TO {q(sw.new)}"))
    # the catalog switch and its checkpoint commit together (run.step commits run.conn)
    if sw.tenant_id is not None:
        run.conn.execute(
            text(
                "UPDATE routes SET role = :new, password_enc = :pw, updated_at = now() "
                "WHERE tenant_id = :t AND server = :server AND role = :old"
            ),
            {
                "new": sw.new,
                "pw": ctl.seal(password, context=f"role:{sw.new}"),
                "t": uuid.UUID(sw.tenant_id),
                "server": sw.server,
                "old": sw.old,
            },
        )
    else:
        run.conn.execute(
            text(
                "UPDATE servers SET app_role = :new, app_password_enc = :pw "
                "WHERE name = :server AND app_role = :old"
            ),
            {
                "new": sw.new,
                "pw": ctl.seal(password, context=f"server:{sw.server}:app"),
                "server": sw.server,
                "old": sw.old,
            },
        )
        run.conn.execute(
            text(
                "UPDATE routes SET role = :new, updated_at = now() "
                "WHERE server = :server AND role = :old AND password_enc IS NULL"
            ),
            {"new": sw.new, "server": sw.server, "old": sw.old},
        )
    # a tenant's route, or every route on the server: the API's cached ones are read again
    auth_changed(run.conn, tenant_id=uuid.UUID(sw.tenant_id) if sw.tenant_id else None)
    run.step(f"switch:{sw.name}")
    crash_point("rotate.db-password.switch")


def _copy_role_settings(conn: Connection, old: str, new: str) -> None:
    """Role-level settings (timeouts) of the previous role apply to the new one too."""
    rows = conn.execute(
        text(
            "SELECT unnest(s.setconfig) FROM pg_db_role_setting AS s JOIN pg_roles AS r "
            "ON r.oid = s.setrole WHERE r.rolname = :r AND s.setdatabase = 0"
        ),
        {"r": old},
    ).scalars()
    for item in rows:
        name, _, value = str(item).partition("=")
        if name.replace("_", "").replace(".", "").isalnum():
            literal = value.replace("'", "''")
            conn.exec_driver_sql(f"ALTER ROLE {q(new)} SET {name} = '{literal}'")


def _end_grace(
    ctl: Control,
    run: OperationRun,
    switches: list[Switch],
    until: float,
    *,
    wait: Callable[[float], None],
) -> dict[str, Any]:
    while (left := until - time.time()) > 0:
        wait(min(left, 1.0))  # Ctrl-C here leaves the operation for the next run to finish
    terminated = 0
    retired = []
    for sw in switches:
        idle, count = _retire_idle(ctl, sw)
        if idle is not None:
            terminated += count
            retired.append(idle)
            run.step(f"retire:{sw.server}:{idle}", sessions_terminated=count)
    run.finish("done")
    return {
        "operation": str(run.id),
        "rotated": [sw.public() for sw in switches if f"switch:{sw.name}" in run.completed],
        "retired": retired,
        "sessions_terminated": terminated,
    }


def _retire_idle(ctl: Control, sw: Switch) -> tuple[str | None, int]:
    """NOLOGIN, no password and no session for whichever of the two roles the catalog does not
    use now (a switch that never committed leaves ``new`` idle). None when the catalog uses
    neither (the tenant moved or was deleted since)."""
    with ctl.catalog() as s:
        if sw.tenant_id is not None:
            current = s.execute(
                select(Route.role).where(
                    Route.tenant_id == uuid.UUID(sw.tenant_id), Route.server == sw.server
                )
            ).scalar_one_or_none()
        else:
            current = s.execute(
                select(Server.app_role).where(Server.name == sw.server)
            ).scalar_one_or_none()
    if current not in (sw.old, sw.new):
        return None, 0
    idle = sw.new if current == sw.old else sw.old  # the pair was checked at the switch
    handle = ctl.server(sw.server)
    handle.ensure_ready()
    with translate_errors(f"server {sw.server}"):
        admin = get_engine(handle.admin_url("postgres"), pooled=False)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            count = end_login(conn, idle)
    dispose_all(host_contains=f"{idle}:")  # this process's idle connections of that role
    return idle, count


def end_login(conn: Connection, role: str) -> int:
    """Take LOGIN and the password from ``role`` (when it exists), then terminate its sessions
    (NOLOGIN first, so none reconnects in between). Returns how many sessions ended."""
    if not conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
        return 0
    conn.execute(text(f"ALTER ROLE {q(role)} NOLOGIN PASSWORD NULL"))
    return int(
        conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE usename = :r AND pid <> pg_backend_pid()"
            ),
            {"r": role},
        ).scalar_one()
    )


# -- interrupted rotations ----------------------------------------------------------------------
def pending_rotations(ctl: Control) -> list[Operation]:
    """Rotations not finished (running now, or interrupted during their grace)."""
    with ctl.catalog() as s:
        ops = (
            s.execute(
                select(Operation)
                .where(Operation.kind == KIND, Operation.status.in_(OPEN))
                .order_by(Operation.started_at)
            )
            .scalars()
            .all()
        )
        for op in ops:
            s.expunge(op)
    return list(ops)


def finish_db_password_rotations(ctl: Control) -> list[dict[str, Any]]:
    """End at once the grace of every rotation an earlier run left unfinished (interrupted
    during its wait, or before): the previous roles lose LOGIN and password, their sessions
    end. The remaining grace is not waited for: the run that owned it is gone. A rotation still
    running in another process makes this raise ``Busy``.

    ``secrets rotate db-password --finish`` and every rotation call this; so can a scheduler.
    """
    done = []
    for op in pending_rotations(ctl):
        if is_alive(ctl, op.id):
            raise Busy(f"a db-password rotation is running in another process (operation {op.id})")
        switches = [Switch(**sw) for sw in op.params.get("switches", [])]
        try:
            with OperationRun(ctl, op.id) as run:
                done.append(_end_grace(ctl, run, switches, time.time(), wait=time.sleep))
        except Busy:
            raise Busy(
                f"a db-password rotation is running in another process (operation {op.id})"
            ) from None
    return done
