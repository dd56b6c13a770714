"""AES-256-GCM field encryption and keyed blind indexes.

A value is ``bz1.<version>.<base64url(nonce | ciphertext+tag)>``: the key version travels with
it, so rotation can re-encrypt lazily and reads accept any live version. The associated data
binds a value to its tenant, table and column and, under a key version that binds rows (every
``pii`` version made since catalog revision 0005), to its row (the row's ``id``): a ciphertext
copied to another row, column or tenant does not decrypt. Values written under an older
version are bound to tenant, table and column only, until ``secrets rotate pii`` re-encrypts
them under a binding version (``secrets check`` and ``doctor`` say while the primary does not
bind).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Collection, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bizosctl.errors import DecryptionFailed, KeyringError
from bizosctl.security.datakeys import DataKey, Keyring

PREFIX = "bz1"
NONCE = 12
#: The column naming a row in the associated data (every table with encrypted columns has it)
ROW_KEY = "id"


def _aad(tenant_id: uuid.UUID | str, table: str, column: str) -> bytes:
    return f"{tenant_id}/{table}/{column}".encode()


def _row_aad(
    dk: DataKey, aad: bytes, table: str, column: str, row: uuid.UUID | str | None
) -> bytes:
    if not dk.binds_rows:
        return aad
    if row is None:
        raise DecryptionFailed(
            f"{table}.{column}: {dk.purpose} key v{dk.version} binds values to their row: "
            "pass the row's id"
        )
    return aad + b"/" + str(row).encode()


def encrypt(
    keyring: Keyring,
    value: str,
    *,
    tenant_id: uuid.UUID | str,
    table: str,
    column: str,
    row: uuid.UUID | str | None = None,
    purpose: str = "pii",
) -> str:
    """Encrypt ``value`` for one place: tenant, table, column and (under a key version that
    binds rows) ``row``, the row's ``id``."""
    dk = keyring.primary(purpose)
    nonce = secrets.token_bytes(NONCE)
    aad = _row_aad(dk, _aad(tenant_id, table, column), table, column, row)
    ct = AESGCM(dk.key).encrypt(nonce, value.encode(), aad)
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
    row: uuid.UUID | str | None = None,
    purpose: str = "pii",
) -> str:
    """The clear value; DecryptionFailed when it was not encrypted for this tenant, table,
    column and (key versions that bind rows) ``row``, or was changed."""
    version = key_version(token)
    dk = keyring.get(purpose, version)
    aad = _row_aad(dk, _aad(tenant_id, table, column), table, column, row)
    try:
        blob = base64.urlsafe_b64decode(token.split(".", 2)[2])
        plain = AESGCM(dk.key).decrypt(blob[:NONCE], blob[NONCE:], aad)
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise DecryptionFailed(
            f"{table}.{column}: the value does not decrypt (tampered, or bound to another "
            "tenant, table, column or row)"
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
    """Re-encrypts values to one key version in bulk, fast: one tight loop per batch with the
    cipher objects and the index key's HMAC states cached, base64 straight
    through ``binascii`` and the batch's nonces drawn from the OS at once. Produces exactly
    what :func:`encrypt` and :func:`blind_index` would, and accepts what :func:`decrypt`
    accepts (a test holds it to that)."""

    _TO_STD = bytes.maketrans(b"-_", b"+/")
    _TO_URLSAFE = bytes.maketrans(b"+/", b"-_")

    def __init__(
        self, keys: Mapping[int, bytes], version: int, binds: Collection[int] = ()
    ) -> None:
        """``keys``: every live version's key (a worker process gets them this way);
        ``binds``: the versions among them that bind values to their row."""
        self.keys, self.version = dict(keys), version
        self.prefix = f"{PREFIX}.{version}."
        self._binds = frozenset(str(v) for v in binds)
        self.binds_rows = version in binds
        self._decrypt: dict[str, Callable[[bytes, bytes, bytes], bytes]] = {}
        self._encrypt = AESGCM(self._key(version)).encrypt
        # HMAC-SHA256 by hand: the inner and outer states after the padded key are copied per
        # value instead of keying a new HMAC (a third of the cost).
        key = _index_key(self._key(version)).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._index_prefix = f"{version}:"

    def _key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise KeyringError(f"'pii' key version {version} is unknown or retired") from None

    def _decryptor(self, version: str) -> Callable[[bytes, bytes, bytes], bytes]:
        if not (version.isascii() and version.isdigit()):
            raise ValueError(version)
        fn = self._decrypt[version] = AESGCM(self._key(int(version))).decrypt
        return fn

    def aad(self, tenant_id: str, table: str, column: str) -> bytes:
        """The associated data of a value (callers keep it per tenant for a batch)."""
        return _aad(tenant_id, table, column)

    @staticmethod
    def row_suffix(row: str) -> bytes:
        """What a version that binds rows appends to :meth:`aad` for the row ``row``."""
        return b"/" + row.encode()

    def recrypt(self, items: list[tuple[str, bytes, bytes]]) -> list[tuple[str, bytes]]:
        """``(token, associated data, row suffix)`` triples to ``(token under this version,
        clear bytes)``; the suffix (:meth:`row_suffix`) joins the associated data under the
        versions that bind rows.

        Raises :class:`DecryptionFailed` naming the first value that does not decrypt and
        :class:`KeyringError` for one under an unknown or retired version.
        """
        decryptors, encrypt, prefix = self._decrypt, self._encrypt, self.prefix
        binds, binds_new = self._binds, self.binds_rows
        a2b, b2a = binascii.a2b_base64, binascii.b2a_base64
        to_std, to_urlsafe = self._TO_STD, self._TO_URLSAFE
        nonces = secrets.token_bytes(NONCE * len(items))
        out = []
        at = 0
        token, aad = "", b""
        try:
            for token, aad, row in items:
                head, version, data = token.split(".", 2)
                if head != PREFIX:
                    raise ValueError(head)
                decrypt = decryptors.get(version) or self._decryptor(version)
                blob = a2b(data.encode().translate(to_std))
                clear = decrypt(blob[:NONCE], blob[NONCE:], aad + row if version in binds else aad)
                nonce = nonces[at : at + NONCE]
                at += NONCE
                sealed = b2a(
                    nonce + encrypt(nonce, clear, aad + row if binds_new else aad), newline=False
                )
                out.append((prefix + sealed.translate(to_urlsafe).decode(), clear))
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise DecryptionFailed(
                f"{aad.decode(errors='replace')}: a value does not decrypt (tampered, or bound "
                "to another tenant, table, column or row)"
            ) from exc
        return out

    def index(self, value: str) -> str:
        inner = self._inner.copy()
        inner.update(value.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return self._index_prefix + outer.hexdigest()[:32]
