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
