"""Rotating the master key as an operation (``secrets.master-key``): a new key file or a KMS
key, every data key re-wrapped under it, then installed. The file-based recovery of a run
killed after its commit (``master.key.next``) is in :mod:`bizosctl.security.masterkey`."""

from __future__ import annotations

import os
import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry
from bizosctl.catalog.operations import (
    OperationKind,
    OperationPublic,
    OperationRun,
    OperationStatus,
)
from bizosctl.errors import ConfigError, InvalidInput, KeyringError
from bizosctl.faults import crash_point
from bizosctl.security.masterkey import (
    KmsMasterKey,
    LocalMasterKey,
    MasterKey,
    create_key_file,
    load_master_key,
    next_key_file,
)
from bizosctl.security.rotation_ops import start, step_session


class MasterKeyRotationParams(BaseModel):
    """What a ``secrets.master-key`` operation records: the KMS key it moves to (None: a new
    key file)."""

    to_kms: str | None = None


def _rewrap_all(ctl: Control, s: Session, new: MasterKey) -> int:
    """Every data key not yet wrapped by ``new``, re-wrapped by it (in ``s``)."""
    from bizosctl.security.keyring import _aad, unwrap

    old = ctl.keyring.master
    s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('keyring', 0))"))
    entries = (
        s.execute(
            select(KeyringEntry).where(
                KeyringEntry.wrapped_key.is_not(None),
                KeyringEntry.master_id.is_distinct_from(new.id),
            )
        )
        .scalars()
        .all()
    )
    for e in entries:  # a destroyed key has nothing left to re-wrap
        key = unwrap(old, e)
        e.wrapped_key = new.wrap(_aad(e.purpose, e.version), key)
        e.master_id = new.id
    s.flush()
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
    """Re-wrap every data key under a new master key: a new key file, or a KMS key.

    An operation (``secrets.master-key``): ``new-key`` (the new key written to
    ``master.key.next``, or the KMS key), ``rewrapped`` (committed with the re-wrapped data
    keys), ``installed`` (the key file replaced, or the KMS key written to the config file). A
    run killed after its commit leaves the new key in ``master.key.next``: the next process
    that opens the keyring installs it, and the next run of this command (or ``ops resume
    ID``) records that and finishes the operation. A run that died earlier is resumed the same
    way, with its own params.
    """
    check_master_rotation(ctl, to_kms=to_kms)
    _ = ctl.keyring  # opens with the current master (after finishing a rename), or fails clearly
    op_id, resumed = start(
        ctl,
        kind=OperationKind.ROTATE_MASTER_KEY,
        target="master-key",
        params=MasterKeyRotationParams(to_kms=to_kms),
    )
    return _run_master(ctl, op_id, resumed=resumed)


def resume_master_rotation(ctl: Control, op: OperationPublic) -> dict[str, Any]:
    """The registry's runner: finish a master-key rotation whose process died."""
    _ = ctl.keyring  # installs master.key.next when the catalog already expects it
    return _run_master(ctl, op.id, resumed=True)


def _key_at(settings: Any, path: Any) -> LocalMasterKey | None:
    if not path.exists():
        return None
    return LocalMasterKey(load_master_key(settings.model_copy(update={"master_key_file": path})))


def _new_master(ctl: Control, run: OperationRun, params: MasterKeyRotationParams) -> MasterKey:
    """The new master key: the one an earlier run of this operation made, or a new one."""
    settings = ctl.settings
    nxt = next_key_file(settings)
    if "new-key" in run.completed:
        want = str(run.step_data("new-key")["master"])
        if params.to_kms is not None:
            return KmsMasterKey(params.to_kms, endpoint_url=settings.kms_endpoint_url)
        for path in (nxt, settings.key_file):
            key = _key_at(settings, path)
            if key is not None and key.id == want:
                return key
        if "rewrapped" in run.completed:
            raise KeyringError(
                f"the new master key {want} is lost: neither {nxt} nor {settings.key_file} "
                "holds it (restore it from a backup)"
            )
        # the new key file went before anything was wrapped with it: make another one
    new: MasterKey
    if params.to_kms is not None:
        new = KmsMasterKey(params.to_kms, endpoint_url=settings.kms_endpoint_url)
    else:
        nxt.unlink(missing_ok=True)
        create_key_file(nxt)
        key = _key_at(settings, nxt)
        assert key is not None
        new = key
    run.step("new-key", master=new.id, to="kms" if params.to_kms else str(nxt))
    crash_point("rotate.master.new-key")
    return new


def _install(ctl: Control, params: MasterKeyRotationParams) -> str:
    """Make the new master key the configured one; returns how (for the operation's step)."""
    settings = ctl.settings
    if params.to_kms is None:
        nxt = next_key_file(settings)
        if not nxt.exists():
            return "installed from master.key.next when the keyring was next opened"
        os.replace(nxt, settings.key_file)  # the old key is gone
        return "key file replaced"
    _write_config(
        settings,
        {
            "kms_key_id": params.to_kms,
            **(
                {"kms_endpoint_url": settings.kms_endpoint_url} if settings.kms_endpoint_url else {}
            ),
        },
    )
    if settings.master_key is None and settings.key_file.exists():
        settings.key_file.unlink()
    return "KMS key written to the config file"


def _run_master(ctl: Control, op_id: uuid.UUID, *, resumed: bool) -> dict[str, Any]:
    with OperationRun(ctl, op_id) as run:
        params = MasterKeyRotationParams.model_validate(run.params())
        new = _new_master(ctl, run, params)
        if "rewrapped" not in run.completed:
            with step_session(run) as s:
                count = _rewrap_all(ctl, s, new)
            run.step("rewrapped", data_keys=count)
            crash_point("rotate.master.rewrapped")
        count = int(run.step_data("rewrapped")["data_keys"])
        if "installed" not in run.completed:
            run.step("installed", how=_install(ctl, params))
            crash_point("rotate.master.installed")
        how = str(run.step_data("installed")["how"])
        run.finish(OperationStatus.DONE)
    ctl.use_master(new)  # this process goes on with the new master
    return {
        "operation": str(op_id),
        "resumed": resumed,
        "rewrapped": count,
        "master": new.id,
        "installed": how,
    }


def _write_config(settings: Any, values: dict[str, str]) -> None:
    from bizosctl.config import update_config_file

    update_config_file(dict(values))  # checked read, 0600, atomic, never through a symlink
