"""Versioned data keys per purpose, wrapped by the master key, kept in the catalog.

Purposes: ``pii`` (field encryption and blind indexes) and ``db-credentials`` (passwords and
URLs in the catalog). One version per purpose is primary (writes); every version that is not
retired still decrypts.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bizosctl.catalog.models import KeyringEntry
from bizosctl.errors import KeyringError

PURPOSES = ("pii", "db-credentials")
NONCE = 12


@dataclass(frozen=True)
class DataKey:
    purpose: str
    version: int
    key: bytes
    primary: bool


def _aad(purpose: str, version: int) -> bytes:
    return f"bizos-keyring:{purpose}:{version}".encode()


def wrap(master: bytes, purpose: str, version: int, key: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE)
    return nonce + AESGCM(master).encrypt(nonce, key, _aad(purpose, version))


def unwrap(master: bytes, entry: KeyringEntry) -> bytes:
    blob = entry.wrapped_key
    try:
        return AESGCM(master).decrypt(
            blob[:NONCE], blob[NONCE:], _aad(entry.purpose, entry.version)
        )
    except InvalidTag as exc:
        raise KeyringError(
            f"the master key does not open the keyring ({entry.purpose} v{entry.version}): "
            "wrong BIZOS_MASTER_KEY or key file"
        ) from exc


class Keyring:
    """Unwrapped data keys of one catalog, loaded once per process."""

    def __init__(self, master: bytes) -> None:
        self._master = master
        self._keys: dict[tuple[str, int], DataKey] = {}
        self._primary: dict[str, DataKey] = {}
        self._lock = threading.Lock()

    def ensure(self, session: Session) -> None:
        """Create a first key for each purpose that has none (call once, in ``init``)."""
        have = set(session.execute(select(KeyringEntry.purpose)).scalars())
        for purpose in PURPOSES:
            if purpose not in have:
                key = secrets.token_bytes(32)
                session.add(
                    KeyringEntry(
                        purpose=purpose,
                        version=1,
                        wrapped_key=wrap(self._master, purpose, 1, key),
                        is_primary=True,
                    )
                )
        session.flush()

    def load(self, session: Session) -> None:
        rows = session.execute(
            select(KeyringEntry).where(KeyringEntry.retired_at.is_(None))
        ).scalars()
        keys: dict[tuple[str, int], DataKey] = {}
        primary: dict[str, DataKey] = {}
        for entry in rows:
            dk = DataKey(
                entry.purpose, entry.version, unwrap(self._master, entry), entry.is_primary
            )
            keys[(entry.purpose, entry.version)] = dk
            if entry.is_primary:
                primary[entry.purpose] = dk
        with self._lock:
            self._keys, self._primary = keys, primary

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
        return sorted(
            (k for k in self._keys.values() if k.purpose == purpose), key=lambda k: k.version
        )


def set_primary(session: Session, purpose: str, version: int) -> None:
    session.execute(
        update(KeyringEntry)
        .where(KeyringEntry.purpose == purpose)
        .values(is_primary=KeyringEntry.version == version)
    )
