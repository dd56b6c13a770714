"""Versioned data keys per purpose, wrapped by the master key, kept in the catalog.

Purposes: ``pii`` (field encryption and blind indexes), ``jwt`` (session signing keys, one
``kid`` per version), ``webhook`` (reserved for signing material) and ``db-credentials``
(passwords and URLs in the catalog). One version per purpose is primary (it writes); every
version that is not retired still reads. A data key exists in clear only in memory.

A version's life: staged (reads, not yet primary), primary, demoted (``demoted_at``: it stops
writing or signing, still reads), retired (``retired_at``: nothing reads with it; a JWT key
once its last token has expired, ``retire_after``), destroyed (``destroyed_at``: its wrapped
bytes are deleted from the catalog, the row stays as a record). Retired PII and credentials
keys are destroyed after ``BIZOS_KEY_DESTROY_AFTER`` (a grace period in which a restore from
backup still reads); a retired JWT key at once, since no token it signed is still valid.
"""

from __future__ import annotations

import secrets

from sqlalchemy import ColumnElement, and_, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from bizosctl.catalog.models import KeyringEntry
from bizosctl.security.datakeys import (
    DESTROY_AT_RETIREMENT,
    PURPOSES,
    DataKey,
    Keyring,
    _aad,
    unwrap,
)
from bizosctl.security.masterkey import MasterKey

__all__ = [
    "DESTROY_AT_RETIREMENT",
    "PURPOSES",
    "DataKey",
    "Keyring",
    "_aad",
    "unwrap",
]


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
        _demote(session, purpose, keep=version)
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
    """Make ``version`` the primary of ``purpose``; the previous primary is demoted (it stops
    writing or signing now: ``demoted_at``). Idempotent."""
    _demote(session, purpose, keep=version)
    session.execute(
        update(KeyringEntry)
        .where(KeyringEntry.purpose == purpose, KeyringEntry.version == version)
        .values(is_primary=True)
    )


def _demote(session: Session, purpose: str, *, keep: int) -> None:
    session.execute(
        update(KeyringEntry)
        .where(
            KeyringEntry.purpose == purpose,
            KeyringEntry.is_primary,
            KeyringEntry.version != keep,
        )
        .values(is_primary=False, demoted_at=func.now())
    )


# -- retirement and destruction ---------------------------------------------------------------
def _due_to_retire() -> ColumnElement[bool]:
    return and_(
        KeyringEntry.retired_at.is_(None),
        KeyringEntry.is_primary.is_(False),
        KeyringEntry.retire_after.is_not(None),
        KeyringEntry.retire_after <= func.now(),
    )


def _due_to_destroy(destroy_after_s: float | None) -> ColumnElement[bool]:
    at_once = KeyringEntry.purpose.in_(DESTROY_AT_RETIREMENT)
    when: ColumnElement[bool] = at_once
    if destroy_after_s is not None:
        grace = func.make_interval(0, 0, 0, 0, 0, 0, float(destroy_after_s))
        when = or_(at_once, KeyringEntry.retired_at <= func.now() - grace)
    return and_(
        KeyringEntry.retired_at.is_not(None),
        KeyringEntry.destroyed_at.is_(None),
        KeyringEntry.is_primary.is_(False),
        when,
    )


def _only(purposes: tuple[str, ...] | None) -> ColumnElement[bool]:
    return KeyringEntry.purpose.in_(purposes if purposes is not None else PURPOSES)


def _rows(cond: ColumnElement[bool], skip_locked: bool) -> ColumnElement[bool]:
    """``cond``, or (``skip_locked``) the rows matching it that no other transaction holds."""
    if not skip_locked:
        return cond
    free = (
        select(KeyringEntry.purpose, KeyringEntry.version)
        .where(cond)
        .with_for_update(skip_locked=True)
    )
    return tuple_(KeyringEntry.purpose, KeyringEntry.version).in_(free)


def retire_due(
    session: Session, *, purposes: tuple[str, ...] | None = None, skip_locked: bool = False
) -> list[tuple[str, int]]:
    """Retire every non-primary key whose ``retire_after`` has passed. Returns them."""
    rows = session.execute(
        update(KeyringEntry)
        .where(_rows(and_(_due_to_retire(), _only(purposes)), skip_locked))
        .values(retired_at=func.now())
        .returning(KeyringEntry.purpose, KeyringEntry.version)
    ).all()
    return sorted((p, v) for p, v in rows)


def retire(session: Session, purpose: str, *, keep: int) -> list[int]:
    """Retire every live version of ``purpose`` but ``keep`` (at once). Returns them."""
    return sorted(
        session.execute(
            update(KeyringEntry)
            .where(
                KeyringEntry.purpose == purpose,
                KeyringEntry.version != keep,
                KeyringEntry.retired_at.is_(None),
            )
            .values(retired_at=func.now(), is_primary=False)
            .returning(KeyringEntry.version)
        ).scalars()
    )


def destroy_due(
    session: Session,
    *,
    destroy_after_s: float | None,
    purposes: tuple[str, ...] | None = None,
    skip_locked: bool = False,
) -> list[tuple[str, int]]:
    """Delete the wrapped bytes of retired keys past their grace period (``destroy_after_s``;
    JWT keys at once; None: only those destroyed at retirement). The row stays, with
    ``destroyed_at``. Returns them."""
    rows = session.execute(
        update(KeyringEntry)
        .where(_rows(and_(_due_to_destroy(destroy_after_s), _only(purposes)), skip_locked))
        .values(wrapped_key=None, destroyed_at=func.now())
        .returning(KeyringEntry.purpose, KeyringEntry.version)
    ).all()
    return sorted((p, v) for p, v in rows)


def keys_due(session: Session, *, destroy_after_s: float) -> tuple[list[tuple[str, int]], ...]:
    """What :func:`retire_due` then :func:`destroy_due` would do now: (retire, destroy).
    Changes nothing."""
    retire_now = select(KeyringEntry.purpose, KeyringEntry.version).where(_due_to_retire())
    destroy_now = select(KeyringEntry.purpose, KeyringEntry.version).where(
        or_(
            _due_to_destroy(destroy_after_s),
            and_(_due_to_retire(), KeyringEntry.purpose.in_(DESTROY_AT_RETIREMENT)),
        )
    )
    return (
        sorted((p, v) for p, v in session.execute(retire_now).all()),
        sorted((p, v) for p, v in session.execute(destroy_now).all()),
    )
