"""The home (``init``), regions and their servers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.engine import URL

from bizosctl.catalog.control import CATALOG_DB, Control
from bizosctl.catalog.models import Region, Server
from bizosctl.catalog.schemas import RegionPublic, ServerPublic
from bizosctl.db.embedded import check_port_free
from bizosctl.db.engines import get_engine, make_url, redact, translate_errors
from bizosctl.errors import AlreadyExists, BizosError, InvalidInput, NotFound
from bizosctl.plans import Plan
from bizosctl.providers.local import ServerHandle
from bizosctl.tenancy.names import check_region_name
from bizosctl.tenancy.servers import bootstrap_server, new_password

MIN_SERVER_VERSION = 150000


@dataclass
class InitResult:
    home: Path
    created: list[str] = field(default_factory=list)


def init_home(ctl: Control) -> InitResult:
    """Create the home, the master key, the home region's server and the catalog. Idempotent."""
    from bizosctl.db.migrate import upgrade
    from bizosctl.home import (
        HOME_REGION_MARKER,
        check_home,
        check_home_region,
        check_writable,
        create_private,
    )
    from bizosctl.security.keyring import Keyring
    from bizosctl.security.masterkey import create_key_file, load_master

    settings = ctl.settings
    result = InitResult(home=settings.home)
    check_home(settings.home, create=True)
    check_writable(settings.home)
    check_home_region(settings.home, settings.regions_dir, settings.home_region)
    if settings.master_key is None and create_key_file(settings.key_file):
        result.created.append(f"master key {settings.key_file}")
    master = load_master(settings)
    if ctl.home_cluster.ensure_running():
        result.created.append(f"started {settings.home_region} server")
    with translate_errors("catalog"):
        admin = get_engine(ctl.home_cluster.url("postgres"), pooled=False)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": CATALOG_DB}
            ).first():
                conn.execute(text(f'CREATE DATABASE "{CATALOG_DB}" TEMPLATE template0'))
                conn.execute(text(f'REVOKE CONNECT ON DATABASE "{CATALOG_DB}" FROM PUBLIC'))
                result.created.append("catalog database")
        with ctl.catalog_engine.begin() as conn:
            before = upgrade(conn, "control")
            if before is None:
                result.created.append("catalog schema")
    with ctl.catalog() as s:
        Keyring(master).ensure(s)
    ctl.reload_keyring()
    _ = ctl.keyring  # fails now, clearly, when the master key does not open the keyring
    if ensure_region(ctl, settings.home_region):
        result.created.append(f"region {settings.home_region}")
    create_private(settings.home / HOME_REGION_MARKER, f"{settings.home_region}\n".encode())
    return result


def region_exists(ctl: Control, name: str) -> bool:
    with ctl.catalog() as s:
        return s.get(Region, name) is not None


def ensure_region(ctl: Control, name: str) -> bool:
    """Add an embedded region unless it exists. True when it was added."""
    if region_exists(ctl, name):
        return False
    add_region(ctl, name)
    return True


#: What a bring-your-own server URL gets unless it says otherwise: TLS with the server's
#: certificate checked against the system's CAs, SCRAM only (libpq refuses a server that
#: asks for a cleartext or MD5 password), and channel binding (no TLS-stripping relay).
SECURE_PARAMS = {
    "sslmode": "verify-full",
    "sslrootcert": "system",
    "require_auth": "scram-sha-256",
    "channel_binding": "require",
}


def _parse_url(url: str) -> URL:
    """A ``postgresql://`` URL, or InvalidInput (that never shows a password)."""
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {redact(url) if '://' in url else url!r}") from exc
    if not parsed.drivername.startswith("postgresql"):
        raise InvalidInput(f"only postgresql:// URLs are supported, not {parsed.drivername}://")
    return parsed


