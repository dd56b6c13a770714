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
    """Create a new random master key file (mode 0600). False when one exists already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(encode(secrets.token_bytes(KEY_BYTES)) + "\n")
    return True


def key_file_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def load_master_key(settings: Settings) -> bytes:
    if settings.master_key is not None:
        return _decode(settings.master_key.get_secret_value(), "BIZOS_MASTER_KEY")
    path = settings.key_file
    mode = key_file_mode(path)
    if mode is None:
        raise KeyringError(
            f"no master key: {path} does not exist and BIZOS_MASTER_KEY is not set "
            "(run `bizosctl init`)"
        )
    if mode & 0o077:
        raise KeyringError(f"master key file {path} has mode {mode:04o}; run chmod 600 {path}")
    return _decode(path.read_text(), f"master key file {path}")
