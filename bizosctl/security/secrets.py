"""The keyring as operators see it, and the rotations that are not re-encryption sweeps:
JWT signing keys and catalog credentials (the master key: ``bizosctl.security.master_rotation``;
database passwords: ``bizosctl.security.dbpasswords``)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, select, update

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry, Operation, Route, Server
from bizosctl.catalog.operations import (
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
)
from bizosctl.faults import crash_point
from bizosctl.plans import KeyPlan, Plan
from bizosctl.security.fields import key_version
from bizosctl.security.keyring import (
    PURPOSES,
    add_version,
    destroy_due,
    keys_due,
    next_version,
    retire,
    set_primary,
    stage_next,
    staged_version,
)
from bizosctl.security.keyring import retire_due as retire_due_keys
from bizosctl.security.rotation_ops import start, step_session

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class KeyVersion(BaseModel):
    version: int
    primary: bool
    # primary | staged (next primary, already readable) | readable | retired | destroyed
    state: str
    created_at: dt.datetime
    retired_at: dt.datetime | None
    retire_after: dt.datetime | None
    destroyed_at: dt.datetime | None
    master: str | None
    values: int | None  # how many stored values use it; None where nothing is stored
    binds_rows: bool = False  # pii: its values are bound to their row (see security.fields)


class PurposeKeys(BaseModel):
    purpose: str
    versions: list[KeyVersion]


# -- listing ------------------------------------------------------------------------------------
def _credential_tokens(ctl: Control) -> list[str]:
    """Every value the catalog holds sealed with the ``db-credentials`` key."""
    from bizosctl.catalog.models import WebhookEndpoint

    with ctl.catalog() as s:
        tokens = [t for t in s.execute(select(Server.url_enc)).scalars() if t]
        tokens += [t for t in s.execute(select(Server.app_password_enc)).scalars() if t]
        tokens += [t for t in s.execute(select(Route.password_enc)).scalars() if t]
        for secrets_ in s.execute(select(WebhookEndpoint.secrets)).scalars():
            tokens += [item["secret_enc"] for item in secrets_ or [] if item.get("secret_enc")]
    from bizosctl.notify.email import sealed_smtp_password

    smtp = sealed_smtp_password(ctl)
    return [*tokens, smtp] if smtp else tokens


def list_keys(ctl: Control, *, with_usage: bool = True) -> list[PurposeKeys]:
    from bizosctl.security.usage import pii_usage

    _ = ctl.keyring  # also gives purposes that newer code added their first key
    usage: dict[str, dict[int, int]] = {}
    if with_usage:
        usage["pii"] = pii_usage(ctl)
        creds: dict[int, int] = {}
        for token in _credential_tokens(ctl):
            v = key_version(token)
            creds[v] = creds.get(v, 0) + 1
        usage["db-credentials"] = creds
    with ctl.catalog() as s:
        entries = (
            s.execute(select(KeyringEntry).order_by(KeyringEntry.purpose, KeyringEntry.version))
            .scalars()
            .all()
        )
        staged_of = {p: staged_version(s, p) for p in PURPOSES}
    out = []
    for purpose in PURPOSES:
        mine = [e for e in entries if e.purpose == purpose]
        staged = (staged_of[purpose] or (None,))[0]
        versions = [
            KeyVersion(
                version=e.version,
                primary=e.is_primary,
                state=(
                    "primary"
                    if e.is_primary
                    else "destroyed"
                    if e.destroyed_at
                    else "retired"
                    if e.retired_at
                    else "staged"
                    if e.version == staged
                    else "readable"
                ),
                created_at=e.created_at,
                retired_at=e.retired_at,
                retire_after=e.retire_after,
                destroyed_at=e.destroyed_at,
                master=e.master_id,
                values=usage[purpose].get(e.version, 0) if purpose in usage else None,
                binds_rows=e.binds_rows,
            )
            for e in mine
        ]
        out.append(PurposeKeys(purpose=purpose, versions=versions))
    return out


def next_key_plan(ctl: Control, purpose: str, *, fresh: bool = False) -> KeyPlan:
    """What a rotation of ``purpose`` would switch to (``next_version``: the staged version,
    None for a new key) and how long it would wait before (``would_wait_s``). Changes nothing."""
    with ctl.catalog() as s:
        staged = None if fresh else staged_version(s, purpose)
    return KeyPlan(
        purpose=purpose,
        next_version=staged[0] if staged else None,
        would_wait_s=round(_wait_before_switch(ctl, staged[1] if staged else 0.0), 3),
    )


def plan_jwt_rotation(ctl: Control, *, fresh_key: bool = False) -> KeyPlan:
    """What :func:`rotate_jwt` would do, changing nothing: the key that would sign next."""
    return next_key_plan(ctl, "jwt", fresh=fresh_key)


def _wait_before_switch(ctl: Control, age: float) -> float:
    """A key ``age`` seconds old writes or signs only once every process can read it."""
    return max(0.0, ctl.settings.keyring_reload_seconds - age)


# -- JWT ----------------------------------------------------------------------------------------
class JwtRotationParams(BaseModel):
    """What a ``secrets.jwt`` operation records: enough to run it again from its id alone."""

    fresh_key: bool = False


def rotate_jwt(ctl: Control, *, fresh_key: bool = False) -> dict[str, Any]:
    """New signing key (new ``kid``); older live keys retire once their last token expired.

    The new key is the staged one, which every process already verifies with; without one (or
    with ``fresh_key``) a new key is made and signs nothing until every process has re-read its
    keyring (one reload period), so that no verifier meets a ``kid`` it does not know.
    ``fresh_key`` is for a leak: every other live key (the leaked primary, older ones) is
    retired, and destroyed, at the switch, so nothing signed with them verifies any more.

    An operation (``secrets.jwt``, steps ``new-key`` and ``switched``): a run that died is
    resumed by running it again (with its own params) or by ``ops resume ID``.
    """
    op_id, resumed = start(
        ctl,
        kind=OperationKind.ROTATE_JWT,
        target="jwt",
        params=JwtRotationParams(fresh_key=fresh_key),
    )
    return _run_jwt(ctl, op_id, resumed=resumed)


def resume_jwt_rotation(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: finish a jwt rotation whose process died."""
    return _run_jwt(ctl, op.id, resumed=True)


