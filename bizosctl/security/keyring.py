"""Versioned data keys per purpose, wrapped by the master key, kept in the catalog.

Purposes: ``pii`` (field encryption and blind indexes), ``jwt`` (session signing keys, one
``kid`` per version), ``webhook`` (reserved for signing material) and ``db-credentials``
(passwords and URLs in the catalog). One version per purpose is primary (it writes); every
version that is not retired still reads. A data key exists in clear only in memory.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bizosctl.catalog.models import KeyringEntry
from bizosctl.errors import KeyringError
from bizosctl.security.masterkey import LocalMasterKey, MasterKey

PURPOSES = ("pii", "jwt", "webhook", "db-credentials")
#: Purposes whose next version is made ahead of time ("staged", as in a pre-published key
#: rollover): every process can read it long before it becomes primary, so a rotation switches
#: at once instead of waiting a reload period for the other processes to learn the new key.
STAGED = ("pii", "jwt")
#: A process re-reads the keyring this often, so it starts writing with a new primary soon
#: after a rotation in another process (a rotation waits this long before its final sweep).
RELOAD_SECONDS = 10.0


@dataclass(frozen=True)
class DataKey:
    purpose: str
    version: int
    key: bytes
    primary: bool
    binds_rows: bool = False  # the row's id is part of its values' associated data


def _aad(purpose: str, version: int) -> bytes:
    return f"bizos-keyring:{purpose}:{version}".encode()


def unwrap(master: MasterKey, entry: KeyringEntry) -> bytes:
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


def new_entry(master: MasterKey, purpose: str, version: int, *, primary: bool) -> KeyringEntry:
    key = secrets.token_bytes(32)
    return KeyringEntry(
        purpose=purpose,
        version=version,
        wrapped_key=master.wrap(_aad(purpose, version), key),
        is_primary=primary,
        master_id=master.id,
        # PII values made from now on are bound to their row (catalog revision 0005)
        binds_rows=purpose == "pii",
    )


class Keyring:
    """Unwrapped data keys of one catalog, loaded once per process and re-read periodically."""

    def __init__(
        self, master: MasterKey | bytes, *, reload_seconds: float = RELOAD_SECONDS
    ) -> None:
        self.master = LocalMasterKey(master) if isinstance(master, bytes) else master
        self.reload_seconds = reload_seconds
        self._keys: dict[tuple[str, int], DataKey] = {}
        self._primary: dict[str, DataKey] = {}
        self._lock = threading.Lock()
        self.loaded_at = 0.0

    def ensure(self, session: Session) -> list[str]:
        """Create a first key for each purpose that has none. Returns the purposes created."""
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
        rows = session.execute(
            select(KeyringEntry).where(KeyringEntry.retired_at.is_(None))
        ).scalars()
        keys: dict[tuple[str, int], DataKey] = {}
        primary: dict[str, DataKey] = {}
        for entry in rows:
            dk = DataKey(
                entry.purpose,
                entry.version,
                unwrap(self.master, entry),
                entry.is_primary,
                entry.binds_rows,
            )
            keys[(entry.purpose, entry.version)] = dk
            if entry.is_primary:
                primary[entry.purpose] = dk
        with self._lock:
            self._keys, self._primary = keys, primary
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
            raise KeyringError(f"{purpose!r} key version {version} is unknown or retired") from None

    def versions(self, purpose: str) -> list[DataKey]:
        found = (k for k in self._keys.values() if k.purpose == purpose)
        return sorted(found, key=lambda k: k.version)


def add_version(session: Session, master: MasterKey, purpose: str, *, primary: bool = True) -> int:
    """A new version of ``purpose`` (primary unless ``primary=False``: then it only reads until
    ``set_primary``); the previous ones stay readable."""
    if purpose not in PURPOSES:
        from bizosctl.errors import InvalidInput

        raise InvalidInput(f"unknown key purpose {purpose!r}: choose one of {', '.join(PURPOSES)}")
    _lock_purpose(session, purpose)  # concurrent rotations of one purpose
    current = session.execute(
        select(func.max(KeyringEntry.version)).where(KeyringEntry.purpose == purpose)
    ).scalar_one()
    version = (current or 0) + 1
    if primary:
        session.execute(
            update(KeyringEntry).where(KeyringEntry.purpose == purpose).values(is_primary=False)
        )
    session.add(new_entry(master, purpose, version, primary=primary))
    session.flush()
    return version


def _lock_purpose(session: Session, purpose: str) -> None:
    """Serialise changes to one purpose's versions (rotations, staging) on the catalog."""
    session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(f"keyring:{purpose}", 0)))
    )


def staged_version(session: Session, purpose: str) -> tuple[int, float] | None:
    """The staged next version of ``purpose`` (live, not primary, newer than the primary) and
    its age in seconds by the catalog's clock, or None."""
    primary = (
        select(func.max(KeyringEntry.version))
        .where(KeyringEntry.purpose == purpose, KeyringEntry.is_primary)
        .scalar_subquery()
    )
    row = session.execute(
        select(
            KeyringEntry.version,
            func.extract("epoch", func.now() - KeyringEntry.created_at),
        )
        .where(
            KeyringEntry.purpose == purpose,
            KeyringEntry.is_primary.is_(False),
            KeyringEntry.retired_at.is_(None),
            KeyringEntry.version > func.coalesce(primary, 0),
        )
        .order_by(KeyringEntry.version.desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), max(0.0, float(row[1])))


def next_version(
    session: Session, master: MasterKey, purpose: str, *, fresh: bool = False
) -> tuple[int, float]:
    """The version a rotation of ``purpose`` switches to, and how long every process has been
    able to read it (seconds): the staged one, or (none staged, or ``fresh``: the staged key
    may be as compromised as the primary) a new read-only version, age 0. A staged key that
    ``fresh`` skips is retired at once: it never wrote or signed anything, and a leaked copy
    must not verify a forged token."""
    _lock_purpose(session, purpose)
    staged = staged_version(session, purpose)
    if staged is not None and not fresh:
        return staged
    if staged is not None:
        session.execute(
            update(KeyringEntry)
            .where(KeyringEntry.purpose == purpose, KeyringEntry.version == staged[0])
            .values(retired_at=func.now())
        )
    return add_version(session, master, purpose, primary=False), 0.0


def stage_next(session: Session, master: MasterKey, purpose: str) -> int:
    """Make sure ``purpose`` has a staged next version (read-only until a rotation makes it
    primary). Returns it."""
    _lock_purpose(session, purpose)
    staged = staged_version(session, purpose)
    if staged is not None:
        return staged[0]
    return add_version(session, master, purpose, primary=False)


def set_primary(session: Session, purpose: str, version: int) -> None:
    session.execute(
        update(KeyringEntry)
        .where(KeyringEntry.purpose == purpose)
        .values(is_primary=KeyringEntry.version == version)
    )
