"""The handle on one control plane: settings, the catalog database, the keyring, servers.

Everything that touches the fleet starts from :func:`get_control`. The catalog lives in the
``bizos_control`` database on the home region's embedded server.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bizosctl.config import Settings, get_settings
from bizosctl.db.embedded import EmbeddedCluster
from bizosctl.errors import ConfigError, NotFound

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import TextClause
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

    from bizosctl.providers.local import ServerHandle
    from bizosctl.security.datakeys import Keyring
    from bizosctl.security.masterkey import MasterKey

CATALOG_DB = "bizos_control"
#: A pooled catalog connection is pinged at checkout only after this long in the pool (a
#: worker's job-after-job checkouts skip the ping; see ``get_engine(ping_idle=...)``).
CATALOG_PING_IDLE_S = 1.0


@dataclass(frozen=True)
class RouteInfo:
    tenant_id: uuid.UUID
    slug: str
    tier: str
    region: str
    status: str
    server: str
    database: str
    schema: str
    role: str
    password: str


class Control:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keyring: Keyring | None = None
        self._servers: dict[str, ServerHandle] = {}
        self._lock = threading.Lock()
        self._catalog_at_head = False
        self._unsealed: dict[tuple[str, str], str] = {}
        self._seen_initialized = float("-inf")  # time.monotonic() it was last seen initialised

    # -- the home region and the catalog -----------------------------------------------------
    @functools.cached_property
    def home_cluster(self) -> EmbeddedCluster:
        return EmbeddedCluster(
            self.settings.regions_dir / self.settings.home_region,
            durable=self.settings.embedded_durable,
            home=self.settings.home,
        )

    @functools.cached_property
    def _pg_version_file(self) -> Path:
        return self.settings.regions_dir / self.settings.home_region / "pgdata" / "PG_VERSION"

    def is_initialized(self) -> bool:
        return self._pg_version_file.exists()

    #: A home seen initialised less than this ago is not checked again (every catalog access
    #: asks; a home deleted meanwhile shows up as a connection error), as
    #: ``EmbeddedCluster.ensure_running`` does for the server.
    SEEN_INITIALIZED_S = 1.0

    def require_initialized(self) -> None:
        if time.monotonic() - self._seen_initialized < self.SEEN_INITIALIZED_S:
            return
        if self.is_initialized():
            self._seen_initialized = time.monotonic()
        else:
            from bizosctl.home import check_home_region

            s = self.settings
            check_home_region(s.home, s.regions_dir, s.home_region)
            raise ConfigError(
                f"bizosctl is not initialised in {self.settings.home} "
                "(run `bizosctl init` or `bizosctl quickstart`)"
            )

    @property
    def catalog_engine(self) -> Engine:
        self.require_initialized()
        self.home_cluster.ensure_running()
        engine = self._catalog(pre_ping=True)
        if not self._catalog_at_head:
            self._upgrade_catalog(engine)
        return engine

    @property
    def catalog_engine_unpinged(self) -> Engine:
        """The catalog's engine without a ping at checkout, for one-statement reads that retry
        on a dead connection themselves (the API's per-request authentication)."""
        self.catalog_engine  # noqa: B018 (the checks: initialised, running, at head)
        return self._catalog(pre_ping=False)

    def _catalog(self, *, pre_ping: bool) -> Engine:
        from bizosctl.db.engines import get_engine, memo_engine

        cluster = self.home_cluster
        url = cluster.url(CATALOG_DB)
        return memo_engine(
            ("catalog", str(cluster.pgdata), pre_ping),
            # pinged only when idle a while (a connection used a moment ago is alive)
            lambda: (
                get_engine(url, ping_idle=CATALOG_PING_IDLE_S)
                if pre_ping
                else get_engine(url, pre_ping=False)
            ),
        )

    def _upgrade_catalog(self, engine: Engine) -> None:
        """Bring the catalog to this code's head once per process (newer code, older home)."""
        from bizosctl.db.engines import translate_errors
        from bizosctl.db.migrate import current_revision, head, upgrade

        with translate_errors("catalog"), engine.begin() as conn:
            if current_revision(conn, schema=None) not in (None, head("control")):
                upgrade(conn, "control")
        self._catalog_at_head = True

    @contextlib.contextmanager
    def catalog(self) -> Iterator[Session]:
        """A catalog session in one transaction, committed on success."""
        from sqlalchemy.orm import Session

        from bizosctl.db.engines import translate_errors

        with (
            translate_errors("catalog"),
            Session(self.catalog_engine, expire_on_commit=False) as s,
            s.begin(),
        ):
            yield s

    # -- keys --------------------------------------------------------------------------------
    @property
    def keyring(self) -> Keyring:
        """The unwrapped data keys, re-read every few seconds (a rotation elsewhere)."""
        with self._lock:
            if self._keyring is None:
                from bizosctl.errors import KeyringError
                from bizosctl.security.datakeys import Keyring
                from bizosctl.security.masterkey import load_master

                ring = Keyring(
                    load_master(self.settings),
                    reload_seconds=self.settings.keyring_reload_seconds,
                )
                if self._load_read_only(ring):
                    self._keyring = ring
                    return ring
                try:
                    with self.catalog() as s:
                        ring.ensure(s)  # purposes added by newer code get their first key
                        ring.load(s)
                except KeyringError as exc:
                    from bizosctl.security.masterkey import finish_interrupted_rotation

                    if not finish_interrupted_rotation(self.settings, exc):
                        raise
                    ring = Keyring(
                        load_master(self.settings),
                        reload_seconds=self.settings.keyring_reload_seconds,
                    )
                    with self.catalog() as s:
                        ring.load(s)
                self._keyring = ring
            elif self._keyring.stale() and not self._load_read_only(self._keyring):
                with self.catalog() as s:
                    self._keyring.load(s)
            return self._keyring

    def _load_read_only(self, ring: Keyring) -> bool:
        """Load ``ring`` with one plain read of the catalog when loading changes nothing (every
        purpose has keys, none is due to be retired or destroyed): the short commands never
        import SQLAlchemy. False: the caller loads it through a session (which makes, retires
        or destroys keys, and finishes an interrupted master key rotation)."""
        from bizosctl.catalog.reads import keyring_entries
        from bizosctl.errors import KeyringError
        from bizosctl.security.datakeys import PURPOSES

        entries = keyring_entries(self, PURPOSES)
        if entries is None:
            return False
        try:
            ring.load_entries(entries)
        except KeyringError:
            return False
        return True

    def use_master(self, master: MasterKey) -> None:
        """Open the keyring with this master key from now on (after a master key rotation)."""
        from bizosctl.security.datakeys import Keyring

        ring = Keyring(master, reload_seconds=self.settings.keyring_reload_seconds)
        with self.catalog() as s:
            ring.load(s)
        with self._lock:
            self._keyring = ring

    def reload_keyring(self) -> None:
        with self._lock:
            self._keyring = None

    def seal(self, value: str, *, context: str) -> str:
        from bizosctl.security.fields import encrypt

        return encrypt(
            self.keyring,
            value,
            tenant_id="catalog",
            table="credentials",
            column=context,
            purpose="db-credentials",
        )

    def unseal(self, token: str, *, context: str) -> str:
        from bizosctl.security.fields import decrypt

        return decrypt(
            self.keyring,
            token,
            tenant_id="catalog",
            table="credentials",
            column=context,
            purpose="db-credentials",
        )

    # -- servers and routes -----------------------------------------------------------------
    def server(self, name: str) -> ServerHandle:
        cached = self._servers.get(name)
        if cached is not None:
            return cached
        from bizosctl.catalog.reads import server_row

        handle = self.handle_for(server_row(self, name))
        self._servers[name] = handle
        return handle

    def handle_for(self, row: Any) -> ServerHandle:
        """The handle of a ``servers`` row (an ORM ``Server`` or a row of its columns)."""
        from bizosctl.providers.local import ServerHandle

        return ServerHandle(
            name=row.name,
            region=row.region,
            provider=row.provider,
            port=row.port,
            url=self.unseal(row.url_enc, context=f"server:{row.name}:url") if row.url_enc else None,
            regions_dir=self.settings.regions_dir,
            durable=self.settings.embedded_durable,
            provider_region=row.provider_region,
            provider_org=row.provider_org,
            project_id=row.project_id,
            parent=row.parent,
        )

    def forget_server(self, name: str) -> None:
        """Drop a cached handle (a project server removed or re-pointed)."""
        self._servers.pop(name, None)

    def route_password_for_server(self, name: str) -> str:
        """Password of the shared database's login role on that server (read each time: a
        rotation in another process changes it; decrypted once per ciphertext)."""
        from sqlalchemy import select

        from bizosctl.catalog.models import Server

        with self.catalog() as s:
            token = s.execute(
                select(Server.app_password_enc).where(Server.name == name)
            ).scalar_one()
        if token is None:
            raise NotFound(f"server {name!r} has no application password")
        return self._unseal_cached(token, context=f"server:{name}:app")

    def route(self, slug: str) -> RouteInfo:
        """Where ``slug`` lives and how the application logs in there: one catalog query per
        call (a move or a password rotation takes effect for the very next session); the
        password is decrypted once per ciphertext."""
        from bizosctl.db.engines import translate_errors

        with translate_errors("catalog"), self.catalog_engine.connect() as conn:
            return self.route_on(conn, slug)

    def route_on(self, conn: Connection | Session, slug: str) -> RouteInfo:
        """:meth:`route` on a connection or session the caller holds (one more statement in
        its transaction instead of a connection of its own)."""
        row = conn.execute(_route_sql(), {"slug": slug}).one_or_none()
        if row is None:
            raise NotFound(f"no tenant named {slug!r}")
        return self.route_from_row(row)

    def route_from_row(self, row: Any) -> RouteInfo:
        """A :class:`RouteInfo` from a row with :data:`ROUTE_COLUMNS` (for a caller that
        joins them into a query of its own)."""
        if row.password_enc:
            password = self._unseal_cached(row.password_enc, context=f"role:{row.role}")
        else:
            assert row.app_password_enc is not None
            password = self._unseal_cached(row.app_password_enc, context=f"server:{row.server}:app")
        return RouteInfo(
            tenant_id=row.id,
            slug=row.slug,
            tier=row.tier,
            region=row.region,
            status=row.status,
            server=row.server,
            database=row.database,
            schema=row.schema,
            role=row.role,
            password=password,
        )

    def _unseal_cached(self, token: str, *, context: str) -> str:
        key = (token, context)
        clear = self._unsealed.get(key)
        if clear is None:
            if len(self._unsealed) > 4096:
                self._unsealed.clear()
            clear = self._unsealed[key] = self.unseal(token, context=context)
        return clear


#: What a route is read from: ``tenants t JOIN routes r JOIN servers s`` (see
#: ``bizosctl.catalog.reads.route_sql``).
ROUTE_COLUMNS = (
    "t.id, t.slug, t.tier, t.region, t.status, r.server, r.database, r.schema, r.role, "
    "r.password_enc, s.app_password_enc"
)
ROUTE_JOIN = (
    "tenants AS t JOIN routes AS r ON r.tenant_id = t.id JOIN servers AS s ON s.name = r.server"
)


@functools.cache
def _route_sql() -> TextClause:
    from sqlalchemy import text

    from bizosctl.catalog.reads import route_sql

    return text(route_sql(":slug"))


_controls: dict[str, Control] = {}


def get_control(settings: Settings | None = None) -> Control:
    settings = settings or get_settings()
    key = str(settings.home)
    ctl = _controls.get(key)
    if ctl is None or ctl.settings is not settings:
        from bizosctl.home import check_home

        check_home(settings.home)  # refuse a home someone else could change, before use
        ctl = Control(settings)
        _controls[key] = ctl
    return ctl


def reset_controls() -> None:
    from bizosctl.db.engines import dispose_all

    _controls.clear()
    dispose_all()