def _run_jwt(ctl: Control, op_id: uuid.UUID, *, resumed: bool) -> dict[str, Any]:
    ttl = ctl.settings.jwt_ttl_seconds
    reload_s = ctl.settings.keyring_reload_seconds
    # a process that has not re-read its keyring signs with the old key for up to one reload
    # period after the switch; its tokens live ``ttl``
    valid_for = int(ttl + reload_s + ctl.settings.jwt_leeway_seconds) + 1
    master = ctl.keyring.master  # not inside a catalog transaction: a reload may happen
    with OperationRun(ctl, op_id) as run:
        params = JwtRotationParams.model_validate(run.params())
        fresh_key = params.fresh_key
        if "new-key" not in run.completed:
            with step_session(run) as s:
                version, age = next_version(s, master, "jwt", fresh=fresh_key)
            run.step("new-key", version=version, at=time.time() - age)
            crash_point("rotate.jwt.new-key")
        new_key = run.step_data("new-key")
        version = int(new_key["version"])
        waited = max(0.0, float(new_key["at"]) + reload_s - time.time())
        time.sleep(waited)
        if "switched" not in run.completed:
            with step_session(run) as s:
                due = [v for _p, v in retire_due_keys(s, purposes=("jwt",))]
                if fresh_key:
                    due += retire(s, "jwt", keep=version)
                else:
                    s.execute(
                        update(KeyringEntry)
                        .where(
                            KeyringEntry.purpose == "jwt",
                            KeyringEntry.retired_at.is_(None),
                            KeyringEntry.retire_after.is_(None),
                            KeyringEntry.version != version,
                        )
                        .values(retire_after=func.now() + dt.timedelta(seconds=valid_for))
                    )
                set_primary(s, "jwt", version)
                destroyed = destroy_due(
                    s, destroy_after_s=ctl.settings.key_destroy_after, purposes=("jwt",)
                )
                staged = stage_next(s, master, "jwt")
            run.step(
                "switched",
                retired=sorted(set(due)),
                destroyed=[v for _p, v in destroyed],
                staged=staged,
                previous_valid_for_s=0 if fresh_key else valid_for,
            )
            crash_point("rotate.jwt.switched")
        switched = run.step_data("switched")
        run.finish(OperationStatus.DONE)
    ctl.reload_keyring()
    return {
        "operation": str(op_id),
        "resumed": resumed,
        "purpose": "jwt",
        "version": version,
        "kid": f"jwt-v{version}",
        "retired": switched["retired"],
        "destroyed": switched["destroyed"],
        "staged": switched["staged"],
        "waited_s": round(waited, 3),
        "previous_valid_for_s": switched["previous_valid_for_s"],
    }


class KeysDue(BaseModel):
    dry_run: bool
    retire: list[dict[str, Any]]
    destroy: list[dict[str, Any]]


