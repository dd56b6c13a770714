"""What ``secrets rotate master-key`` would do, changing nothing: the plan its ``--dry-run``
prints. It refuses what the rotation refuses. (``db-password``'s plan is
``bizosctl.security.dbpasswords.plan_rotation``.)"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import func, select

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry


def plan_master_key(ctl: Control, *, to_kms: str | None) -> dict[str, Any]:
    """The master key a ``rotate_master_key`` run would wrap the data keys with, and how many.

    With ``to_kms`` the KMS key is checked by encrypting a throw-away value with it (KMS keeps
    nothing), so a wrong key id or missing permission shows before anything changes.
    """
    from bizosctl.security.masterkey import KmsMasterKey, next_key_file
    from bizosctl.security.secrets import check_master_rotation

    settings = ctl.settings
    check_master_rotation(ctl, to_kms=to_kms)
    current = ctl.keyring.master  # opens with the current master, or fails clearly
    with ctl.catalog() as s:
        count = s.execute(select(func.count()).select_from(KeyringEntry)).scalar_one()
    plan: dict[str, Any] = {"from": current.id, "data_keys": int(count)}
    if to_kms is None:
        plan.update(to="a new key file", key_file=str(settings.key_file))
        plan["staged_as"] = str(next_key_file(settings))
        plan["key_checked"] = False
    else:
        new = KmsMasterKey(to_kms, endpoint_url=settings.kms_endpoint_url)
        new.wrap(b"bizosctl:dry-run", os.urandom(32))  # KeyringError when unusable
        plan.update(to=new.id, key_checked=True)
    return plan
