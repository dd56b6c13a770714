"""The master key: ``BIZOS_MASTER_KEY`` (base64 of 32 bytes) or a 0600 key file.

It only wraps data keys (envelope encryption); it never encrypts data directly.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from bizosctl.config import Settings
from bizosctl.errors import ConfigError, KeyringError

KEY_BYTES = 32


def _decode(text: str, where: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode() + b"=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{where} is not base64") from exc
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"{where} must decode to {KEY_BYTES} bytes, not {len(raw)}")
    return raw


def encode(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def create_key_file(path: Path) -> bool:
    """Create a new random master key file (mode 0600). False when one exists already.

    ``O_EXCL|O_NOFOLLOW``: a symlink planted at ``path`` is never written through.
    """
    from bizosctl.home import create_private

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return create_private(path, (encode(secrets.token_bytes(KEY_BYTES)) + "\n").encode())


def key_file_mode(path: Path) -> int | None:
    """The key file's mode (a symlink shows as one: its mode is 0777, never the target's)."""
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return None


def load_master_key(settings: Settings) -> bytes:
    if settings.master_key is not None:
        return _decode(settings.master_key.get_secret_value(), "BIZOS_MASTER_KEY")
    from bizosctl.home import file_mode, open_private, read_fd

    path = settings.key_file
    # Opened once, without following a symlink; owner and mode are checked on the open
    # descriptor, so the file cannot be swapped between the check and the read.
    try:
        fd = open_private(path, what="master key file")
    except (FileNotFoundError, NotADirectoryError):
        raise KeyringError(
            f"no master key: {path} does not exist and BIZOS_MASTER_KEY is not set "
            "(run `bizosctl init`)"
        ) from None
    mode = file_mode(fd)
    if mode & 0o077:
        os.close(fd)
        raise KeyringError(f"master key file {path} has mode {mode:04o}; run chmod 600 {path}")
    return _decode(read_fd(fd).decode(errors="replace"), f"master key file {path}")


# -- master keys that wrap data keys --------------------------------------------------------
class MasterKey:
    """Wraps and unwraps data keys. ``id`` is a fingerprint recorded with each wrapped key."""

    id: str

    def wrap(self, aad: bytes, key: bytes) -> bytes:
        raise NotImplementedError

    def unwrap(self, aad: bytes, blob: bytes) -> bytes:
        raise NotImplementedError


class LocalMasterKey(MasterKey):
    """AES-256-GCM under a 32-byte key from ``BIZOS_MASTER_KEY`` or the key file."""

    def __init__(self, raw: bytes) -> None:
        import hashlib
        import hmac

        self._raw = raw
        self.id = "local:" + hmac.new(raw, b"bizos master key id", hashlib.sha256).hexdigest()[:16]

    def wrap(self, aad: bytes, key: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self._raw).encrypt(nonce, key, aad)

    def unwrap(self, aad: bytes, blob: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self._raw).decrypt(blob[:12], blob[12:], aad)


class KmsMasterKey(MasterKey):
    """AWS KMS (envelope encryption): data keys are encrypted by KMS, the master never leaves it.

    The associated data becomes the KMS encryption context, so a wrapped key only decrypts
    for its own purpose and version.
    """

    def __init__(
        self, key_id: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        import boto3

        self.key_id = key_id
        self.id = f"kms:{key_id}"
        self._client = boto3.client(
            "kms",
            endpoint_url=endpoint_url,
            region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )

    @staticmethod
    def _context(aad: bytes) -> dict[str, str]:
        return {"bizos": aad.decode()}

    def wrap(self, aad: bytes, key: bytes) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            out = self._client.encrypt(
                KeyId=self.key_id, Plaintext=key, EncryptionContext=self._context(aad)
            )
        except (BotoCoreError, ClientError) as exc:
            raise KeyringError(f"KMS key {self.key_id}: {exc}") from exc
        return bytes(out["CiphertextBlob"])

    def unwrap(self, aad: bytes, blob: bytes) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            out = self._client.decrypt(
                CiphertextBlob=blob, KeyId=self.key_id, EncryptionContext=self._context(aad)
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "InvalidCiphertextException":
                raise ValueError("wrong key or context") from exc
            raise KeyringError(f"KMS key {self.key_id}: {exc}") from exc
        except BotoCoreError as exc:
            raise KeyringError(f"KMS key {self.key_id}: {exc}") from exc
        return bytes(out["Plaintext"])


def load_master(settings: Settings) -> MasterKey:
    """The configured master key: KMS when ``BIZOS_KMS_KEY_ID`` is set, else the local key."""
    if settings.kms_key_id:
        return KmsMasterKey(settings.kms_key_id, endpoint_url=settings.kms_endpoint_url)
    return LocalMasterKey(load_master_key(settings))


def next_key_file(settings: Settings) -> Path:
    """Where `secrets rotate master-key` writes the new key before it becomes the key file."""
    return settings.key_file.with_name(settings.key_file.name + ".next")


def finish_interrupted_rotation(settings: Settings, error: KeyringError) -> bool:
    """A rotation killed between the catalog commit and the key file rename leaves the new
    key in ``master.key.next``: when that is the key the keyring expects (``error`` names it),
    install it. True when it did; the rotation's operation records it when it is resumed."""
    nxt = next_key_file(settings)
    if settings.master_key is not None or not nxt.exists():
        return False
    candidate = LocalMasterKey(
        load_master_key(settings.model_copy(update={"master_key_file": nxt}))
    )
    if candidate.id not in error.message:
        return False
    os.replace(nxt, settings.key_file)
    return True
