"""What ``doctor`` checks about the fleet's state, not its configuration: work left half-done
(a tenant stuck ``moving``, an operation whose process died), kept move sources past their
time, stored credentials that no longer log in, a second login role of a tenant that can still
log in after its rotation's grace, and one server registered twice.

Each function returns :class:`bizosctl.doctor.Check` rows whose detail says how to fix it.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import Operation, Server, Tenant
from bizosctl.catalog.operations import is_alive, steps_of
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.errors import BizosError
from bizosctl.runners import resumable_by_id

if TYPE_CHECKING:
    from bizosctl.doctor import Check

#: Kinds whose grace lets both login roles of a tenant log in for a while.
PASSWORD_ROTATION_KINDS = ("secrets.db-password", "secrets.rotate.db-password")


def _check(name: str, problems: list[str], fine: str) -> Check:
    from bizosctl.doctor import Check

    return Check(name=name, ok=not problems, detail="; ".join(problems) if problems else fine)


def operation_checks(ctl: Control) -> list[Check]:
    """Tenants stuck ``moving`` with no live process, and operations that died unfinished."""
    with ctl.catalog() as s:
        moving = s.execute(
            select(Tenant.slug, Tenant.operation_id)
            .outerjoin(Operation, Operation.id == Tenant.operation_id)
            .where(Tenant.status == "moving")
            # a move queued for a worker (--background) waits; the workers check covers it
            .where(Operation.status.is_distinct_from("queued"))
        ).all()
        running = s.execute(
            select(Operation.id, Operation.kind, Operation.target)
            .where(Operation.status == "running")
            .order_by(Operation.started_at)
        ).all()
    stuck = [
        f"tenant {slug!r} is moving but no process runs its move"
        + (f" (operation {op_id})" if op_id else "")
        + f": `bizosctl tenant move {slug} --resume` finishes it, `--abort` undoes it"
        for slug, op_id in moving
        if op_id is None or not is_alive(ctl, op_id)
    ]
    dead = []
    for op_id, kind, target in running:
        if kind == "tenant.move" or is_alive(ctl, op_id):
            continue  # moves are reported above, by tenant
        steps = [st.name for st in steps_of(ctl, op_id) if st.status == "done"]
        last = steps[-1] if steps else "its start"
        dead.append(
            f"operation {op_id} ({kind} {target}) stopped after {last} without finishing: "
            + (
                f"`bizosctl ops resume {op_id}` (or the same command again) resumes it"
                if resumable_by_id(kind)
                else "run the same command again to resume it"
            )
        )
    return [
        _check("stuck tenants", stuck, "no tenant is stuck moving"),
        _check("unfinished operations", dead, "every running operation has a live process"),
    ]


def kept_source_checks(ctl: Control) -> list[Check]:
    """Sources kept by finished moves past their ``--keep-source``."""
    from bizosctl.moves.kept import kept_sources

    expired = [
        f"{k.slug}: {k.source['tier']} copy ({k.source['database']}/{k.source['schema']} on "
        f"{k.source['server']}) kept until {_when(k.keep_until)}"
        for k in kept_sources(ctl)
        if k.expired
    ]
    if expired:
        expired.append(
            "`bizosctl tenant purge-sources --yes` drops every expired one, "
            "`bizosctl tenant move SLUG --purge-source --yes` one tenant's"
        )
    return [_check("kept sources", expired, "no kept move source is past its time")]


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def credential_checks(ctl: Control) -> list[Check]:
    """Every stored credential still logs in; a tenant's idle login role does not."""
    from bizosctl.tenancy.names import login_roles

    with ctl.catalog() as s:
        slugs = s.execute(
            select(Tenant.slug, Tenant.tier)
            .where(Tenant.status.in_(["active", "read_only", "suspended"]))
            .order_by(Tenant.slug)
        ).all()
        rotating = {
            str(t)
            for t in s.execute(
                select(Operation.target).where(
                    Operation.kind.in_(PASSWORD_ROTATION_KINDS), Operation.status == "running"
                )
            ).scalars()
        }
    broken: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    idle_login: dict[str, list[str]] = {}
    for slug, tier in slugs:
        try:
            route = ctl.route(slug)
        except BizosError as exc:
            broken.append(f"{slug}: {exc.message}")
            continue
        key = (route.server, route.database, route.role)
        if key in seen:
            continue
        seen.add(key)
        who = f"{slug}" if tier == "isolated" else f"{route.role} on {route.server}"
        try:
            handle = ctl.server(route.server)
            handle.ensure_ready()
            url = handle.login_url(route.database, route.role, route.password)
            with translate_errors(who), get_engine(url, pooled=False).connect() as conn:
                conn.execute(text("SELECT 1"))
        except BizosError as exc:
            broken.append(f"{who}: stored credentials do not log in ({exc.message})")
            continue
        if tier == "isolated" and slug not in rotating:
            roles = login_roles(route.database)
            idle_login.setdefault(route.server, []).extend(r for r in roles if r != route.role)
    both: list[str] = []
    for server, idle in idle_login.items():
        both += _still_login(ctl, server, idle)
    if both:
        both.append(
            "outside a db-password rotation only the route's role may log in: "
            "`bizosctl secrets rotate db-password --tenant SLUG` ends the other one"
        )
    return [
        _check("stored credentials", broken, "every route's credentials log in"),
        _check("idle login roles", both, "each isolated tenant has one role that can log in"),
    ]


