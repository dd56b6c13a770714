"""Supabase through its Management API: ``POST /v1/projects`` in an organisation and region
with the database password bizosctl generated, ``/health`` polled until the database is
``ACTIVE_HEALTHY``, host, port and user from ``/config/database/pooler`` (session mode: the
migrations take advisory locks and set session state), ``DELETE`` to remove it.

120 requests a minute per user: the client keeps under it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bizosctl.errors import ProjectGone, ProviderError
from bizosctl.providers.base import PREFIX, CloudProject, Progress, token_of
from bizosctl.providers.http import ProviderHTTP

if TYPE_CHECKING:
    from bizosctl.config import Settings

PER_MINUTE, BURST = 110, 10
HEALTHY = "ACTIVE_HEALTHY"
#: Health states after which waiting longer does not help.
BROKEN = ("UNHEALTHY", "INIT_FAILED", "REMOVED", "GOING_DOWN")


class SupabaseProvider:
    name = "supabase"

    def __init__(self, settings: Settings, *, org: str) -> None:
        token, self.token_var = token_of(settings, "supabase")
        self.http = ProviderHTTP(
            provider="supabase", base_url=settings.supabase_api_url.rstrip("/"), token=token,
            token_var=self.token_var, settings=settings, per_minute=PER_MINUTE, burst=BURST,
        )  # fmt: skip
        self.settings = settings
        self.org = org

    @property
    def calls(self) -> int:
        return self.http.calls

    def close(self) -> None:
        self.http.close()

    def check(self) -> None:
        self.http.request("GET", "/v1/organizations")

    def regions(self) -> list[str]:
        body = self.http.request(
            "GET", "/v1/projects/available-regions", params={"organization_slug": self.org}
        )
        found: set[str] = set()
        if isinstance(body, dict):  # {"recommendations": ..., "all": {"specific": [...]}}
            for r in (body.get("all") or {}).get("specific", []):
                found.add(r["code"])
        return sorted(found)

    def create(
        self, *, name: str, region: str, database: str, owner: str, password: str
    ) -> CloudProject:
        body = self.http.request(
            "POST",
            "/v1/projects",
            json={"name": name, "organization_id": self.org, "region": region, "db_pass": password},
        )
        return CloudProject(id=body.get("ref") or body["id"], name=body["name"], region=region)

    def find(self, name: str) -> CloudProject | None:
        for p in self._all():
            if p["name"] == name:
                return CloudProject(
                    id=p.get("ref") or p["id"], name=p["name"], region=p.get("region")
                )
        return None

    def wait_ready(
        self, project: CloudProject, *, database: str, owner: str, password: str,
        deadline: float, progress: Progress,
    ) -> CloudProject:  # fmt: skip
        interval = self.settings.provider_poll_interval
        while True:
            health = self.http.request(
                "GET", f"/v1/projects/{project.id}/health", params={"services": "db"}
            )
            status = next((h.get("status") for h in health if h.get("name") == "db"), None)
            if status == HEALTHY:
                break
            if status in BROKEN:
                raise ProviderError(f"supabase project {project.id}: database {status}")
            progress(f"supabase project {project.id}: database {status or 'not up yet'}")
            if time.monotonic() + interval > deadline:
                raise ProviderError(
                    f"supabase project {project.id} was not ready within "
                    f"{self.settings.provider_ready_timeout:g}s (database {status}); run the "
                    "same command again to keep waiting, or delete the tenant"
                )
            time.sleep(interval)
        poolers = self.http.request("GET", f"/v1/projects/{project.id}/config/database/pooler")
        primary = [p for p in poolers if p.get("database_type", "PRIMARY") == "PRIMARY"]
        pooler = next((p for p in primary if p.get("pool_mode") == "session"), None) or primary[0]
        project.host, project.port = pooler["db_host"], int(pooler["db_port"])
        project.user, project.database = pooler["db_user"], pooler.get("db_name", "postgres")
        project.password = password
        return project

    def delete(self, project_id: str) -> bool:
        try:
            self.http.request("DELETE", f"/v1/projects/{project_id}")
        except ProjectGone:
            return False
        return True

    def projects(self) -> list[CloudProject]:
        return [
            CloudProject(id=p.get("ref") or p["id"], name=p["name"], region=p.get("region"))
            for p in self._all()
            if p["name"].startswith(PREFIX)
        ]

    def _all(self) -> list[dict[str, Any]]:
        """``GET /v1/projects`` is not paginated: every project of the token's user."""
        body = self.http.request("GET", "/v1/projects")
        return [p for p in body if p.get("organization_id") in (None, self.org)]
