"""Member sessions: log in with e-mail and password, refresh, log out.

- **Login** finds the member by the e-mail's blind index (every live version), checks the
  bcrypt hash outside any transaction (a quarter of a second that holds no connection), and
  answers one message for an unknown e-mail and a wrong password, after the same work.
- **Throttle**: failures are counted per e-mail index, known or not. From the
  ``SLOW_AFTER``-th failure on, the next attempt must wait (1 s, 2 s, 4 s, ... up to a minute:
  429 with ``Retry-After``); at ``LOCK_AFTER`` failures the address is locked for
  ``LOCK_SECONDS``. A success clears the count.
- **Tokens**: a short-lived access JWT (EdDSA, :mod:`bizosctl.security.jwt`) naming the member
  (``sub``), the tenant and the session (``sid``), and an opaque refresh token
  ``bzr.<tenant>.<secret>`` stored as its SHA-256. Each refresh replaces the refresh token; a
  replaced one used again revokes the whole session (someone holds a copy), and so every
  token of it. Logout revokes the session. Access tokens of a revoked session are refused by
  :func:`check_session`, which the API runs on every request of a member.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import uuid

from pydantic import BaseModel
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control
from bizosctl.errors import NotFound, TooManyRequests, Unauthorized
from bizosctl.security.fields import blind_index
from bizosctl.security.jwt import issue_token
from bizosctl.security.passwords import verify_password
from bizosctl.tenancy.members import find_by_email
from bizosctl.tenancy.router import tenant_session
from tenant_schema.models import AuthSession, LoginThrottle, Member, RefreshToken

SLOW_AFTER = 3
LOCK_AFTER = 10
LOCK_SECONDS = 15 * 60
MAX_DELAY = 60
BAD_LOGIN = "invalid e-mail or password"
BAD_REFRESH = "invalid or expired refresh token"
REFRESH_RE = re.compile(r"bzr\.([a-z][a-z0-9-]{2,39})\.([A-Za-z0-9_-]{43})")


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int
    session_id: uuid.UUID


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _wait_for(row: LoginThrottle | None, now: dt.datetime) -> float:
    """Seconds the next attempt must wait (0: go ahead)."""
    if row is None:
        return 0.0
    if row.locked_until is not None and row.locked_until > now:
        return (row.locked_until - now).total_seconds()
    if row.failures >= SLOW_AFTER and row.last_failed_at is not None:
        delay = float(min(MAX_DELAY, 2 ** (row.failures - SLOW_AFTER)))
        return max(0.0, delay - (now - row.last_failed_at).total_seconds())
    return 0.0


def login(
    ctl: Control, *, tenant: str, email: str, password: str, ttl: int | None = None
) -> TokenPair:
    """Log a member in; :class:`Unauthorized` (one message) or :class:`TooManyRequests`."""
    try:
        route = ctl.route(tenant)
    except NotFound:
        verify_password(password, None)  # the same work as a wrong password
        raise Unauthorized(BAD_LOGIN) from None
    tid = route.tenant_id
    email = email.strip().lower()
    key = blind_index(ctl.keyring, email)
    with tenant_session(ctl, tenant, actor="auth:login") as s:
        throttle = s.get(LoginThrottle, (tid, key))
        wait = _wait_for(throttle, _now())
        member = find_by_email(ctl, s, email)
        member_id = member.id if member is not None and member.status == "active" else None
        hashed = member.password_hash if member_id is not None and member is not None else None
    if wait > 0:
        raise TooManyRequests(
            "too many failed logins for this e-mail: wait before trying again", retry_after=wait
        )
    ok = verify_password(password, hashed) and member_id is not None
    with tenant_session(ctl, tenant, actor="auth:login") as s:
        if not ok:
            record_failure(s, tenant_id=tid, key=key)
        else:
            s.execute(delete(LoginThrottle).where(LoginThrottle.email_bidx == key))
            assert member_id is not None
            pair = _open_session(ctl, s, tenant=tenant, tenant_id=tid, member_id=member_id, ttl=ttl)
    if not ok:
        raise Unauthorized(BAD_LOGIN)
    return pair


def record_failure(s: Session, *, tenant_id: uuid.UUID, key: str) -> None:
    """Count a failed login of e-mail index ``key``; lock it at ``LOCK_AFTER`` failures."""
    stmt = insert(LoginThrottle).values(
        tenant_id=tenant_id, email_bidx=key, failures=1, last_failed_at=func.now()
    )
    s.execute(
        stmt.on_conflict_do_update(
            index_elements=[LoginThrottle.tenant_id, LoginThrottle.email_bidx],
            set_={"failures": LoginThrottle.failures + 1, "last_failed_at": func.now()},
        )
    )
    # the lock starts the count again: after it, SLOW_AFTER more tries before the slow-down
    s.execute(
        update(LoginThrottle)
        .where(LoginThrottle.email_bidx == key, LoginThrottle.failures >= LOCK_AFTER)
        .values(locked_until=func.now() + dt.timedelta(seconds=LOCK_SECONDS), failures=0)
    )


def _new_refresh(tenant: str) -> tuple[str, str]:
    secret = secrets.token_urlsafe(32)
    return f"bzr.{tenant}.{secret}", _hash(secret)


def _access(
    ctl: Control, *, tenant: str, member_id: uuid.UUID, session_id: uuid.UUID, ttl: int | None
) -> tuple[str, int]:
    lifetime = ttl or ctl.settings.access_token_ttl_seconds
    token = issue_token(
        ctl,
        subject=str(member_id),
        tenant=tenant,
        ttl_seconds=lifetime,
        claims={"sid": str(session_id)},
    )
    return token, lifetime


def _open_session(
    ctl: Control,
    s: Session,
    *,
    tenant: str,
    tenant_id: uuid.UUID,
    member_id: uuid.UUID,
    ttl: int | None,
    method: str = "password",
) -> TokenPair:
    sid = uuid.uuid4()
    expires = _now() + dt.timedelta(seconds=ctl.settings.refresh_token_ttl_seconds)
    s.add(
        AuthSession(
            tenant_id=tenant_id, id=sid, member_id=member_id, method=method, expires_at=expires
        )
    )
    s.flush()
    refresh, digest = _new_refresh(tenant)
    s.add(RefreshToken(tenant_id=tenant_id, session_id=sid, token_hash=digest))
    access, lifetime = _access(ctl, tenant=tenant, member_id=member_id, session_id=sid, ttl=ttl)
    return TokenPair(
        access_token=access, refresh_token=refresh, expires_in=lifetime, session_id=sid
    )


def open_session(ctl: Control, *, tenant: str, member_id: uuid.UUID, method: str) -> TokenPair:
    """A new session for a member who proved who they are another way (OAuth)."""
    route = ctl.route(tenant)
    with tenant_session(ctl, tenant, actor=f"auth:{method}") as s:
        return _open_session(
            ctl,
            s,
            tenant=tenant,
            tenant_id=route.tenant_id,
            member_id=member_id,
            ttl=None,
            method=method,
        )


def refresh(ctl: Control, token: str) -> TokenPair:
    """Replace a refresh token with a new pair. A token used before revokes its session."""
    match = REFRESH_RE.fullmatch(token)
    if match is None:
        raise Unauthorized(BAD_REFRESH)
    tenant, secret = match.groups()
    try:
        route = ctl.route(tenant)
    except NotFound:
        raise Unauthorized(BAD_REFRESH) from None
    reused = False
    pair: TokenPair | None = None
    with tenant_session(ctl, tenant, actor="auth:refresh") as s:
        row = s.execute(
            select(RefreshToken, AuthSession)
            .join(AuthSession, AuthSession.id == RefreshToken.session_id)
            .where(RefreshToken.token_hash == _hash(secret))
            .with_for_update()
        ).one_or_none()
        if row is not None:
            rt, sess = row
            now = _now()
            if rt.used_at is not None:
                reused = True
                if sess.revoked_at is None:
                    sess.revoked_at = now
                    sess.revoked_reason = "refresh token reused"
            elif sess.revoked_at is None and sess.expires_at > now:
                rt.used_at = now
                new, digest = _new_refresh(tenant)
                s.add(
                    RefreshToken(tenant_id=route.tenant_id, session_id=sess.id, token_hash=digest)
                )
                access, lifetime = _access(
                    ctl, tenant=tenant, member_id=sess.member_id, session_id=sess.id, ttl=None
                )
                pair = TokenPair(
                    access_token=access, refresh_token=new, expires_in=lifetime, session_id=sess.id
                )
    if reused:  # committed above: the revocation stands although the request fails
        raise Unauthorized("this refresh token was used before: the session is revoked")
    if pair is None:
        raise Unauthorized(BAD_REFRESH)
    return pair


def revoke(s: Session, *, session_id: uuid.UUID, reason: str) -> bool:
    """End a session (logout); False when it was not live."""
    done = s.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def check_session(s: Session, *, session_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    """The member behind a live session (an access token's ``sid``); Unauthorized when the
    session was revoked or has expired, or the member is gone or disabled."""
    row = s.execute(
        select(AuthSession.revoked_at, AuthSession.expires_at, Member)
        .join(Member, Member.id == AuthSession.member_id)
        .where(AuthSession.id == session_id, AuthSession.member_id == member_id)
    ).one_or_none()
    if row is None or row[0] is not None or row[1] <= _now():
        raise Unauthorized("the session has ended: log in again")
    if row[2].status != "active":
        raise Unauthorized("this member cannot log in")
    member: Member = row[2]
    return member
