"""After a master-key compromise: a new master key, then new data keys.

Whoever holds the old master key and a copy of the catalog (a backup, a dump) unwraps every
data key in it: the PII key and the one staged after it, the JWT signing keys, the key that
seals the catalog's credentials, and with that key the database passwords and server URLs.
Re-wrapping the data keys under a new master key protects none of that, so
``rotate master-key --compromised`` also replaces what the old master key exposed, in this
order: the master key; ``pii`` to a fresh key (not the staged one: it was exposed too) with
every value re-encrypted; ``jwt`` to a fresh key, every other signing key retired and
destroyed at once (every session ends); ``db-credentials`` (every sealed value re-sealed);
every isolated tenant's database password. Webhook signing secrets (sealed by the credentials
key) are rotated per endpoint (``webhook secret rotate``).
"""

from __future__ import annotations

from typing import Any

from bizosctl.catalog.control import Control
from bizosctl.errors import BizosError, OperationFailed

PLAN = (
    ("master-key", "re-wrap every data key under a new master key"),
    ("pii --fresh-key", "new PII key (not the exposed staged one), every value re-encrypted"),
    ("jwt --fresh-key", "new signing key; every other one retired at once (sessions end)"),
    ("db-credentials", "new catalog credentials key, every sealed value re-sealed"),
    ("db-password --all", "new password for every login role (isolated tenants', shared)"),
)


def compromise_plan() -> list[dict[str, str]]:
    """The steps :func:`rotate_after_compromise` takes, in order. Changes nothing."""
    return [{"step": step, "does": does} for step, does in PLAN]


def rotate_after_compromise(
    ctl: Control, *, to_kms: str | None = None, quarantine_action: str = "keep"
) -> dict[str, Any]:
    """Every step of :data:`PLAN`. Returns each step's report under its purpose. A step that
    fails stops the rest; the error says which steps were done and what is left to run."""
    from bizosctl.security.dbpasswords import rotate_db_password
    from bizosctl.security.master_rotation import rotate_master_key
    from bizosctl.security.rotation import rotate_pii
    from bizosctl.security.secrets import rotate_credentials_key, rotate_jwt

    steps: list[tuple[str, str, Any]] = [
        ("master-key", "master-key", lambda: rotate_master_key(ctl, to_kms=to_kms)),
        (
            "pii",
            "pii --fresh-key",
            lambda: rotate_pii(ctl, fresh_key=True, quarantine_action=quarantine_action),
        ),
        ("jwt", "jwt --fresh-key", lambda: rotate_jwt(ctl, fresh_key=True)),
        ("db-credentials", "db-credentials", lambda: rotate_credentials_key(ctl)),
        ("db-password", "db-password --all", lambda: rotate_db_password(ctl, all_=True)),
    ]
    report: dict[str, Any] = {"compromised": True, "ok": True}
    for i, (key, label, step) in enumerate(steps):
        done = ", ".join(s[1] for s in steps[:i]) or "nothing"
        rest = "; ".join(f"bizosctl secrets rotate {s[1]}" for s in steps[i:])
        try:
            report[key] = step()
        except BizosError as exc:
            if i == 0:
                raise  # nothing changed yet: the master key's own error, as it is
            raise OperationFailed(
                f"after a compromise: {label} failed ({exc.message}); done: {done}; "
                f"still to run: {rest}"
            ) from exc
        part = report[key]
        # values that no key decrypts do not stop the rest (they are listed); anything left
        # under the exposed key does
        if part.get("left") or part.get("skipped") or part.get("cancelled"):
            report["ok"] = False
            report["error"] = (
                f"after a compromise: {label} incomplete ({part.get('error')}); done: {done}; "
                f"still to run: {rest}"
            )
            return report
    return report