def retire_and_destroy_due(ctl: Control, *, dry_run: bool = False) -> KeysDue:
    """Retire every key whose ``retire_after`` has passed, then destroy the material of every
    retired key past its grace period (``BIZOS_KEY_DESTROY_AFTER``; JWT keys at once). For
    cron: ``bizosctl secrets retire-due``. ``dry_run``: only say which."""
    grace = ctl.settings.key_destroy_after
    with ctl.catalog() as s:
        if dry_run:
            retired, destroyed = keys_due(s, destroy_after_s=grace)
        else:
            retired = retire_due_keys(s)
            destroyed = destroy_due(s, destroy_after_s=grace)
    if not dry_run:
        ctl.reload_keyring()

    def rows(items: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return [{"purpose": p, "version": v} for p, v in items]

    return KeysDue(dry_run=dry_run, retire=rows(retired), destroy=rows(destroyed))


def retire_due(ctl: Control) -> list[tuple[str, int]]:
    """Retire (and destroy) what is due; returns the (purpose, version) retired."""
    return [(d["purpose"], d["version"]) for d in retire_and_destroy_due(ctl).retire]


# -- catalog credentials ------------------------------------------------------------------------
class CredentialsRotationParams(BaseModel):
    """A ``secrets.db-credentials`` operation takes no params: it re-seals everything."""


def rotate_credentials_key(ctl: Control) -> dict[str, Any]:
    """New ``db-credentials`` key; every sealed catalog value re-sealed; the old key retired.

    An operation (``secrets.db-credentials``, steps ``new-key`` then ``resealed``, each
    committed with the change it records; every value moves in one transaction, or none does):
    a run that died is resumed by running it again or by ``ops resume ID``.
    """
    op_id, resumed = start(
        ctl,
        kind=OperationKind.ROTATE_DB_CREDENTIALS,
        target="db-credentials",
        params=CredentialsRotationParams(),
    )
    return _run_credentials(ctl, op_id, resumed=resumed)


def resume_credentials_rotation(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: finish a db-credentials rotation whose process died."""
    return _run_credentials(ctl, op.id, resumed=True)


def _reseal_all(ctl: Control, s: Session) -> int:
    from bizosctl.catalog.models import WebhookEndpoint

    resealed = 0

    def again(token: str | None, context: str) -> str | None:
        nonlocal resealed
        if not token:
            return token
        resealed += 1
        return ctl.seal(ctl.unseal(token, context=context), context=context)

    for srv in s.execute(select(Server)).scalars():
        srv.url_enc = again(srv.url_enc, f"server:{srv.name}:url")
        srv.app_password_enc = again(srv.app_password_enc, f"server:{srv.name}:app")
    for route in s.execute(select(Route)).scalars():
        route.password_enc = again(route.password_enc, f"role:{route.role}")
    for ep in s.execute(select(WebhookEndpoint)).scalars():
        ep.secrets = [
            {**item, "secret_enc": again(item.get("secret_enc"), f"webhook:{ep.id}")}
            for item in ep.secrets or []
        ]
    s.flush()
    from bizosctl.notify.email import reseal_smtp_password

    reseal_smtp_password(ctl, lambda token, context: again(token, context) or token)
    return resealed


def _run_credentials(ctl: Control, op_id: uuid.UUID, *, resumed: bool) -> dict[str, Any]:
    with OperationRun(ctl, op_id) as run:
        if "new-key" not in run.completed:
            master = ctl.keyring.master
            with step_session(run) as s:
                version = add_version(s, master, "db-credentials")
            run.step("new-key", version=version)
            crash_point("rotate.db-credentials.new-key")
        version = int(run.step_data("new-key")["version"])
        ctl.reload_keyring()  # seal with the new primary
        if "resealed" not in run.completed:
            with step_session(run) as s:
                resealed = _reseal_all(ctl, s)
                retired = retire(s, "db-credentials", keep=version)
                destroyed = destroy_due(
                    s, destroy_after_s=ctl.settings.key_destroy_after, purposes=("db-credentials",)
                )
            run.step(
                "resealed",
                resealed=resealed,
                retired=retired,
                destroyed=[v for _p, v in destroyed],
            )
            crash_point("rotate.db-credentials.resealed")
        done = run.step_data("resealed")
        run.finish(OperationStatus.DONE)
    ctl.reload_keyring()
    return {
        "operation": str(op_id),
        "resumed": resumed,
        "purpose": "db-credentials",
        "version": version,
        "resealed": done["resealed"],
        "retired": done["retired"],
        "destroyed": done["destroyed"],
    }


class CredentialsRotationPlan(Plan):
    """``secrets rotate db-credentials --dry-run``."""

    purpose: Literal["db-credentials"] = "db-credentials"
    new_version: int
    would_reseal: int
    values_by_version: dict[int, int]
    would_retire: list[int]
    would_resume: list[str]


def plan_credentials_rotation(ctl: Control) -> CredentialsRotationPlan:
    """What :func:`rotate_credentials_key` would do, changing nothing: the version it would
    make, the values it would re-seal (by the version sealing them now), what it would
    retire, and an interrupted rotation it would finish first."""
    from bizosctl.catalog.operations import OPEN

    by_version: dict[int, int] = {}
    for token in _credential_tokens(ctl):
        v = key_version(token)
        by_version[v] = by_version.get(v, 0) + 1
    with ctl.catalog() as s:
        versions = s.execute(
            select(KeyringEntry.version, KeyringEntry.retired_at).where(
                KeyringEntry.purpose == "db-credentials"
            )
        ).all()
        pending = s.execute(
            select(Operation.id).where(
                Operation.kind == OperationKind.ROTATE_DB_CREDENTIALS,
                Operation.status.in_(OPEN),
            )
        ).scalars()
        would_resume = [str(i) for i in pending]
    return CredentialsRotationPlan(
        new_version=max((v for v, _r in versions), default=0) + 1,
        would_reseal=sum(by_version.values()),
        values_by_version=by_version,
        would_retire=sorted(v for v, retired in versions if retired is None),
        would_resume=would_resume,
    )