def server_url(
    url: str, *, password: str | None, insecure: bool = False, allow_url_password: bool = False
) -> str:
    """The URL bizosctl stores for a bring-your-own server: password added, downgrades shut.

    Args:
        url: the operator's ``postgresql://`` URL, normally without a password.
        password: the superuser's password (from a file, stdin or BIZOS_SERVER_PASSWORD).
        insecure: labs only: no TLS required; ``require_auth=scram-sha-256`` is still set
            unless the URL names its own ``require_auth``.
        allow_url_password: accept a password inside ``url`` (it shows in ``ps``).
    """
    parsed = _parse_url(url)
    if parsed.password is not None and not allow_url_password:
        raise InvalidInput(
            "--url holds a password, which other users of this machine see in the process "
            "list: pass it with --password-file, --password-stdin or BIZOS_SERVER_PASSWORD "
            "(or --allow-url-password)"
        )
    if password is not None:
        if parsed.password is not None:
            raise InvalidInput("a password is both in --url and given separately: keep one")
        parsed = parsed.set(password=password)
    query = dict(parsed.query)
    host = parsed.host or str(query.get("host", ""))
    if not host or host.startswith("/"):
        return parsed.render_as_string(hide_password=False)  # a Unix socket: no network
    if insecure:
        query.setdefault("require_auth", "scram-sha-256")
    else:
        accepted = {"sslmode": ("verify-full", "verify-ca")}
        weak = [
            f"{k}={query[k]}"
            for k in ("sslmode", "require_auth", "channel_binding")
            if k in query and str(query[k]) not in accepted.get(k, (SECURE_PARAMS[k],))
        ]
        if weak:
            raise InvalidInput(
                f"--url asks for {', '.join(weak)}, which lets a server or relay downgrade "
                "the connection: remove it, or pass --insecure for a lab"
            )
        for key, value in SECURE_PARAMS.items():
            if key == "sslrootcert" and query.get("sslmode", "verify-full") != "verify-full":
                continue  # libpq allows the system CAs with verify-full only
            query.setdefault(key, value)
    return parsed.set(query=query).render_as_string(hide_password=False)


def _check_url(url: str, *, insecure: bool = False) -> None:
    """A bring-your-own server must be reachable, PostgreSQL ≥ 15, able to create vector."""
    parsed = _parse_url(url)
    shown = redact(url)
    from sqlalchemy.exc import DBAPIError

    engine = get_engine(parsed, pooled=False)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version_num")).scalar_one()
            can = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'),"
                    " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
                )
            ).one()
    except DBAPIError as exc:
        from bizosctl.db.engines import db_message

        message = db_message(exc)
        hint = ""
        if not insecure and ("SSL" in message or "certificate" in message):
            hint = " (bizosctl requires TLS with a verified certificate; --insecure for a lab)"
        raise InvalidInput(f"cannot connect to {shown}: {message}{hint}") from exc
    if int(version) < MIN_SERVER_VERSION:
        raise InvalidInput(
            f"{shown} runs PostgreSQL {int(version) // 10000}; bizosctl needs 15 or newer"
        )
    if not can[0]:
        raise InvalidInput(
            f"{shown} cannot create the 'vector' extension: install pgvector on that server "
            "(e.g. apt-get install postgresql-<version>-pgvector)"
        )
    if not can[1]:
        raise InvalidInput(f"{shown}: connect as a superuser, bizosctl creates roles and databases")


def check_region_port(port: int) -> None:
    """A new embedded region's ``--port``: in range and free, before anything is made on disk
    (``--dry-run`` checks it too)."""
    if not 1024 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range (1024-65535)")
    check_port_free(port, new_region=True)


def check_server(ctl: Control, url: str, *, insecure: bool = False) -> None:
    """Everything ``region add --url`` checks before it changes anything (``--dry-run`` runs
    it too): reachable, PostgreSQL 15 or newer with pgvector, a superuser, and not a server
    the catalog knows already."""
    _check_url(url, insecure=insecure)
    refuse_known_server(ctl, url)


def refuse_known_server(ctl: Control, url: str) -> None:
    """A server is what it is, not the address it is reached by: the same PostgreSQL cluster
    registered twice (two names, two regions) would share databases and roles, and its
    bootstrap would reset the other registration's shared login role. AlreadyExists, naming
    the registration that has it."""
    from bizosctl.fleet_health import server_identity

    new = server_identity(make_url(url), label=f"server {redact(url)}")
    with ctl.catalog() as s:
        rows = s.execute(select(Server).order_by(Server.name)).scalars().all()
        handles = [ctl.handle_for(row) for row in rows]
    for handle in handles:
        if handle.is_account:
            continue
        try:
            handle.ensure_ready()
            known = server_identity(handle.admin_url("postgres"), label=f"server {handle.name}")
        except BizosError:
            continue  # unreachable now: it cannot be the server that just answered
        if known == new:
            raise AlreadyExists(
                f"that PostgreSQL server is already registered as {handle.name} in region "
                f"{handle.region!r}: a region needs a server of its own (its data must not "
                "share databases or roles with another region's)"
            )


class RegionPlan(Plan):
    """``region add --dry-run``: the region and server it would add, and where."""

    region: str
    server: str
    provider: str  # embedded | postgres (a --url server) | neon | supabase
    port: int | None = None
    provider_region: str | None = None
    org: str | None = None


def _check_new_region(
    ctl: Control,
    name: str,
    *,
    url: str | None,
    port: int | None,
    password: str | None,
    insecure: bool,
    allow_url_password: bool,
) -> str | None:
    """Everything :func:`add_region` refuses, checked before it changes anything; the URL it
    would store (None for an embedded server)."""
    check_region_name(name)
    if url is not None and port is not None:
        raise InvalidInput("--port is for embedded servers; put the port in --url instead")
    if url is None and (password is not None or insecure):
        raise InvalidInput("a password and --insecure are for --url servers only")
    if url is not None:
        url = server_url(
            url, password=password, insecure=insecure, allow_url_password=allow_url_password
        )
    if port is not None and not 1024 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range (1024-65535)")
    if region_exists(ctl, name):
        raise AlreadyExists(f"region {name!r} already exists")
    if url is not None:
        check_server(ctl, url, insecure=insecure)
    if port is not None:
        check_region_port(port)
    return url


