"""Server handles for the ``embedded`` and ``postgres`` providers.

A handle knows how to reach a server as the operator (superuser) and as a login role, and how
to make sure it is up. Neon and Supabase handles come later with the same shape.
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


@dataclass
class ServerHandle:
    name: str
    region: str
    provider: str
    port: int | None = None
    url: str | None = None  # provider "postgres": the operator's URL (secret)
    regions_dir: Path | None = None
    durable: bool = True
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

    def ensure_ready(self) -> None:
        if self.provider == "embedded":
            self.cluster.ensure_running()

    def admin_url(self, database: str = "postgres") -> URL:
        if self.provider == "embedded":
            return make_url(self.cluster.url(database))
        assert self.url is not None
        return make_url(self.url).set(database=database)

    def login_url(self, database: str, role: str, password: str) -> URL:
        return self.admin_url(database).set(username=role, password=password)

    def display_url(self) -> str:
        """Where the server is, never with a password."""
        if self.provider == "embedded":
            tcp = f" tcp=127.0.0.1:{self.port}" if self.port else ""
            return f"postgresql://postgres@/?host={self.cluster.pgdata}{tcp}"
        assert self.url is not None
        return redact(self.url).replace("postgresql+psycopg://", "postgresql://")
