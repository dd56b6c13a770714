"""Pydantic models that cross a boundary (``--json`` output, API bodies)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field


class ServerPublic(BaseModel):
    name: str
    provider: str
    url: str = Field(description="Without any password.")


class RegionPublic(BaseModel):
    name: str
    servers: list[ServerPublic]


class TenantPublic(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    tier: str
    region: str
    status: str
    server: str | None
    database: str | None
    schema_: str | None = Field(serialization_alias="schema")
    created_at: dt.datetime
    #: the zone of its "today" and 05:00: its own setting, else its region's default
    time_zone: str = "UTC"
    time_zone_is_default: bool = True

    model_config = {"populate_by_name": True}


class TenantDetail(TenantPublic):
    status_reason: str | None = None
    row_counts: dict[str, int] = {}
    #: sources earlier moves kept (``tenant move --purge-source`` drops them)
    kept_sources: list[dict[str, object]] = []


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[object]]
    rowcount: int
    read_only: bool
    truncated: bool = False  # more rows than --limit: only the first ones are in rows