def _still_login(ctl: Control, server: str, roles: list[str]) -> list[str]:
    try:
        handle = ctl.server(server)
        with (
            translate_errors(f"server {server}"),
            get_engine(handle.admin_url("postgres"), pooled=False).connect() as conn,
        ):
            rows = conn.execute(
                text(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY(:r) AND rolcanlogin "
                    "AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) ORDER BY 1"
                ),
                {"r": roles},
            ).scalars()
            return [f"idle role {r} on {server} can still log in" for r in rows]
    except BizosError as exc:
        return [f"server {server}: {exc.message}"]


def server_identity_checks(ctl: Control) -> list[Check]:
    """No PostgreSQL server is registered twice (under two names, or in two regions)."""
    with ctl.catalog() as s:
        rows = s.execute(select(Server).order_by(Server.name)).scalars().all()
        handles = [ctl.handle_for(row) for row in rows]
    seen: dict[str, list[Any]] = {}
    problems: list[str] = []
    for handle in handles:
        if handle.is_account:
            continue  # a provider account: no database to identify
        try:
            handle.ensure_ready()
            ident = server_identity(handle.admin_url("postgres"), label=f"server {handle.name}")
        except BizosError as exc:
            problems.append(f"{handle.name}: {exc.message}")
            continue
        seen.setdefault(ident, []).append(handle)
    for same in seen.values():
        if len(same) > 1:
            names = ", ".join(f"{h.name} (region {h.region})" for h in same)
            problems.append(
                f"one PostgreSQL server is registered as {names}: their tenants share databases "
                "and roles; keep one registration and move the other's tenants"
            )
    return [_check("server identity", problems, "every registered server is a different one")]


def server_identity(url: Any, *, label: str) -> str:
    """What a server is, whatever address it is reached by: its cluster's system identifier
    (unique per initdb) and data directory."""
    with translate_errors(label), get_engine(url, pooled=False).connect() as conn:
        sysid = conn.execute(text("SELECT system_identifier FROM pg_control_system()")).scalar_one()
        datadir = conn.execute(text("SELECT current_setting('data_directory')")).scalar_one()
    return f"{sysid}:{datadir}"


def keyring_checks(ctl: Control) -> list[Check]:
    """Keys past their ``retire_after`` still readable, retired keys past
    ``BIZOS_KEY_DESTROY_AFTER`` still holding material: ``secrets retire-due`` is not run."""
    from bizosctl.security.secrets import retire_and_destroy_due

    due = retire_and_destroy_due(ctl, dry_run=True)
    problems = [f"{d['purpose']} v{d['version']} is past its retire-after" for d in due.retire]
    problems += [
        f"retired {d['purpose']} v{d['version']} still holds its key material" for d in due.destroy
    ]
    if problems:
        problems.append("`bizosctl secrets retire-due` (from cron) retires and destroys them")
    return [_check("key lifetimes", problems, "no key outlives its retirement or grace period")]


