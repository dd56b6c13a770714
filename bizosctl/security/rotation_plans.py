"""What ``secrets rotate db-password`` and ``secrets rotate master-key`` would do, changing
nothing: the plans their ``--dry-run`` prints. Each refuses what the rotation refuses."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import func, select

from bizosctl.catalog.control import Control
from bizosctl.catalog.models import KeyringEntry, Route, Tenant
from bizosctl.errors import ConfigError, InvalidInput, NotFound
from bizosctl.tenancy.names import check_slug


def plan_db_password(ctl: Control, *, tenant: str | None, grace_s: float) -> dict[str, Any]:
    """The login roles a ``rotate_db_password`` run would switch, per tenant.

    Args:
        tenant: one tenant's slug, or None for every tenant with its own login role.
        grace_s: how long the previous role would keep logging in.
    """
    from bizosctl.security.secrets import _other_role

    stmt = (
        select(Tenant.slug, Route.server, Route.database, Route.role)
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
    with ctl.catalog() as s:
        rows = s.execute(stmt).all()
    if tenant is not None and not rows:
        raise NotFound(
            f"no isolated tenant named {tenant!r} (only isolated tenants have their own role)"
        )
    return {
        "tenants": [
            {
                "tenant": slug,
                "server": server,
                "database": database,
                "role": _other_role(role),
                "previous": role,
            }
            for slug, server, database, role in rows
        ],
        "grace_s": grace_s,
    }


def plan_master_key(ctl: Control, *, to_kms: str | None) -> dict[str, Any]:
    """The master key a ``rotate_master_key`` run would wrap the data keys with, and how many.

    With ``to_kms`` the KMS key is checked by encrypting a throw-away value with it (KMS keeps
    nothing), so a wrong key id or missing permission shows before anything changes.
    """
    from bizosctl.security.masterkey import KmsMasterKey, next_key_file

    settings = ctl.settings
    if to_kms is None and settings.master_key is not None:
        raise ConfigError(
            "the master key comes from BIZOS_MASTER_KEY: unset it to rotate to a key file, or "
            "pass --to-kms KEY_ID"
        )
    if to_kms is None and settings.kms_key_id:
        raise InvalidInput("the master key is a KMS key: pass --to-kms NEW_KEY_ID")
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
