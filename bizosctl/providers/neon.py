"""Neon through the ``neon-api`` client: a project per isolated tenant, with its owner role
and database made by the project's create call, waited on through its operations.

The client's traps, and what this module does about them:

- its methods parse replies into strict pydantic models that drop what the model lacks (the
  connection URIs and operations of ``project_create``): ``ENABLE_PYDANTIC = False`` makes
  them return the raw JSON;
- it has no timeout, no retry and no 429 handling: :class:`_Client` sends its requests
  through :class:`~bizosctl.providers.http.ProviderHTTP` (timeouts, backoff, a client-side
  rate limit under Neon's 700 requests a minute and 40 a second);
- database and role calls need a branch id: none are made, the create call names both.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import neon_api.client
from sqlalchemy.engine import make_url

from bizosctl.errors import ProjectGone, ProviderError
from bizosctl.providers.base import PREFIX, CloudProject, Progress, token_of
from bizosctl.providers.http import ProviderHTTP

if TYPE_CHECKING:
    from bizosctl.config import Settings

neon_api.client.ENABLE_PYDANTIC = False  # raw replies: the models drop connection URIs

#: Published limits: 700 requests a minute, bursts of 40 a second (per route); kept under.
PER_MINUTE, BURST = 650, 30
#: Used when the API has no region list to give (``GET regions`` is not in every version).
KNOWN_REGIONS = (
    "aws-us-east-1", "aws-us-east-2", "aws-us-west-2", "aws-eu-central-1", "aws-eu-west-2",
    "aws-ap-southeast-1", "aws-ap-southeast-2", "aws-sa-east-1", "azure-eastus2",
    "azure-westus3", "azure-gwc",
)  # fmt: skip
_DONE, _FAILED = "finished", ("failed", "error", "cancelled")
PAGE = 400


class _Client(neon_api.NeonAPI):  # type: ignore[misc]
    """The neon-api client, its requests sent by ProviderHTTP."""

    def __init__(self, http: ProviderHTTP, base_url: str) -> None:
        super().__init__("unused", base_url=base_url)  # the token lives in ``http``
        self._http = http

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._http.request(
            method, path, params=kwargs.get("params"), json=kwargs.get("json")
        )


class NeonProvider:
    name = "neon"

    def __init__(self, settings: Settings, *, org: str | None = None) -> None:
        token, self.token_var = token_of(settings, "neon")
        base = (
            settings.neon_api_url
            if settings.neon_api_url.endswith("/")
            else settings.neon_api_url + "/"
        )
        self.http = ProviderHTTP(
            provider="neon", base_url=base, token=token, token_var=self.token_var,
            settings=settings, per_minute=PER_MINUTE, burst=BURST,
        )  # fmt: skip
        self.api = _Client(self.http, base)
        self.settings = settings
        self.org = org

    @property
    def calls(self) -> int:
        return self.http.calls

    def close(self) -> None:
        self.http.close()

    def check(self) -> None:
        self._page(limit=1)

    def regions(self) -> list[str]:
        try:
            body = self.api._request("GET", "regions")
        except ProjectGone:
            return list(KNOWN_REGIONS)
        return sorted(r["region_id"] for r in body.get("regions", []))

    def create(
        self, *, name: str, region: str, database: str, owner: str, password: str
    ) -> CloudProject:
        project: dict[str, Any] = {
            "name": name,
            "region_id": region,
            "branch": {"role_name": owner, "database_name": database},
        }
        if self.org:
            project["org_id"] = self.org
        body = self.api.project_create(project=project)
        return _project(body)

    def find(self, name: str) -> CloudProject | None:
        for p in self._all():
            if p["name"] == name:
                return CloudProject(id=p["id"], name=p["name"], region=p.get("region_id"))
        return None

    def wait_ready(
        self, project: CloudProject, *, database: str, owner: str, password: str,
        deadline: float, progress: Progress,
    ) -> CloudProject:  # fmt: skip
        """Poll the project's operations (one list call a poll, however many there are)
        until every one has finished; then ask for the owner's URI if the create reply was
        lost."""
        interval = self.settings.provider_poll_interval
        while True:
            ops = self.api.operations(project.id)["operations"]
            failed = [o for o in ops if o["status"] in _FAILED]
            if failed:
                raise ProviderError(
                    f"neon project {project.id}: operation {failed[0]['action']} "
                    f"{failed[0]['status']}"
                )
            waiting = [o for o in ops if o["status"] != _DONE]
            if not waiting:
                break
            progress(f"neon project {project.id}: {len(waiting)} operation(s) running")
            if time.monotonic() + interval > deadline:
                raise ProviderError(
                    f"neon project {project.id} was not ready within "
                    f"{self.settings.provider_ready_timeout:g}s; run the same command again to "
                    "keep waiting, or delete the tenant"
                )
            time.sleep(interval)
        if project.password is None or project.host is None:
            uri = self.api.connection_uri(project.id, database_name=database, role_name=owner)
            _fill(project, uri["uri"])
        return project

    def delete(self, project_id: str) -> bool:
        try:
            self.api.project_delete(project_id)
        except ProjectGone:
            return False
        return True

    def projects(self) -> list[CloudProject]:
        return [
            CloudProject(id=p["id"], name=p["name"], region=p.get("region_id"))
            for p in self._all()
            if p["name"].startswith(PREFIX)
        ]

    def _page(self, *, limit: int, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        if self.org:
            params["org_id"] = self.org
        body: dict[str, Any] = self.api._request("GET", "projects", params=params)
        return body

    def _all(self) -> list[dict[str, Any]]:
        """Every project, page after page (a short page is the last)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            body = self._page(limit=PAGE, cursor=cursor)
            page = body.get("projects", [])
            out += page
            cursor = (body.get("pagination") or {}).get("cursor")
            if len(page) < PAGE or not cursor:
                return out


def _project(body: dict[str, Any]) -> CloudProject:
    p = body["project"]
    project = CloudProject(
        id=p["id"],
        name=p["name"],
        region=p.get("region_id"),
        pending=[o["id"] for o in body.get("operations", []) if o["status"] != _DONE],
    )
    uris = body.get("connection_uris") or []
    if uris:
        _fill(project, uris[0]["connection_uri"])
    return project


def _fill(project: CloudProject, uri: str) -> None:
    url = make_url(uri)
    project.host, project.port = url.host, url.port or 5432
    project.user, project.password, project.database = url.username, url.password, url.database
