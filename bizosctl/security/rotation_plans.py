"""What ``secrets rotate master-key`` and ``secrets rotate pii`` would do, changing nothing:
the plans their ``--dry-run`` prints. They refuse what the rotation refuses. (``db-password``'s
plan is ``bizosctl.security.dbpasswords.plan_db_password``, ``db-credentials``'
``bizosctl.security.secrets.plan_credentials_rotation``.)"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import func, select

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry, Operation
from bizosctl.catalog.operations import OPEN, OperationKind


def unfinished(ctl: Control, kind: OperationKind) -> list[str]:
    """Open operations of ``kind`` (a rotation that died): the next run resumes them first."""
    with ctl.catalog() as s:
        ids = s.execute(
            select(Operation.id)
            .where(Operation.kind == kind, Operation.status.in_(OPEN))
            .order_by(Operation.started_at)
        ).scalars()
        return [str(i) for i in ids]


def plan_pii_rotation(ctl: Control, *, fresh_key: bool = False) -> dict[str, Any]:
    """What ``rotate_pii`` would do: the values it would re-encrypt (by version now), the key
    it would switch to and how long it would wait, the interrupted rotation it would resume."""
    from bizosctl.security.secrets import next_key_plan
    from bizosctl.security.usage import pii_usage

    usage = pii_usage(ctl)
    return {
        "dry_run": True,
        "purpose": "pii",
        "values_by_version": usage,
        "would_rewrite": sum(usage.values()),
        **next_key_plan(ctl, "pii", fresh=fresh_key),
        "would_resume": unfinished(ctl, OperationKind.ROTATE_PII),
    }


def plan_master_key(ctl: Control, *, to_kms: str | None) -> dict[str, Any]:
    """The master key a ``rotate_master_key`` run would wrap the data keys with, and how many.

    With ``to_kms`` the KMS key is checked by encrypting a throw-away value with it (KMS keeps
    nothing), so a wrong key id or missing permission shows before anything changes.
    """
    from bizosctl.security.master_rotation import check_master_rotation
    from bizosctl.security.masterkey import KmsMasterKey, next_key_file

    settings = ctl.settings
    check_master_rotation(ctl, to_kms=to_kms)
    current = ctl.keyring.master  # opens with the current master, or fails clearly
    with ctl.catalog() as s:
        count = s.execute(select(func.count()).select_from(KeyringEntry)).scalar_one()
    plan: dict[str, Any] = {
        "from": current.id,
        "data_keys": int(count),
        # a rotation that died is finished first, with its own target
        "would_resume": unfinished(ctl, OperationKind.ROTATE_MASTER_KEY),
    }
    if to_kms is None:
        plan.update(to="a new key file", key_file=str(settings.key_file))
        plan["staged_as"] = str(next_key_file(settings))
        plan["key_checked"] = False
    else:
        new = KmsMasterKey(to_kms, endpoint_url=settings.kms_endpoint_url)
        new.wrap(b"bizosctl:dry-run", os.urandom(32))  # KeyringError when unusable
        plan.update(to=new.id, key_checked=True)
    return plan
