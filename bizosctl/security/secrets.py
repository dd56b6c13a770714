"""The keyring as operators see it, and the rotations that are not re-encryption sweeps:
JWT signing keys, catalog credentials and the master key (database passwords:
``bizosctl.security.dbpasswords``)."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, text, update

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry, Route, Server
from bizosctl.errors import ConfigError, InvalidInput, KeyringError
from bizosctl.faults import crash_point
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
from bizosctl.security.masterkey import (
    KmsMasterKey,
    LocalMasterKey,
    MasterKey,
    create_key_file,
    load_master_key,
    next_key_file,
)


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
    return tokens


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


def next_key_plan(ctl: Control, purpose: str, *, fresh: bool = False) -> dict[str, Any]:
    """What a rotation of ``purpose`` would switch to (``next_version``: the staged version,
    None for a new key) and how long it would wait before (``would_wait_s``). Changes nothing."""
    with ctl.catalog() as s:
        staged = None if fresh else staged_version(s, purpose)
    return {
        "next_version": staged[0] if staged else None,
        "would_wait_s": round(_wait_before_switch(ctl, staged[1] if staged else 0.0), 3),
    }


def _wait_before_switch(ctl: Control, age: float) -> float:
    """A key ``age`` seconds old writes or signs only once every process can read it."""
    return max(0.0, ctl.settings.keyring_reload_seconds - age)


# -- JWT ----------------------------------------------------------------------------------------
def rotate_jwt(ctl: Control, *, fresh_key: bool = False) -> dict[str, Any]:
    """New signing key (new ``kid``); older live keys retire once their last token expired.

    The new key is the staged one, which every process already verifies with; without one (or
    with ``fresh_key``) a new key is made and signs nothing until every process has re-read its
    keyring (one reload period), so that no verifier meets a ``kid`` it does not know.
    ``fresh_key`` is for a leak: every other live key (the leaked primary, older ones) is
    retired, and destroyed, at the switch, so nothing signed with them verifies any more.
    """
    ttl = ctl.settings.jwt_ttl_seconds
    reload_s = ctl.settings.keyring_reload_seconds
    # a process that has not re-read its keyring signs with the old key for up to one reload
    # period after the switch; its tokens live ``ttl``
    valid_for = int(ttl + reload_s + ctl.settings.jwt_leeway_seconds) + 1
    master = ctl.keyring.master  # not inside a catalog transaction: a reload may happen
    with ctl.catalog() as s:
        version, age = next_version(s, master, "jwt", fresh=fresh_key)
    waited = _wait_before_switch(ctl, age)
    time.sleep(waited)
    with ctl.catalog() as s:
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
                .values(retire_after=text(f"now() + interval '{valid_for} seconds'"))
            )
        set_primary(s, "jwt", version)
        destroyed = destroy_due(
            s, destroy_after_s=ctl.settings.key_destroy_after, purposes=("jwt",)
        )
        staged = stage_next(s, master, "jwt")
    ctl.reload_keyring()
    return {
        "purpose": "jwt",
        "version": version,
        "kid": f"jwt-v{version}",
        "retired": sorted(set(due)),
        "destroyed": [v for _p, v in destroyed],
        "staged": staged,
        "waited_s": round(waited, 3),
        "previous_valid_for_s": 0 if fresh_key else valid_for,
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
def rotate_credentials_key(ctl: Control) -> dict[str, Any]:
    """New ``db-credentials`` key; every sealed catalog value re-sealed; the old key retired."""
    from bizosctl.catalog.models import WebhookEndpoint

    resealed = 0
    with ctl.catalog() as s:
        version = add_version(s, ctl.keyring.master, "db-credentials")
    ctl.reload_keyring()
    with ctl.catalog() as s:  # one transaction: every value moves, or none does

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
        retired = retire(s, "db-credentials", keep=version)
        destroyed = destroy_due(
            s, destroy_after_s=ctl.settings.key_destroy_after, purposes=("db-credentials",)
        )
    ctl.reload_keyring()
    return {
        "purpose": "db-credentials",
        "version": version,
        "resealed": resealed,
        "retired": retired,
        "destroyed": [v for _p, v in destroyed],
    }


# -- master key ---------------------------------------------------------------------------------
def _rewrap_all(ctl: Control, new: MasterKey) -> int:
    from bizosctl.security.keyring import _aad, unwrap

    old = ctl.keyring.master
    with ctl.catalog() as s:
        s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('keyring', 0))"))
        entries = (
            s.execute(select(KeyringEntry).where(KeyringEntry.wrapped_key.is_not(None)))
            .scalars()
            .all()
        )
        for e in entries:  # a destroyed key has nothing left to re-wrap
            key = unwrap(old, e)
            e.wrapped_key = new.wrap(_aad(e.purpose, e.version), key)
            e.master_id = new.id
    return len(entries)


def check_master_rotation(ctl: Control, *, to_kms: str | None) -> None:
    """What a master-key rotation needs before it starts (its plan checks the same)."""
    settings = ctl.settings
    if to_kms is None and settings.master_key is not None:
        raise ConfigError(
            "the master key comes from BIZOS_MASTER_KEY: unset it to rotate to a key file, or "
            "pass --to-kms KEY_ID"
        )
    if to_kms is None and settings.kms_key_id:
        raise InvalidInput("the master key is a KMS key: pass --to-kms NEW_KEY_ID")


def rotate_master_key(ctl: Control, *, to_kms: str | None = None) -> dict[str, Any]:
    """Re-wrap every data key under a new master key: a new key file, or a KMS key."""
    settings = ctl.settings
    check_master_rotation(ctl, to_kms=to_kms)
    _ = ctl.keyring  # opens with the current master, or fails clearly
    if to_kms is not None:
        new: MasterKey = KmsMasterKey(to_kms, endpoint_url=settings.kms_endpoint_url)
    else:
        nxt = next_key_file(settings)
        nxt.unlink(missing_ok=True)
        create_key_file(nxt)
        new = LocalMasterKey(load_master_key(settings.model_copy(update={"master_key_file": nxt})))
    count = _rewrap_all(ctl, new)
    crash_point("rotate.master.rewrapped")
    if to_kms is None:
        os.replace(next_key_file(settings), settings.key_file)  # the old key is gone
    else:
        _write_config(
            settings,
            {
                "kms_key_id": to_kms,
                **(
                    {"kms_endpoint_url": settings.kms_endpoint_url}
                    if settings.kms_endpoint_url
                    else {}
                ),
            },
        )
        if settings.master_key is None and settings.key_file.exists():
            settings.key_file.unlink()
    ctl.use_master(new)  # this process goes on with the new master
    return {"rewrapped": count, "master": new.id}


def finish_interrupted_rotation(ctl: Control, error: KeyringError) -> bool:
    """A rotation killed between the catalog commit and the key file rename leaves the new
    key in ``master.key.next``: when that is the key the keyring expects, install it."""
    nxt = next_key_file(ctl.settings)
    if ctl.settings.master_key is not None or not nxt.exists():
        return False
    candidate = LocalMasterKey(
        load_master_key(ctl.settings.model_copy(update={"master_key_file": nxt}))
    )
    if candidate.id not in error.message:
        return False
    os.replace(nxt, ctl.settings.key_file)
    return True


def _write_config(settings: Any, values: dict[str, str]) -> None:
    from bizosctl.config import update_config_file

    update_config_file(dict(values))  # checked read, 0600, atomic, never through a symlink
