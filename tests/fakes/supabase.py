"""A loopback Supabase Management API (``/v1``): projects in an organisation and region made
on the backing PostgreSQL with the ``db_pass`` the client sent, ``/health`` answering
``COMING_UP`` until the project is ready and then ``ACTIVE_HEALTHY``, the session pooler's
host, port and user, available regions, 401 for a bad token, 404 for a gone project."""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.base import Backing, FakeAPI

REGIONS = ("ap-southeast-1", "ap-southeast-2", "eu-central-1", "us-east-1")
ORG = "org-bizos"


@dataclass
class Project:
    ref: str
    name: str
    region: str
    org: str
    created: float
    polls: int = 0

    @property
    def user(self) -> str:
        return f"postgres.{self.ref}"


class FakeSupabase(FakeAPI):
    def __init__(self, backing: Backing, *, latency: float = 0.0, ready_polls: int = 1) -> None:
        super().__init__(backing, latency=latency)
        self.projects: dict[str, Project] = {}
        self.ready_polls = ready_polls
        self.deleted: list[str] = []
        self.health: str | None = None  # a state every /health answers (e.g. INIT_FAILED)

    def _public(self, p: Project) -> dict[str, Any]:
        status = "ACTIVE_HEALTHY" if p.polls >= self.ready_polls else "COMING_UP"
        return {
            "id": p.ref, "ref": p.ref, "organization_id": p.org, "name": p.name,
            "region": p.region, "created_at": "2026-12-02T00:00:00Z", "status": status,
            "database": {"host": f"db.{p.ref}.supabase.co", "version": "17"},
        }  # fmt: skip

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        with self.lock:
            if parts == ["v1", "organizations"]:
                return 200, [{"id": ORG, "name": "Bizos"}]
            if parts == ["v1", "projects", "available-regions"]:
                specific = [{"code": r, "name": r, "provider": "AWS", "status": None}
                            for r in REGIONS]  # fmt: skip
                return 200, {"recommendations": {"specific": specific[:1]},
                             "all": {"smartGroup": [], "specific": specific}}  # fmt: skip
            if parts == ["v1", "projects"] and method == "GET":
                return 200, [self._public(p) for p in self.projects.values()]
            if parts == ["v1", "projects"] and method == "POST":
                return self._create(body)
            p = self.projects[parts[2]]
            rest = parts[3:]
            if not rest and method == "DELETE":
                del self.projects[p.ref]
                self.deleted.append(p.ref)
                self.backing.drop_owner(p.user)
                return 200, {"id": p.ref, "ref": p.ref, "name": p.name}
            if not rest and method == "GET":
                return 200, self._public(p)
            if rest == ["health"]:
                p.polls += 1
                up = p.polls > self.ready_polls
                state = self.health or ("ACTIVE_HEALTHY" if up else "COMING_UP")
                return 200, [{"name": "db", "healthy": state == "ACTIVE_HEALTHY",
                              "status": state}]  # fmt: skip
            if rest == ["config", "database", "pooler"]:
                return 200, [
                    {"identifier": p.ref, "database_type": "PRIMARY", "is_using_scram_auth": True,
                     "db_user": p.user, "db_host": "127.0.0.1", "db_port": self.backing.port,
                     "db_name": "postgres", "pool_mode": "session",
                     "connection_string": f"postgresql://{p.user}:[YOUR-PASSWORD]@127.0.0.1:"
                                          f"{self.backing.port}/postgres"}
                ]  # fmt: skip
        raise KeyError(path)

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("region") not in REGIONS:
            return 400, {"message": f"invalid region {body.get('region')}"}
        if body.get("organization_id") != ORG:
            return 404, {"message": "organization not found"}
        if len(body.get("db_pass") or "") < 8:
            return 400, {"message": "db_pass is too weak"}
        ref = "".join(secrets.choice(string.ascii_lowercase) for _ in range(20))
        p = Project(ref=ref, name=body["name"], region=body["region"], org=ORG,
                    created=time.monotonic())  # fmt: skip
        self.backing.make_owner(p.user, body["db_pass"], None)
        self.projects[ref] = p
        return 201, {k: v for k, v in self._public(p).items() if k != "database"}