def worker_seen_recently(ctl: Control) -> bool:
    """Has some worker sent a heartbeat within ``BIZOS_WORKER_STALLED_TIMEOUT``? (If not, a
    job queued now waits until someone starts ``bizosctl worker``.)"""
    with ctl.catalog() as s:
        return bool(
            s.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM procrastinate_workers WHERE last_heartbeat > "
                    "now() - make_interval(secs => :t))"
                ),
                {"t": ctl.settings.worker_stalled_timeout},
            ).scalar_one()
        )


def worker_checks(ctl: Control) -> list[Check]:
    """Each ``bizosctl worker``'s last heartbeat; a silent one is a warning (its jobs are
    re-queued by the live workers' reapers), and so are queued jobs with no live worker."""
    from bizosctl.doctor import Check
    from bizosctl.jobs.queue import list_workers, queued_jobs

    timeout = ctl.settings.worker_stalled_timeout
    with ctl.catalog() as s, translate_errors("catalog"):
        workers = list_workers(s, stalled_after=timeout)
        waiting = queued_jobs(s)
    live = [w for w in workers if not w.stale]
    parts = [
        f"worker {w.id}: last heartbeat {w.seconds_ago:g}s ago"
        + (f" (stale: silent for more than {timeout:g}s)" if w.stale else "")
        + (f", {w.running_jobs} job(s) running" if w.running_jobs else "")
        for w in workers
    ]
    warn = [p for p, w in zip(parts, workers, strict=True) if w.stale]
    if waiting and not live:
        total = sum(waiting.values())
        warn.append(f"{total} job(s) queued and no live worker: start `bizosctl worker`")
        parts.append(warn[-1])
    detail = "; ".join(parts) if parts else "no worker has run yet (`bizosctl worker` runs jobs)"
    return [Check(name="workers", ok=True, warning=bool(warn), detail=detail)]


def scheduler_checks(ctl: Control) -> list[Check]:
    """Is a ``bizosctl scheduler`` running (a heartbeat within three refresh intervals)? If
    not, nothing enqueues the digests, purges or key retirements: a warning."""
    from bizosctl.doctor import Check
    from bizosctl.jobs.schedule import list_schedulers, scheduler_silent_after

    with translate_errors("catalog"):
        seen = list_schedulers(ctl)
    live = [s for s in seen if not s.stale]
    if live:
        detail = "; ".join(
            f"scheduler {s.host} pid {s.pid}: last heartbeat {s.seconds_ago:g}s ago" for s in live
        )
        return [Check(name="scheduler", ok=True, detail=detail)]
    silent = scheduler_silent_after(ctl)
    if seen:
        last = seen[0]
        detail = (
            f"no scheduler seen for {silent:g}s (the last, {last.host} pid {last.pid}, "
            f"{last.seconds_ago:g}s ago)"
        )
    else:
        detail = "no scheduler is running"
    detail += (
        ": digests, kept-source purges and key retirements are not enqueued; run "
        "`bizosctl scheduler` next to `bizosctl worker` (or `digest run --all` from cron)"
    )
    return [Check(name="scheduler", ok=True, warning=True, detail=detail)]


def fleet_checks(ctl: Control) -> list[Check]:
    return [
        *keyring_checks(ctl),
        *operation_checks(ctl),
        *kept_source_checks(ctl),
        *credential_checks(ctl),
        *server_identity_checks(ctl),
        *worker_checks(ctl),
        *scheduler_checks(ctl),
    ]


def server_reachability(ctl: Control, *, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """Whether each server of the catalog answers ``SELECT 1`` now (readiness): name ->
    ``{"ok", "region", "error"?}``. Raises when the catalog itself cannot be read."""
    with ctl.catalog() as s:
        handles = [ctl.handle_for(row) for row in s.execute(select(Server)).scalars()]
    out: dict[str, dict[str, Any]] = {}
    for handle in handles:
        entry: dict[str, Any] = {"region": handle.region}
        try:
            engine = get_engine(
                handle.admin_url("postgres"),
                pooled=False,
                connect_args={"connect_timeout": max(1, int(timeout))},
            )
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            entry["ok"] = True
        except Exception as exc:
            entry["ok"] = False
            entry["error"] = " ".join(str(getattr(exc, "orig", exc)).split())[:200]
        out[handle.name] = entry
    return out
