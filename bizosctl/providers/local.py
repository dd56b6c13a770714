"""Server handles for the ``embedded`` and ``postgres`` providers.

A handle knows how to reach a server as the operator (superuser) and as a login role, and how
to make sure it is up. A cloud handle (``neon``, ``supabase``) is either the region's provider
account (no database of its own: it makes projects, see :mod:`bizosctl.providers.cloud`) or one
tenant's project, reached by the project owner's URL like a ``postgres`` server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bizosctl.db.embedded import EmbeddedCluster
from bizosctl.db.engines import make_url, redact

if TYPE_CHECKING:
    from sqlalchemy import URL

PROVIDERS = ("embedded", "postgres")
CLOUD_PROVIDERS = ("neon", "supabase")


@dataclass
class ServerHandle:
    name: str
    region: str
    provider: str
    port: int | None = None
    url: str | None = None  # provider "postgres": the operator's URL (secret)
    regions_dir: Path | None = None
    durable: bool = True
    provider_region: str | None = None
    provider_org: str | None = None
    project_id: str | None = None  # a tenant's cloud project
    parent: str | None = None  # the provider server that made that project
    _cluster: EmbeddedCluster | None = field(default=None, repr=False)

    @property
    def cluster(self) -> EmbeddedCluster:
        if self.provider != "embedded":
            raise ValueError(f"server {self.name} is not embedded")
        if self._cluster is None:
            assert self.regions_dir is not None
            self._cluster = EmbeddedCluster(
                self.regions_dir / self.region,
                port=self.port,
                durable=self.durable,
                home=self.regions_dir.parent,
            )
        return self._cluster

    @property
    def is_cloud(self) -> bool:
        return self.provider in CLOUD_PROVIDERS

    @property
    def is_account(self) -> bool:
        """A cloud provider account: it makes projects and has no database to connect to."""
        return self.is_cloud and self.project_id is None

    @property
    def has_shared_db(self) -> bool:
        """Local servers hold the region's shared database; cloud ones hold none."""
        return not self.is_cloud

    def ensure_ready(self) -> None:
        if self.provider == "embedded":
            self.cluster.ensure_running()

    def admin_url(self, database: str = "postgres") -> URL:
        """The operator's URL for ``database``; ``postgres`` means the maintenance database,
        which for a cloud project is the one its owner URL names (roles, CREATE DATABASE)."""
        if self.provider == "embedded":
            return make_url(self.cluster.url(database))
        if self.url is None:
            from bizosctl.errors import InvalidInput

            raise InvalidInput(
                f"server {self.name} is a {self.provider} account: it makes projects and has no "
                "database of its own"
            )
        url = make_url(self.url)
        if self.is_cloud and database == "postgres":
            return url
        return url.set(database=database)

    def login_url(self, database: str, role: str, password: str) -> URL:
        return self.admin_url(database).set(username=role, password=password)

    def admin_conninfo(self, database: str = "postgres") -> dict[str, str]:
        """:meth:`admin_url` as ``psycopg.connect`` keyword arguments (an embedded server's
        without SQLAlchemy: the plain-psycopg reads of :mod:`bizosctl.catalog.reads`)."""
        if self.provider == "embedded":
            return self.cluster.conninfo(database)
        from bizosctl.db.engines import psycopg_conninfo

        return psycopg_conninfo(self.admin_url(database))

    def login_conninfo(self, database: str, role: str, password: str) -> dict[str, str]:
        """:meth:`login_url` as ``psycopg.connect`` keyword arguments."""
        return {**self.admin_conninfo(database), "user": role, "password": password}

    def display_url(self) -> str:
        """Where the server is, never with a password."""
        if self.provider == "embedded":
            tcp = f" tcp=127.0.0.1:{self.port}" if self.port else ""
            return f"postgresql://postgres@/?host={self.cluster.pgdata}{tcp}"
        if self.url is None:
            org = f" org {self.provider_org}" if self.provider_org else ""
            return f"{self.provider} api, region {self.provider_region}{org}"
        return redact(self.url).replace("postgresql+psycopg://", "postgresql://")
