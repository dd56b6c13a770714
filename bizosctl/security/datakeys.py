"""The keyring's data keys in memory: :class:`Keyring` and what loading it needs, without
SQLAlchemy (the short read commands load it from plain rows: ``Keyring.load_entries``).

The catalog side (making, rotating, retiring and destroying versions) is
:mod:`bizosctl.security.keyring`, which re-exports everything here.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bizosctl.errors import KeyDestroyed, KeyringError
from bizosctl.security.masterkey import LocalMasterKey, MasterKey

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: ``gdpr`` keys the catalog's routing keys of people (bizosctl.privacy.subjects): apart from
#: ``pii`` so that the catalog's hashes never equal the tenants' blind indexes.
PURPOSES = ("pii", "jwt", "webhook", "db-credentials", "gdpr")
#: Purposes whose next version is made ahead of time ("staged", as in a pre-published key
#: rollover): every process can read it long before it becomes primary, so a rotation switches
#: at once instead of waiting a reload period for the other processes to learn the new key.
STAGED = ("pii", "jwt")
#: A process re-reads the keyring this often, so it starts writing with a new primary soon
#: after a rotation in another process (a rotation waits this long before its final sweep).
RELOAD_SECONDS = 10.0
#: Purposes whose retired keys are destroyed at once (no grace period): a JWT key retires when
#: no token it signed can still be valid, or at once after a leak.
DESTROY_AT_RETIREMENT = ("jwt",)


@dataclass(frozen=True)
class DataKey:
    purpose: str
    version: int
    key: bytes
    primary: bool
    binds_rows: bool = False  # the row's id is part of its values' associated data
    #: (epoch seconds) when it stops reading even if no one has retired it yet
    retire_after: float | None = None
    #: (epoch seconds) when it stopped being primary, i.e. stopped writing or signing
    demoted_at: float | None = None


def _aad(purpose: str, version: int) -> bytes:
    return f"bizos-keyring:{purpose}:{version}".encode()


def unwrap(master: MasterKey, entry: Any) -> bytes:
    if entry.wrapped_key is None:
        raise KeyDestroyed(_destroyed_message(entry.purpose, entry.version, entry.destroyed_at))
    if entry.master_id and entry.master_id != master.id:
        raise KeyringError(
            f"{entry.purpose} v{entry.version} is wrapped by master key {entry.master_id}, not by "
            f"the configured one ({master.id}): wrong BIZOS_MASTER_KEY, key file or KMS key"
        )
    from cryptography.exceptions import InvalidTag

    try:
        return master.unwrap(_aad(entry.purpose, entry.version), entry.wrapped_key)
    except (InvalidTag, ValueError) as exc:
        raise KeyringError(
            f"the master key does not open the keyring ({entry.purpose} v{entry.version}): "
            "wrong BIZOS_MASTER_KEY, key file or KMS key"
        ) from exc


def _destroyed_message(purpose: str, version: int, when: dt.datetime | None) -> str:
    on = f" on {when:%Y-%m-%d %H:%M} UTC" if when is not None else ""
    return (
        f"{purpose!r} key version {version} was destroyed{on}: "
        "values under it can never be decrypted again"
    )


def _epoch(when: dt.datetime | None) -> float | None:
    return None if when is None else when.timestamp()


class Keyring:
    """Unwrapped data keys of one catalog, loaded once per process and re-read periodically."""

    def __init__(
        self, master: MasterKey | bytes, *, reload_seconds: float = RELOAD_SECONDS
    ) -> None:
        self.master = LocalMasterKey(master) if isinstance(master, bytes) else master
        self.reload_seconds = reload_seconds
        self._keys: dict[tuple[str, int], DataKey] = {}
        self._primary: dict[str, DataKey] = {}
        self._destroyed: dict[tuple[str, int], dt.datetime | None] = {}
        self._lock = threading.Lock()
        self.loaded_at = 0.0

    def ensure(self, session: Session) -> list[str]:
        """Create a first key for each purpose that has none. Returns the purposes created."""
        from sqlalchemy import func, select

        from bizosctl.catalog.models import KeyringEntry
        from bizosctl.security.keyring import new_entry

        have = set(session.execute(select(KeyringEntry.purpose)).scalars())
        if set(PURPOSES) <= have:
            return []
        session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended("keyring", 0))))
        have = set(session.execute(select(KeyringEntry.purpose)).scalars())
        made = []
        for purpose in PURPOSES:
            if purpose not in have:
                session.add(new_entry(self.master, purpose, 1, primary=True))
                if purpose in STAGED:
                    session.add(new_entry(self.master, purpose, 2, primary=False))
                made.append(purpose)
        session.flush()
        return made

    def load(self, session: Session) -> None:
        """Read the live keys. Keys past their ``retire_after`` are retired first (a JWT key
        then also destroyed): they stop verifying without waiting for a rotation or a cron."""
        from sqlalchemy import select

        from bizosctl.catalog.models import KeyringEntry
        from bizosctl.security.keyring import destroy_due, retire_due

        # SKIP LOCKED: a process loading its keyring never waits on a rotation's transaction
        # (that rotation may be this very thread's, waiting for this load)
        retire_due(session, skip_locked=True)
        destroy_due(session, destroy_after_s=None, skip_locked=True)
        self.load_entries(session.execute(select(KeyringEntry)).scalars())

    def load_entries(self, rows: Iterable[Any]) -> None:
        """Take the live keys of ``rows`` (every ``keyring`` row: ORM entries or rows of its
        columns), changing nothing in the catalog (see :meth:`load`)."""
        keys: dict[tuple[str, int], DataKey] = {}
        primary: dict[str, DataKey] = {}
        destroyed: dict[tuple[str, int], dt.datetime | None] = {}
        for entry in rows:
            if entry.wrapped_key is None:
                destroyed[(entry.purpose, entry.version)] = entry.destroyed_at
            if entry.retired_at is not None or entry.wrapped_key is None:
                continue
            dk = DataKey(
                entry.purpose,
                entry.version,
                unwrap(self.master, entry),
                entry.is_primary,
                binds_rows=entry.binds_rows,
                retire_after=_epoch(entry.retire_after),
                demoted_at=_epoch(entry.demoted_at),
            )
            keys[(entry.purpose, entry.version)] = dk
            if entry.is_primary:
                primary[entry.purpose] = dk
        with self._lock:
            self._keys, self._primary, self._destroyed = keys, primary, destroyed
            self.loaded_at = time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self.loaded_at > self.reload_seconds

    def primary(self, purpose: str) -> DataKey:
        try:
            return self._primary[purpose]
        except KeyError:
            raise KeyringError(f"the keyring has no primary {purpose!r} key") from None

    def get(self, purpose: str, version: int) -> DataKey:
        try:
            return self._keys[(purpose, version)]
        except KeyError:
            if (purpose, version) in self._destroyed:
                when = self._destroyed[(purpose, version)]
                raise KeyDestroyed(_destroyed_message(purpose, version, when)) from None
            raise KeyringError(f"{purpose!r} key version {version} is unknown or retired") from None

    def versions(self, purpose: str) -> list[DataKey]:
        found = (k for k in self._keys.values() if k.purpose == purpose)
        return sorted(found, key=lambda k: k.version)
