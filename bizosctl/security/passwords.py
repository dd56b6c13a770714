"""Password hashing: bcrypt, 12 rounds (about a quarter of a second on one core).

bcrypt reads at most 72 bytes; longer passwords are refused rather than silently cut (two
passwords sharing their first 72 bytes would otherwise be the same password).
"""

from __future__ import annotations

import bcrypt

from bizosctl.errors import InvalidInput

ROUNDS = 12
MIN_CHARS = 10
MAX_BYTES = 72
#: Checked against when the e-mail is unknown (or has no password), so that answer takes as
#: long as a wrong password does.
_DUMMY = bcrypt.hashpw(b"no such member", bcrypt.gensalt(ROUNDS))


def check_new_password(password: str) -> bytes:
    raw = password.encode()
    if len(password) < MIN_CHARS:
        raise InvalidInput(f"a password has at least {MIN_CHARS} characters")
    if len(raw) > MAX_BYTES:
        raise InvalidInput(f"a password has at most {MAX_BYTES} bytes (UTF-8)")
    return raw


def hash_password(password: str) -> str:
    return bcrypt.hashpw(check_new_password(password), bcrypt.gensalt(ROUNDS)).decode()


def verify_password(password: str, hashed: str | None) -> bool:
    """Constant work whether or not there is a hash to compare with."""
    raw = password.encode()
    if hashed is None or len(raw) > MAX_BYTES:
        bcrypt.checkpw(raw[:MAX_BYTES], _DUMMY)
        return False
    return bcrypt.checkpw(raw, hashed.encode())