def plan_add_region(
    ctl: Control,
    name: str,
    *,
    url: str | None = None,
    port: int | None = None,
    password: str | None = None,
    insecure: bool = False,
    allow_url_password: bool = False,
) -> RegionPlan:
    """What :func:`add_region` would add, refusing what it refuses; changes nothing (a
    ``url`` server is reached and checked)."""
    stored = _check_new_region(
        ctl, name, url=url, port=port, password=password, insecure=insecure,
        allow_url_password=allow_url_password,
    )  # fmt: skip
    provider = "postgres" if stored else "embedded"
    return RegionPlan(region=name, server=f"{name}-1", provider=provider, port=port)


def add_region(
    ctl: Control,
    name: str,
    *,
    url: str | None = None,
    port: int | None = None,
    password: str | None = None,
    insecure: bool = False,
    allow_url_password: bool = False,
) -> RegionPublic:
    """Add a region with an embedded server, or with the server at ``url`` (see
    :func:`server_url` for ``password``, ``insecure`` and ``allow_url_password``)."""
    url = _check_new_region(
        ctl, name, url=url, port=port, password=password, insecure=insecure,
        allow_url_password=allow_url_password,
    )  # fmt: skip
    server_name = f"{name}-1"
    handle = ServerHandle(
        name=server_name,
        region=name,
        provider="postgres" if url else "embedded",
        port=port,
        url=url,
        regions_dir=ctl.settings.regions_dir,
        durable=ctl.settings.embedded_durable,
    )
    region_dir = ctl.settings.regions_dir / name
    fresh_dir = url is None and not region_dir.exists()
    password = new_password()
    try:
        bootstrap_server(handle, app_password=password)
    except BaseException:
        if fresh_dir:  # a failed first start leaves no half-made data directory behind
            import shutil

            with contextlib.suppress(BizosError):
                handle.cluster.stop(mode="immediate")
            shutil.rmtree(region_dir, ignore_errors=True)
        raise
    with ctl.catalog() as s:
        if s.get(Region, name) is not None:
            raise AlreadyExists(f"region {name!r} was added by another process just now")
        s.add(Region(name=name))
        s.flush()
        s.add(
            Server(
                name=server_name,
                region=name,
                provider=handle.provider,
                port=port,
                url_enc=ctl.seal(url, context=f"server:{server_name}:url") if url else None,
                app_password_enc=ctl.seal(password, context=f"server:{server_name}:app"),
            )
        )
    return RegionPublic(
        name=name,
        servers=[
            ServerPublic(name=server_name, provider=handle.provider, url=handle.display_url())
        ],
    )


def list_regions(ctl: Control) -> list[RegionPublic]:
    with ctl.catalog() as s:
        regions = s.execute(select(Region).order_by(Region.name)).scalars().all()
        servers = s.execute(select(Server).order_by(Server.name)).scalars().all()
        handles = [ctl.handle_for(row) for row in servers]
    out = []
    for region in regions:
        out.append(
            RegionPublic(
                name=region.name,
                servers=[
                    ServerPublic(name=h.name, provider=h.provider, url=h.display_url())
                    for h in handles
                    if h.region == region.name
                ],
            )
        )
    return out


def get_region(ctl: Control, name: str) -> RegionPublic:
    for region in list_regions(ctl):
        if region.name == name:
            return region
    raise NotFound(f"no region named {name!r}")


def default_server(ctl: Control, region: str) -> str:
    with ctl.catalog() as s:
        name = (
            s.execute(
                select(Server.name)
                .where(Server.region == region)
                .order_by(Server.is_default.desc(), Server.name)
            )
            .scalars()
            .first()
        )
    if name is None:
        raise NotFound(f"region {region!r} has no server")
    return name


def stop_embedded(ctl: Control) -> list[str]:
    """Stop every embedded cluster under the home (`bizosctl down`)."""
    from bizosctl.db.embedded import EmbeddedCluster
    from bizosctl.db.engines import dispose_all

    dispose_all()
    stopped: list[str] = []
    regions_dir = ctl.settings.regions_dir
    if not regions_dir.is_dir():
        return stopped
    for region_dir in sorted(regions_dir.iterdir()):
        if (region_dir / "pgdata" / "PG_VERSION").exists():
            if EmbeddedCluster(region_dir, home=ctl.settings.home).stop():
                stopped.append(region_dir.name)
    return stopped
