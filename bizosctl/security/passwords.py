"""Password hashing: bcrypt, 12 rounds (about a quarter of a second on one core), at most
``password_hash_concurrency`` at once per process (half the CPUs by default).

bcrypt reads at most 72 bytes; longer passwords are refused rather than silently cut (two
passwords sharing their first 72 bytes would otherwise be the same password).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import bcrypt

from bizosctl.errors import InvalidInput, TooManyRequests

ROUNDS = 12
MIN_CHARS = 10
MAX_BYTES = 72
#: Checked against when the e-mail is unknown (or has no password), so that answer takes as
#: long as a wrong password does.
_DUMMY = bcrypt.hashpw(b"no such member", bcrypt.gensalt(ROUNDS))


_slots: tuple[int, threading.BoundedSemaphore] | None = None
_slots_lock = threading.Lock()


def _hash_slots() -> threading.BoundedSemaphore:
    """The process's bcrypt slots, made again when the setting changes (tests)."""
    global _slots
    from bizosctl.config import get_settings

    n = get_settings().password_hash_concurrency or max(1, (os.cpu_count() or 2) // 2)
    with _slots_lock:
        if _slots is None or _slots[0] != n:
            _slots = (n, threading.BoundedSemaphore(n))
        return _slots[1]


@contextlib.contextmanager
def hashing_slot() -> Iterator[None]:
    """One of the few bcrypt slots: a burst of logins queues here and leaves the other CPUs
    to the rest of the requests; a login that waits too long gets a 429."""
    from bizosctl.config import get_settings

    slots = _hash_slots()
    wait = get_settings().password_hash_wait
    if not slots.acquire(timeout=wait):
        raise TooManyRequests("too many password checks at once: try again", retry_after=1)
    try:
        yield
    finally:
        slots.release()


def check_new_password(password: str) -> bytes:
    raw = password.encode()
    if len(password) < MIN_CHARS:
        raise InvalidInput(f"a password has at least {MIN_CHARS} characters")
    if len(raw) > MAX_BYTES:
        raise InvalidInput(f"a password has at most {MAX_BYTES} bytes (UTF-8)")
    return raw


def hash_password(password: str) -> str:
    raw = check_new_password(password)
    with hashing_slot():
        return bcrypt.hashpw(raw, bcrypt.gensalt(ROUNDS)).decode()


def verify_password(password: str, hashed: str | None) -> bool:
    """Constant work whether or not there is a hash to compare with."""
    raw = password.encode()
    with hashing_slot():
        if hashed is None or len(raw) > MAX_BYTES:
            bcrypt.checkpw(raw[:MAX_BYTES], _DUMMY)
            return False
        return bcrypt.checkpw(raw, hashed.encode())
