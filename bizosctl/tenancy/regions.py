"""The home (``init``), regions and their servers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, text

from bizosctl.catalog.control import CATALOG_DB, Control
from bizosctl.catalog.models import Region, Server
from bizosctl.catalog.schemas import RegionPublic, ServerPublic
from bizosctl.db.engines import get_engine, make_url, redact, translate_errors
from bizosctl.errors import AlreadyExists, InvalidInput, NotFound
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
                conn.execute(text(f'CREATE DATABASE "{CATALOG_DB}"'))
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


def _check_url(url: str) -> None:
    """A bring-your-own server must be reachable, PostgreSQL ≥ 15, able to create vector."""
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {redact(url) if '://' in url else url!r}") from exc
    if not parsed.drivername.startswith("postgresql"):
        raise InvalidInput(f"only postgresql:// URLs are supported, not {parsed.drivername}://")
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

        raise InvalidInput(f"cannot connect to {shown}: {db_message(exc)}") from exc
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


def add_region(
    ctl: Control, name: str, *, url: str | None = None, port: int | None = None
) -> RegionPublic:
    check_region_name(name)
    if url is not None and port is not None:
        raise InvalidInput("--port is for embedded servers; put the port in --url instead")
    if port is not None and not 1024 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range (1024-65535)")
    if region_exists(ctl, name):
        raise AlreadyExists(f"region {name!r} already exists")
    if url is not None:
        _check_url(url)
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
    password = new_password()
    bootstrap_server(handle, app_password=password)
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
