"""AES-256-GCM field encryption and keyed blind indexes.

A value is ``bz1.<version>.<base64url(nonce | ciphertext+tag)>``: the key version travels with
it, so rotation can re-encrypt lazily and reads accept any live version. The associated data
binds a value to its tenant, table and column: a ciphertext copied to another row, column or
tenant does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bizosctl.errors import DecryptionFailed
from bizosctl.security.keyring import Keyring

PREFIX = "bz1"
NONCE = 12


def _aad(tenant_id: uuid.UUID | str, table: str, column: str) -> bytes:
    return f"{tenant_id}/{table}/{column}".encode()


def encrypt(
    keyring: Keyring,
    value: str,
    *,
    tenant_id: uuid.UUID | str,
    table: str,
    column: str,
    purpose: str = "pii",
) -> str:
    dk = keyring.primary(purpose)
    nonce = secrets.token_bytes(NONCE)
    ct = AESGCM(dk.key).encrypt(nonce, value.encode(), _aad(tenant_id, table, column))
    return f"{PREFIX}.{dk.version}.{base64.urlsafe_b64encode(nonce + ct).decode()}"


def key_version(token: str) -> int:
    try:
        prefix, version, _ = token.split(".", 2)
        if prefix != PREFIX:
            raise ValueError(prefix)
        return int(version)
    except ValueError as exc:
        raise DecryptionFailed("not an encrypted value (expected bz1.<version>.<data>)") from exc


def decrypt(
    keyring: Keyring,
    token: str,
    *,
    tenant_id: uuid.UUID | str,
    table: str,
    column: str,
    purpose: str = "pii",
) -> str:
    version = key_version(token)
    dk = keyring.get(purpose, version)
    try:
        blob = base64.urlsafe_b64decode(token.split(".", 2)[2])
        plain = AESGCM(dk.key).decrypt(blob[:NONCE], blob[NONCE:], _aad(tenant_id, table, column))
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise DecryptionFailed(
            f"{table}.{column}: the value does not decrypt (tampered, or bound to another "
            "tenant, table or column)"
        ) from exc
    return plain.decode()


@functools.lru_cache(maxsize=16)
def _index_key(key: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"bizos blind index").derive(key)


def normalize_email(value: str) -> str:
    return value.strip().lower()


def blind_index(keyring: Keyring, value: str, *, version: int | None = None) -> str:
    """Keyed hash for equality lookups (login by e-mail, GDPR search), not reversible.

    It does not depend on the tenant, so one person can be found across tenants.
    """
    dk = keyring.primary("pii") if version is None else keyring.get("pii", version)
    digest = hmac.new(_index_key(dk.key), value.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{dk.version}:{digest}"


def blind_indexes(keyring: Keyring, value: str) -> list[str]:
    """The value's index under every live key version (lookups during a rotation)."""
    return [blind_index(keyring, value, version=dk.version) for dk in keyring.versions("pii")]


class Recrypter:
    """Re-encrypts values to one key version, fast: cipher objects, associated data and index
    keys are cached, and nonces are drawn from the OS in bulk. Produces exactly what
    :func:`decrypt`, :func:`encrypt` and :func:`blind_index` would."""

    def __init__(self, keyring: Keyring, version: int, purpose: str = "pii") -> None:
        self.keyring, self.version, self.purpose = keyring, version, purpose
        self.prefix = f"{PREFIX}.{version}."
        self._ciphers: dict[int, AESGCM] = {}
        self._aad: dict[tuple[str, str, str], bytes] = {}
        self._nonces = b""
        self._index_key = _index_key(keyring.get(purpose, version).key)

    def _cipher(self, version: int) -> AESGCM:
        c = self._ciphers.get(version)
        if c is None:
            c = self._ciphers[version] = AESGCM(self.keyring.get(self.purpose, version).key)
        return c

    def _aad_for(self, tenant_id: str, table: str, column: str) -> bytes:
        key = (tenant_id, table, column)
        aad = self._aad.get(key)
        if aad is None:
            aad = self._aad[key] = _aad(tenant_id, table, column)
        return aad

    def _nonce(self) -> bytes:
        if len(self._nonces) < NONCE:
            self._nonces = secrets.token_bytes(NONCE * 4096)
        nonce, self._nonces = self._nonces[:NONCE], self._nonces[NONCE:]
        return nonce

    def plain(self, token: str, *, tenant_id: str, table: str, column: str) -> bytes:
        version = key_version(token)
        try:
            blob = base64.urlsafe_b64decode(token.split(".", 2)[2])
            return self._cipher(version).decrypt(
                blob[:NONCE], blob[NONCE:], self._aad_for(tenant_id, table, column)
            )
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise DecryptionFailed(f"{table}.{column}: the value does not decrypt") from exc

    def seal(self, plain: bytes, *, tenant_id: str, table: str, column: str) -> str:
        nonce = self._nonce()
        ct = self._cipher(self.version).encrypt(
            nonce, plain, self._aad_for(tenant_id, table, column)
        )
        return self.prefix + base64.urlsafe_b64encode(nonce + ct).decode()

    def index(self, value: str) -> str:
        return (
            f"{self.version}:" + hmac.digest(self._index_key, value.encode(), "sha256").hex()[:32]
        )
