"""The steps of a move: ``_Move`` runs one ``tenant.move`` operation, step by step.

Provision the target, install the change capture, copy the tables, catch up from the change
log, verify (while writes go on, then inside the freeze), switch the route, retire an isolated
source's logins, clean up; each step is a checkpoint of the operation, so a rerun continues
from the last one. ``MoveReport`` is what a move reports. The entry points that plan, record,
run, resume and abort a move are in ``bizosctl.moves.engine``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from bizosctl.catalog.control import Control
from bizosctl.catalog.operations import OperationRun
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.db.migrate import migrate
from bizosctl.errors import OperationFailed
from bizosctl.faults import crash_point
from bizosctl.moves import capture
from bizosctl.moves.copy import checksum, copy_table, sync_keys
from bizosctl.moves.tables import TableInfo, table_infos
from bizosctl.security.keycache import auth_changed
from bizosctl.tenancy.names import login_roles, q
from bizosctl.tenancy.placement import Placement
from bizosctl.tenancy.servers import (
    ensure_database,
    ensure_group_roles,
    prepare_schema,
    set_login_role,
)
from bizosctl.throttle import Throttle
from tenant_schema.ddl import APP_GROUP, OWNER_ROLE

Hooks = dict[str, Callable[..., None]]
CATCHUP_THRESHOLD = 200  # dirty keys left before we freeze
FREEZE_ATTEMPTS = 3


@dataclass
class MoveReport:
    operation: str
    slug: str
    source: dict[str, Any]
    target: dict[str, Any]
    status: str
    freeze_ms: float | None = None  # the freeze that switched
    frozen_total_ms: float = 0.0  # every freeze, including attempts given up
    freeze_attempts: int = 0
    copied_bytes: int = 0
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    keep_until: float | None = None
    resumed: bool = False
    #: Set when the request was a move that had already finished (a rerun after a crash
    #: that came after the switch): when it finished, ISO 8601.
    done_at: str | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)


class _Move:
    def __init__(
        self,
        ctl: Control,
        run: OperationRun,
        params: dict[str, Any],
        hooks: Hooks | None,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.ctl, self.run, self.hooks = ctl, run, hooks or {}
        self.progress = progress or (lambda _msg: None)
        self.params = params
        self.tenant_id = uuid.UUID(params["tenant_id"])
        self.slug = params["slug"]
        self.source = Placement.of(params["source"])
        self.target = Placement.of(params["target"])
        self.parallel = int(params.get("parallel", 4))
        self.src = self._engine(self.source)
        self.dst = self._engine(self.target)
        self.report = MoveReport(
            str(run.id), self.slug, self.source.public(), self.target.public(), "running"
        )
        # keys re-synced since the last verification of everything else (None: not verified
        # in this process, so the freeze verifies everything)
        self.touched: dict[str, dict[str, dict[str, Any]]] | None = None
        self.record_hash = self._same_server_version()

    def _same_server_version(self) -> bool:
        """hash_record_extended is only comparable between equal major versions."""
        versions = set()
        for ep in (self.source, self.target):
            admin = get_engine(self.ctl.server(ep.server).admin_url("postgres"), pooled=False)
            with admin.connect() as conn:
                versions.add(
                    int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000
                )
        return len(versions) == 1

    def _engine(self, ep: Placement) -> Engine:
        handle = self.ctl.server(ep.server)
        handle.ensure_ready()
        return get_engine(handle.admin_url(ep.database), pooled=False)

    def tables(self) -> list[TableInfo]:
        with self.src.connect() as conn:
            return table_infos(conn, self.source.schema)

    def step_data(self, name: str) -> dict[str, Any]:
        return self.run.step_data(name)

    def checkpoint(self, name: str, **data: Any) -> None:
        self.run.step(name, **data)
        crash_point(f"move.{name}")

    # -- steps ------------------------------------------------------------------------------
    def provision(self) -> None:
        t, handle = self.target, self.ctl.server(self.target.server)
        with translate_errors(f"target {t.server}"):
            if t.tier == "isolated":
                assert t.password_enc is not None
                password = self.ctl.unseal(t.password_enc, context=f"role:{t.role}")
                admin = get_engine(handle.admin_url("postgres"), pooled=False)
                with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    if handle.is_cloud:
                        ensure_group_roles(conn)  # a new project has none of bizosctl's roles
                    set_login_role(
                        conn, t.role, password, member_of=APP_GROUP, settings=self.ctl.settings
                    )
                    ensure_database(conn, t.database, owner_login=t.role)
            if t.tier != "shared":
                with self.dst.begin() as conn:
                    prepare_schema(conn, t.schema, extension=t.tier == "isolated")
                    migrate(
                        conn,
                        "tenant",
                        schema=t.schema,
                        owner_role=OWNER_ROLE,
                        revision=self.params["revision"],
                    )
        self.checkpoint("provision")

    def start_capture(self, tables: list[TableInfo]) -> None:
        with translate_errors(f"source {self.source.server}"):
            with self.src.begin() as conn:
                capture.install_log(
                    conn, op_id=self.run.id, schema=self.source.schema, tenant_id=self.tenant_id
                )
            # One table per transaction: CREATE TRIGGER locks its table, and holding several at
            # once deadlocks against writers (a write locks its table, then audit_logs).
            for t in tables:
                with self.src.begin() as conn:
                    capture.install_triggers(
                        conn,
                        op_id=self.run.id,
                        schema=self.source.schema,
                        tenant_id=self.tenant_id,
                        table=t,
                    )
        self.checkpoint("capture")

    def copy(self, tables: list[TableInfo]) -> None:
        todo = [t for t in tables if f"copy:{t.name}" not in self.run.completed]
        rate = self.params.get("max_rate_bytes")
        throttle = Throttle(int(rate)) if rate else None

        def one(t: TableInfo) -> tuple[str, int, float]:
            started = time.perf_counter()
            with self.src.connect() as src, self.dst.connect() as dst:
                src.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                moved = copy_table(
                    src,
                    dst,
                    t,
                    src_schema=self.source.schema,
                    dst_schema=self.target.schema,
                    tenant_id=self.tenant_id,
                    throttle=throttle,
                )
                dst.commit()
                src.rollback()
            return t.name, moved, time.perf_counter() - started

        # the largest tables first, several at once
        todo.sort(key=lambda t: -self.params["plan"]["bytes"].get(t.name, 0))
        with translate_errors("copy"), ThreadPoolExecutor(max_workers=self.parallel) as pool:
            for name, moved, secs in pool.map(one, todo):
                self.report.copied_bytes += moved
                self.checkpoint(f"copy:{name}", bytes=moved, seconds=round(secs, 3))
                self.progress(f"copied {name} ({moved // 1024} KiB in {secs:.2f}s)")
        if todo:  # fresh tables have no statistics: plans (and the checksums) would be poor
            with self.dst.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for t in todo:
                    conn.execute(text(f"ANALYZE {q(self.target.schema)}.{q(t.name)}"))

    def catch_up(self, tables: list[TableInfo], *, until_empty: bool) -> int:
        """Re-sync dirty keys from the log (a queue: applied entries are deleted)."""
        by_name = {t.name: t for t in tables}
        total = 0
        with translate_errors("catch-up"), self.src.connect() as src:
            for _round in range(10_000):
                seqs, dirty = capture.read_dirty(src, op_id=self.run.id)
                src.rollback()
                if not seqs:
                    break
                with self.dst.connect() as dst:
                    for name, keys in dirty.items():
                        sync_keys(
                            src,
                            dst,
                            by_name[name],
                            keys,
                            src_schema=self.source.schema,
                            dst_schema=self.target.schema,
                            tenant_id=self.tenant_id,
                        )
                        if self.touched is not None:
                            bucket = self.touched.setdefault(name, {})
                            bucket.update((json.dumps(k, sort_keys=True), k) for k in keys)
                    dst.commit()
                src.rollback()
                capture.ack(src, op_id=self.run.id, seqs=seqs)  # after the target committed
                src.commit()
                total += sum(len(k) for k in dirty.values())
                if not until_empty and capture.pending(src, op_id=self.run.id) < CATCHUP_THRESHOLD:
                    src.rollback()
                    break
                src.rollback()
        return total

    @property
    def actor(self) -> str:
        """Who the audit trail names for the move's own writes (freeze, unfreeze, switch)."""
        return f"bizosctl:tenant.move:{self.run.id}"

    def set_source_status(self, status: str) -> None:
        with translate_errors(f"source {self.source.server}"), self.src.begin() as conn:
            conn.execute(text("SELECT set_config('bizos.actor', :a, true)"), {"a": self.actor})
            conn.execute(
                text(
                    f"UPDATE {q(self.source.schema)}.tenant_state SET status = :s, "
                    "updated_at = now() WHERE tenant_id = :t"
                ),
                {"s": status, "t": self.tenant_id},
            )

    def wait_for_writers(self, deadline: float) -> bool:
        """Wait until every transaction that was running at the freeze has ended."""
        with self.src.connect() as conn:
            snap = conn.execute(text("SELECT pg_current_snapshot()::text")).scalar_one()
            conn.rollback()
            while True:
                left = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_snapshot_xip(CAST(:s AS pg_snapshot)) AS x "
                        "WHERE pg_xact_status(x) = 'in progress'"
                    ),
                    {"s": snap},
                ).scalar_one()
                conn.rollback()
                if not left:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)

    def _compare(
        self,
        tables: list[TableInfo],
        keys: dict[str, list[dict[str, Any]]] | None,
        *,
        exclude: bool,
        snapshot: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Checksums of both sides per table (all rows, only ``keys``, or all but ``keys``),
        several tables at once; ``snapshot`` makes every source read see one exported snapshot."""

        def side(engine: Engine, schema: str, t: TableInfo, snap: str | None) -> tuple[int, str]:
            k = None if keys is None else keys.get(t.name, [])
            with engine.connect() as c:
                if snap is not None:
                    c.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                    c.execute(text(f"SET TRANSACTION SNAPSHOT '{snap}'"))
                return checksum(
                    c,
                    t,
                    schema=schema,
                    tenant_id=self.tenant_id,
                    keys=k,
                    exclude=exclude,
                    record_hash=self.record_hash,
                )

        todo = tables if keys is None or exclude else [t for t in tables if keys.get(t.name)]
        out: dict[str, dict[str, Any]] = {}
        with ThreadPoolExecutor(max_workers=max(2, self.parallel)) as pool:
            futs = {
                t.name: (
                    pool.submit(side, self.src, self.source.schema, t, snapshot),
                    pool.submit(side, self.dst, self.target.schema, t, None),
                )
                for t in todo
            }
            for name, (a, b) in futs.items():
                (ra, ca), (rb, cb) = a.result(), b.result()
                out[name] = {"rows": ra, "target_rows": rb, "match": (ra, ca) == (rb, cb)}
        return out

    def verify(self, tables: list[TableInfo]) -> dict[str, dict[str, Any]]:
        """Everything, both sides (used when no pre-freeze verification ran in this process)."""
        return self._compare(tables, None, exclude=False)

    def verify_before_freeze(self, tables: list[TableInfo]) -> dict[str, dict[str, Any]]:
        """Verify every row whose key is not in the change log, while writes go on.

        In one source snapshot: the logged keys, and the checksums of all other rows. A row
        whose key is not logged has not changed since it was copied or last re-synced (its
        change would be logged), so both sides must agree on it now; the catch-up is paused,
        so the target does not move. Keys logged now or later are re-synced and verified
        again inside the freeze, which then costs as much as the changes, not the tenant.
        """
        with self.src.connect() as src:
            src.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            snapshot = src.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            _seqs, logged = capture.read_dirty(src, op_id=self.run.id, limit=10_000_000)
            result = self._compare(tables, logged, exclude=True, snapshot=snapshot)
            src.rollback()
        self.touched = {
            name: {json.dumps(k, sort_keys=True): k for k in keys} for name, keys in logged.items()
        }
        return result

    def verify_in_freeze(self, tables: list[TableInfo]) -> dict[str, dict[str, Any]]:
        if self.touched is None:
            return self.verify(tables)
        keys = {name: list(bucket.values()) for name, bucket in self.touched.items()}
        return self._compare(tables, keys, exclude=False)

    def _fail_on_mismatch(self, result: dict[str, dict[str, Any]]) -> None:
        bad = sorted(n for n, r in result.items() if not r["match"])
        if bad:
            self.abort(reason=f"verification failed for {', '.join(bad)}")
            raise OperationFailed(
                f"move of {self.slug!r} aborted: source and target differ in "
                f"{', '.join(bad)}; the route is unchanged and writes resumed"
            )

    def switch(self, freeze_ms: float) -> None:
        t = self.target
        with translate_errors(f"target {t.server}"), self.dst.begin() as conn:
            conn.execute(text("SELECT set_config('bizos.actor', :a, true)"), {"a": self.actor})
            conn.execute(
                text(
                    f"UPDATE {q(t.schema)}.tenant_state SET status = 'active', updated_at = now() "
                    "WHERE tenant_id = :t"
                ),
                {"t": self.tenant_id},
            )
        conn = self.run.conn
        conn.execute(
            text(
                "UPDATE routes SET server = :server, database = :db, schema = :schema, "
                # shared and schema tiers: the server's shared login role now (a rotation of it
                # since the move was planned switched it)
                "role = CASE WHEN CAST(:pw AS text) IS NULL THEN (SELECT app_role FROM servers "
                "WHERE name = :server) ELSE :role END, "
                "password_enc = :pw, updated_at = now() WHERE tenant_id = :t"
            ),
            {
                "server": t.server,
                "db": t.database,
                "schema": t.schema,
                "role": t.role,
                "pw": t.password_enc,
                "t": self.tenant_id,
            },
        )
        conn.execute(
            text(
                "UPDATE tenants SET tier = :tier, region = :region, status = 'active' WHERE id = :t"
            ),
            {"tier": t.tier, "region": t.region, "t": self.tenant_id},
        )
        auth_changed(conn, tenant_id=self.tenant_id)
        self.run.step("switch", freeze_ms=round(freeze_ms, 1))  # commits the whole transaction
        crash_point("move.switch")

    def announce(self) -> None:
        """``tenant.upgraded`` (a move to a higher tier), right after the switch, in the
        outbox of the tenant's new target (the route points there now).

        The switch commits first, so the event never announces a move that could still be
        aborted, and the target's own write guard and RLS apply as to any other write. A
        crash between the event and this checkpoint emits it again on resume with the same
        id (derived from the operation): the outbox records it once, a delivery made of it
        is unique per (event, endpoint), so a receiver sees one ``webhook-id``.
        """
        from bizosctl.notify.outbox import derived_event_id, emit_event
        from bizosctl.tenancy.names import TIERS
        from bizosctl.tenancy.router import tenant_session

        if TIERS.index(self.target.tier) > TIERS.index(self.source.tier):
            with tenant_session(self.ctl, self.slug, actor=self.actor) as s:
                emit_event(
                    s,
                    "tenant.upgraded",
                    {
                        "tenant": self.slug,
                        "from_tier": self.source.tier,
                        "to_tier": self.target.tier,
                        "region": self.target.region,
                        "operation": str(self.run.id),
                    },
                    event_id=derived_event_id(f"tenant.upgraded:{self.run.id}"),
                )
            crash_point("move.announced")  # emitted, not checkpointed: a rerun emits it again
        self.checkpoint("announce")

    def retire_source_logins(self) -> None:
        """An isolated source's login roles lose LOGIN and their sessions at the switch: the
        kept copy is for the operator (``--purge-source``, a move back), not the application.
        Shared and schema sources keep the shared role, which serves the other tenants."""
        src = self.source
        if src.tier != "isolated" or (src.server, src.database) == (
            self.target.server,
            self.target.database,
        ):
            return
        from bizosctl.security.dbpasswords import end_login

        handle = self.ctl.server(src.server)
        ended = 0
        with translate_errors(f"source {src.server}"):
            admin = get_engine(handle.admin_url("postgres"), pooled=False)
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for role in login_roles(src.database):
                    ended += end_login(conn, role)
        from bizosctl.db.engines import dispose_all

        for role in login_roles(src.database):
            dispose_all(host_contains=f"{role}:")
        self.checkpoint("retire_source_logins", sessions_terminated=ended)

    def remove_capture(self, tables: list[TableInfo]) -> None:
        with translate_errors(f"source {self.source.server}"):
            for t in tables:  # one table per transaction, as in start_capture
                with self.src.begin() as conn:
                    capture.remove_triggers(
                        conn, op_id=self.run.id, schema=self.source.schema, table=t.name
                    )
            with self.src.begin() as conn:
                capture.remove_log(conn, op_id=self.run.id)

    def cleanup(self, tables: list[TableInfo]) -> None:
        self.remove_capture(tables)
        self.checkpoint("cleanup")

    # -- the whole move ---------------------------------------------------------------------
    def cancelled(self) -> bool:
        """``ops cancel`` asked to stop: before the switch the move is aborted (the tenant
        stays where it is); after it, the move finishes (there is nothing left to undo)."""
        if "switch" in self.run.completed or not self.run.cancel_requested():
            return False
        self.progress("cancelled: aborting the move")
        self.abort("cancelled by the operator")
        self.report.status = "aborted"
        return True

    def execute(self) -> MoveReport:
        done = self.run.completed
        if self.cancelled():
            return self.report
        if "provision" not in done:
            self.progress("provisioning the target")
            self.provision()
        tables = self.tables()
        if "capture" not in done:
            self.start_capture(tables)
        self.progress("copying")
        self.copy(tables)
        if "after_copy" in self.hooks:
            self.hooks["after_copy"](self, tables)
        if self.cancelled():
            return self.report
        if "switch" not in done:
            self._freeze_verify_switch(tables)
        if "announce" not in done:
            self.announce()
        if "retire_source_logins" not in done:
            self.retire_source_logins()
        if "cleanup" not in done:
            self.cleanup(tables)
        data = self.step_data("switch")
        self.report.freeze_ms = data.get("freeze_ms")
        self.report.status = "done"
        self.report.keep_until = self.params["keep_until"]
        return self.report

    def _freeze_verify_switch(self, tables: list[TableInfo]) -> None:
        max_freeze = self.params["max_freeze_ms"] / 1000
        for attempt in range(1, FREEZE_ATTEMPTS + 1):
            if "freeze" not in self.run.completed:
                self.progress("catching up")
                self.catch_up(tables, until_empty=False)
                self.progress("verifying (writes go on)")
                if "before_verify" in self.hooks:
                    self.hooks["before_verify"](self)
                result = self.verify_before_freeze(tables)
                self.report.tables = result
                self._fail_on_mismatch(result)
                self.set_source_status("moving")
                self.checkpoint("freeze", at=time.time(), attempt=attempt)
            self.report.freeze_attempts += 1
            frozen_at = float(self.step_data("freeze").get("at", time.time()))
            if not self.wait_for_writers(time.monotonic() + max_freeze):
                self._unfreeze(f"writers still running after {max_freeze:.1f}s", frozen_at)
                continue
            self.catch_up(tables, until_empty=True)
            result = self.verify_in_freeze(tables)
            for name, r in result.items():
                self.report.tables.setdefault(name, {})["verified_in_freeze"] = r["rows"]
                if not r["match"]:
                    self.report.tables[name]["match"] = False
            self._fail_on_mismatch(result)
            freeze = time.time() - frozen_at
            if freeze > max_freeze:
                self._unfreeze(f"freeze took {freeze:.2f}s > --max-freeze", frozen_at)
                continue
            self.report.frozen_total_ms += freeze * 1000
            self.switch(freeze * 1000)
            return
        raise OperationFailed(
            f"move of {self.slug!r} could not switch within --max-freeze "
            f"{self.params['max_freeze_ms']} ms in {FREEZE_ATTEMPTS} attempts; writes resumed, "
            "run the same command again to retry (or allow a longer --max-freeze)"
        )

    def _unfreeze(self, why: str, frozen_at: float | None = None) -> None:
        if frozen_at is not None:
            self.report.frozen_total_ms += (time.time() - frozen_at) * 1000
        self.progress(f"unfreezing: {why}")
        self.set_source_status("active")
        self.run.undo("freeze")
        self.run.step("unfreeze", reason=why)

    def abort(self, reason: str) -> None:
        """Back to where the tenant was: capture removed, target dropped, writes resumed."""
        self.remove_capture(self.tables())
        self.target.drop(self.ctl, self.tenant_id)
        self.set_source_status("active")
        with self.ctl.catalog() as s:
            s.execute(
                text("UPDATE tenants SET status = 'active' WHERE id = :t"), {"t": self.tenant_id}
            )
            auth_changed(s, tenant_id=self.tenant_id)
        self.run.finish("aborted", reason)
