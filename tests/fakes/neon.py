"""A loopback Neon API (``/api/v2``): projects with their owner role and database made on the
backing PostgreSQL, asynchronous operations (``running`` until the project is ready, then
``finished``), cursor pagination of ``GET projects``, 401 for a bad key, 404 for a gone
project, and injectable 429/5xx/held replies (see :class:`tests.fakes.base.FakeAPI`)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.base import Backing, FakeAPI, new_id

REGIONS = ("aws-ap-southeast-1", "aws-eu-central-1", "aws-us-east-2")


@dataclass
class Project:
    id: str
    name: str
    region_id: str
    role: str
    password: str
    database: str
    created: float
    branch_id: str = field(default_factory=lambda: f"br-{new_id(6)}")
    polls: int = 0
    ops: list[dict[str, Any]] = field(default_factory=list)


class FakeNeon(FakeAPI):
    def __init__(
        self, backing: Backing, *, latency: float = 0.0, ready_polls: int = 1,
        ready_after: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(backing, latency=latency)
        self.projects: dict[str, Project] = {}
        self.ready_polls = ready_polls  # operation polls answered "running" first
        self.ready_after = ready_after  # seconds before operations finish
        self.deleted: list[str] = []

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v2/"

    def _ready(self, p: Project) -> bool:
        return p.polls > self.ready_polls and time.monotonic() >= p.created + self.ready_after

    def _uri(self, p: Project) -> str:
        return (
            f"postgresql://{p.role}:{p.password}@127.0.0.1:{self.backing.port}/{p.database}"
            "?sslmode=require"
        )

    def _public(self, p: Project) -> dict[str, Any]:
        return {
            "id": p.id, "name": p.name, "region_id": p.region_id, "platform_id": "aws",
            "pg_version": 17, "created_at": _iso(p.created), "updated_at": _iso(p.created),
            "owner_id": "u-1", "proxy_host": "127.0.0.1", "branch_logical_size_limit": 0,
            "provisioner": "k8s-neonvm", "store_passwords": True, "history_retention_seconds": 0,
            "active_time": 0, "cpu_used_sec": 0, "creation_source": "console",
            "consumption_period_start": _iso(p.created), "consumption_period_end": _iso(p.created),
        }  # fmt: skip

    def _ops(self, p: Project) -> list[dict[str, Any]]:
        status = "finished" if self._ready(p) else "running"
        return [{**o, "status": status} for o in p.ops]

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.removeprefix("/api/v2/").strip("/").split("/")
        with self.lock:
            if parts == ["regions"] and method == "GET":
                return 200, {"regions": [{"region_id": r, "name": r} for r in REGIONS]}
            if parts == ["projects"] and method == "GET":
                return 200, self._list(query)
            if parts == ["projects"] and method == "POST":
                return self._create(body["project"])
            p = self.projects[parts[1]]
            rest = parts[2:]
            if not rest and method == "GET":
                return 200, {"project": self._public(p)}
            if not rest and method == "DELETE":
                del self.projects[p.id]
                self.deleted.append(p.id)
                self.backing.drop_owner(p.role)
                return 200, {"project": self._public(p)}
            if rest == ["operations"] and method == "GET":
                p.polls += 1
                return 200, {"operations": self._ops(p), "pagination": {"cursor": ""}}
            if len(rest) == 2 and rest[0] == "operations":
                p.polls += 1
                op = next(o for o in self._ops(p) if o["id"] == rest[1])
                return 200, {"operation": op}
            if rest == ["connection_uri"] and method == "GET":
                if query.get("role_name") != p.role or query.get("database_name") != p.database:
                    return 404, {"message": "role or database not found"}
                return 200, {"uri": self._uri(p)}
        raise KeyError(path)

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        ordered = sorted(self.projects.values(), key=lambda p: p.id)
        cursor = query.get("cursor")
        if cursor:
            ordered = [p for p in ordered if p.id > cursor]
        page = ordered[: int(query.get("limit", "10"))]
        return {
            "projects": [self._public(p) for p in page],
            "pagination": {"cursor": page[-1].id if page else cursor or ""},
        }

    def _create(self, spec: dict[str, Any]) -> tuple[int, Any]:
        region = spec.get("region_id", "aws-us-east-2")
        if region not in REGIONS:
            return 400, {"code": "", "message": f"region {region} is not supported"}
        branch = spec.get("branch") or {}
        pid = f"{new_id(4)}-{new_id(3)}-{new_id(4)}"
        p = Project(
            id=pid, name=spec.get("name") or pid, region_id=region,
            role=branch.get("role_name") or f"owner_{new_id(4)}", password=new_id(12),
            database=branch.get("database_name") or f"neondb_{new_id(4)}",
            created=time.monotonic(),
        )  # fmt: skip
        self.backing.make_owner(p.role, p.password, p.database)
        p.ops = [
            {"id": new_id(8), "project_id": pid, "branch_id": p.branch_id, "action": action,
             "status": "running", "failures_count": 0, "created_at": _iso(p.created)}
            for action in ("create_timeline", "start_compute")
        ]  # fmt: skip
        self.projects[pid] = p
        return 201, {
            "project": self._public(p),
            "connection_uris": [
                {
                    "connection_uri": self._uri(p),
                    "connection_parameters": {
                        "database": p.database,
                        "password": p.password,
                        "role": p.role,
                        "host": "127.0.0.1",
                    },
                }
            ],
            "roles": [{"branch_id": p.branch_id, "name": p.role, "password": p.password}],
            "databases": [{"branch_id": p.branch_id, "name": p.database, "owner_name": p.role}],
            "operations": self._ops(p),
            "branch": {"id": p.branch_id, "project_id": pid, "name": "main"},
            "endpoints": [{"id": f"ep-{new_id(4)}", "host": "127.0.0.1"}],
        }


def _iso(mono: float) -> str:
    return dt.datetime.now(dt.UTC).isoformat()
