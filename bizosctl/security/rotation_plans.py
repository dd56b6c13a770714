"""What ``secrets rotate master-key`` and ``secrets rotate pii`` would do, changing nothing:
the plans their ``--dry-run`` prints. They refuse what the rotation refuses. (``db-password``'s
plan is ``bizosctl.security.dbpasswords.plan_db_password``, ``db-credentials``'
``bizosctl.security.secrets.plan_credentials_rotation``.)"""

from __future__ import annotations

import os

from pydantic import Field
from sqlalchemy import func, select

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry, Operation
from bizosctl.catalog.operations import OPEN, OperationKind
from bizosctl.plans import KeyPlan, Plan


def unfinished(ctl: Control, kind: OperationKind) -> list[str]:
    """Open operations of ``kind`` (a rotation that died): the next run resumes them first."""
    with ctl.catalog() as s:
        ids = s.execute(
            select(Operation.id)
            .where(Operation.kind == kind, Operation.status.in_(OPEN))
            .order_by(Operation.started_at)
        ).scalars()
        return [str(i) for i in ids]


class PiiRotationPlan(KeyPlan):
    """``secrets rotate pii --dry-run``: the values it would re-encrypt (by the key version
    sealing them now), the key it would switch to, the interrupted rotation it would resume."""

    values_by_version: dict[int, int]
    would_rewrite: int
    would_resume: list[str]


class MasterKeyPlan(Plan):
    """``secrets rotate master-key --dry-run``."""

    from_: str = Field(serialization_alias="from")
    data_keys: int
    would_resume: list[str]
    to: str
    key_checked: bool
    key_file: str | None = None
    staged_as: str | None = None


def plan_pii_rotation(ctl: Control, *, fresh_key: bool = False) -> PiiRotationPlan:
    """What ``rotate_pii`` would do, changing nothing (see :class:`PiiRotationPlan`)."""
    from bizosctl.security.secrets import next_key_plan
    from bizosctl.security.usage import pii_usage

    usage = pii_usage(ctl)
    return PiiRotationPlan(
        **next_key_plan(ctl, "pii", fresh=fresh_key).model_dump(exclude={"dry_run"}),
        values_by_version=usage,
        would_rewrite=sum(usage.values()),
        would_resume=unfinished(ctl, OperationKind.ROTATE_PII),
    )


def plan_master_key(ctl: Control, *, to_kms: str | None) -> MasterKeyPlan:
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
    key_file = staged_as = None
    if to_kms is None:
        to, checked = "a new key file", False
        key_file, staged_as = str(settings.key_file), str(next_key_file(settings))
    else:
        new = KmsMasterKey(to_kms, endpoint_url=settings.kms_endpoint_url)
        new.wrap(b"bizosctl:dry-run", os.urandom(32))  # KeyringError when unusable
        to, checked = new.id, True
    return MasterKeyPlan(
        from_=current.id,
        data_keys=int(count),
        # a rotation that died is finished first, with its own target
        would_resume=unfinished(ctl, OperationKind.ROTATE_MASTER_KEY),
        to=to,
        key_checked=checked,
        key_file=key_file,
        staged_as=staged_as,
    )
