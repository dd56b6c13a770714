"""The API's per-process cache of API key records (``BIZOS_API_AUTH_CACHE_SECONDS``).

Every API request with a key used to read the key, its tenant and the tenant's route from the
catalog. A worker now keeps what it read (the key's record with its secret's hash, the
tenant's status and route) for a few seconds; the secret is still hashed and compared, in
constant time, against the kept hash on every request, and an expiry or the once-a-minute
``last_used_at`` write is checked as before. Only a successful authentication is kept.

What changes a key or its tenant (a revocation, a rotation, a tenant's status, a move, a
route or login role switch) calls :func:`auth_changed` in its catalog transaction: a NOTIFY
on :data:`CHANNEL`, delivered at commit to one listening connection per worker process
(a daemon thread), which drops the entries concerned; the caller's own process drops them
too, right after the commit. While that connection is down (not yet up, lost, being
re-established) the cache is bypassed and emptied: notifications sent meanwhile are never
seen. A listener that hangs without noticing is what the time limit bounds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from bizosctl.catalog.control import Control, RouteInfo
    from bizosctl.security.apikeys import ApiKeyPublic

log = logging.getLogger("bizosctl.api")

#: The catalog's NOTIFY channel; payloads ``k:<prefix>``, ``t:<tenant id>`` or ``*`` (all).
CHANNEL = "bizos_auth"
#: What the listening connection is called in ``pg_stat_activity``.
LISTENER_NAME = "bizosctl-auth-listener"
#: Seconds between two tries to (re)connect the listener.
RECONNECT_S = 0.5
#: Entries kept at most (a worker serving more keys reads the rest each time).
MAX_ENTRIES = 10_000

_caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()


@dataclasses.dataclass(frozen=True)
class Entry:
    secret_hash: str
    key: ApiKeyPublic
    route: RouteInfo
    loaded: float  # time.monotonic()


class KeyCache:
    """One process's cache for one control plane (see the module)."""

    def __init__(self, ctl: Control, ttl: float) -> None:
        self.ctl = ctl
        self.ttl = ttl
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        #: Bumped by every invalidation: a read that started before one is not kept.
        self.epoch = 0
        self.listening = False
        self._pid: int | None = None
        self._stop = threading.Event()
        _caches.add(self)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, prefix: str) -> Entry | None:
        self._ensure_listener()
        if not self.listening:
            return None
        entry = self._entries.get(prefix)
        if entry is None:
            return None
        if time.monotonic() - entry.loaded >= self.ttl:
            with self._lock:
                if self._entries.get(prefix) is entry:
                    del self._entries[prefix]
            return None
        return entry

    def put(self, epoch: int, secret_hash: str, key: ApiKeyPublic, route: RouteInfo) -> None:
        """Keep what a read that began at ``epoch`` found, unless something was invalidated
        since (it may have read the state before that change)."""
        with self._lock:
            if epoch != self.epoch or not self.listening:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key.prefix] = Entry(secret_hash, key, route, time.monotonic())

    # -- invalidation --------------------------------------------------------------------------
    def drop(self, payload: str) -> None:
        kind, _, value = payload.partition(":")
        with self._lock:
            self.epoch += 1
            if kind == "k":
                self._entries.pop(value, None)
            elif kind == "t":
                for prefix, entry in list(self._entries.items()):
                    if str(entry.route.tenant_id) == value:
                        del self._entries[prefix]
            else:
                self._entries.clear()

    def _set_listening(self, up: bool) -> None:
        with self._lock:
            self.epoch += 1
            self._entries.clear()
            self.listening = up

    # -- the listener --------------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            # a forked worker inherits no thread: it starts its own, and trusts nothing yet
            self._pid = pid
            self._entries.clear()
            self.listening = False
            self.epoch += 1
        # the thread holds the cache weakly: it ends (within one wait) once the cache is gone
        ref = weakref.ref(self)
        threading.Thread(target=_listen, args=(ref,), name=LISTENER_NAME, daemon=True).start()

    def dsn(self) -> str:
        from psycopg.conninfo import make_conninfo

        from bizosctl.catalog.control import CATALOG_DB
        from bizosctl.db.engines import psycopg_conninfo

        info = psycopg_conninfo(self.ctl.home_cluster.url(CATALOG_DB))
        return make_conninfo(**info, application_name=LISTENER_NAME, connect_timeout=5)

    def close(self) -> None:
        self._stop.set()


def _listen(ref: weakref.ReferenceType[KeyCache]) -> None:
    """The listener thread: one connection at a time, LISTENing on :data:`CHANNEL`."""
    import psycopg

    while (cache := ref()) is not None and not cache._stop.is_set():
        try:
            dsn = cache.dsn()
            del cache
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                if not _on(ref, KeyCache._set_listening, True):
                    return
                while True:
                    for note in conn.notifies(timeout=5.0):
                        if not _on(ref, KeyCache.drop, note.payload):
                            return
                    if not _on(ref):
                        return
                    conn.execute("SELECT 1")  # a dead connection fails here
        except Exception as exc:
            if _on(ref) and getattr(ref(), "listening", False):
                log.warning("API key cache: lost the catalog's notifications (%s)", exc)
        cache = ref()
        if cache is None:
            return
        cache._set_listening(False)
        stop = cache._stop
        del cache
        stop.wait(RECONNECT_S)


def _on(
    ref: weakref.ReferenceType[KeyCache], act: Callable[..., object] | None = None, *args: Any
) -> bool:
    """Whether the cache still exists and is not closed (``act(cache, *args)`` done if so)."""
    cache = ref()
    if cache is None or cache._stop.is_set():
        return False
    if act is not None:
        act(cache, *args)
    return True


def key_cache(ctl: Control) -> KeyCache | None:
    """``ctl``'s cache in this process, None when ``BIZOS_API_AUTH_CACHE_SECONDS`` is 0."""
    ttl = ctl.settings.api_auth_cache_seconds
    if ttl <= 0:
        return None
    cache: KeyCache | None = getattr(ctl, "_api_key_cache", None)
    if cache is None:
        with _create_lock:
            cache = getattr(ctl, "_api_key_cache", None)
            if cache is None:
                cache = KeyCache(ctl, ttl)
                ctl._api_key_cache = cache  # type: ignore[attr-defined]
    return cache


_create_lock = threading.Lock()


def auth_changed(
    conn: Session | Connection, *, prefix: str | None = None, tenant_id: uuid.UUID | None = None
) -> None:
    """Tell every API worker, at the commit of ``conn``'s transaction, that a key (by
    prefix), a tenant's keys (by id) or everything (neither) must be read again."""
    payload = f"k:{prefix}" if prefix else f"t:{tenant_id}" if tenant_id else "*"
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})

    def local(*_: Any) -> None:
        for cache in list(_caches):
            cache.drop(payload)

    local()
    if isinstance(conn, Session):
        event.listen(conn, "after_commit", local, once=True)
