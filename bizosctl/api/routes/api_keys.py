"""The tenant's API keys (``api_key:manage``; keys: ``api_keys:read|write``).

Keys live in the catalog; every call here is confined to the caller's tenant (another
tenant's key id or prefix is unknown: 404). The token is in the answer of create and rotate
only, never again. An API key cannot make or rotate into a key with scopes wider than its own.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, Field

from bizosctl.api.deps import Ctx, Needs
from bizosctl.resources.pages import Page
from bizosctl.security import apikeys as core
from bizosctl.security.apikeys import ApiKeyPublic

router = APIRouter(prefix="/api/v1/api-keys", tags=["api-keys"])

Read = Annotated[Ctx, Depends(Needs("api_key:manage", "api_keys:read"))]
Write = Annotated[Ctx, Depends(Needs("api_key:manage", "api_keys:write"))]
KeyRef = Annotated[str, Path(min_length=1, max_length=200, description="The key's id or prefix.")]


class ApiKeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=core.NAME_MAX)
    scopes: list[str] = Field(min_length=1, max_length=50)
    expires_in_seconds: int | None = Field(default=None, ge=1, le=core.MAX_EXPIRY_MS // 1000)


class RotateRequest(BaseModel):
    grace_seconds: int = Field(default=86_400, ge=0, le=core.MAX_GRACE_MS // 1000)


class ApiKeyCreated(BaseModel):
    key: ApiKeyPublic
    token: str = Field(description="The key itself: shown this once, store it now.")


def _within(ctx: Ctx) -> frozenset[str] | None:
    return ctx.caller.scopes if ctx.caller.kind == "api_key" else None


@router.get("", summary="The tenant's API keys (never their secrets)")
def list_keys(ctx: Read) -> Page[ApiKeyPublic]:
    return Page(items=core.list_api_keys(ctx.ctl, tenant=ctx.caller.tenant), next_cursor=None)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a key (token shown once)")
def create_key(body: ApiKeyRequest, ctx: Write) -> ApiKeyCreated:
    key, token = core.create_api_key(
        ctx.ctl,
        tenant=ctx.caller.tenant,
        name=body.name,
        scopes=body.scopes,
        expires_ms=None if body.expires_in_seconds is None else body.expires_in_seconds * 1000,
        within=_within(ctx),
    )
    return ApiKeyCreated(key=key, token=token)


@router.get("/{key}", summary="One key, by id or prefix")
def get_key(key: KeyRef, ctx: Read) -> ApiKeyPublic:
    return core.get_api_key(ctx.ctl, key, tenant=ctx.caller.tenant)


@router.post(
    "/{key}/rotate",
    status_code=status.HTTP_201_CREATED,
    summary="Replace a key; the old one works for the grace period",
)
def rotate_key(key: KeyRef, ctx: Write, body: RotateRequest | None = None) -> ApiKeyCreated:
    grace = (body or RotateRequest()).grace_seconds
    new, token = core.rotate_api_key(
        ctx.ctl, key, grace_ms=grace * 1000, tenant=ctx.caller.tenant, within=_within(ctx)
    )
    return ApiKeyCreated(key=new, token=token)


@router.delete("/{key}", summary="Revoke a key now")
def revoke_key(key: KeyRef, ctx: Write) -> ApiKeyPublic:
    return core.revoke_api_key(ctx.ctl, key, tenant=ctx.caller.tenant)
