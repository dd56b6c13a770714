"""The tenant's webhook endpoints and deliveries (``webhook:manage``; keys:
``webhooks:read|write``).

Endpoints and deliveries live in the catalog; every call here is confined to the caller's
tenant (another tenant's endpoint or delivery id is unknown: 404). A signing secret is in the
answer of create and rotate only, never again.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field

from bizosctl.api.deps import Ctx, Needs
from bizosctl.notify import deliveries, webhooks
from bizosctl.notify.deliveries import DeliveryPublic, ReplayPlan
from bizosctl.notify.webhooks import EndpointPublic
from bizosctl.resources.pages import Page

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

Read = Annotated[Ctx, Depends(Needs("webhook:manage", "webhooks:read"))]
Write = Annotated[Ctx, Depends(Needs("webhook:manage", "webhooks:write"))]
Events = list[Annotated[str, Field(max_length=100)]]


class EndpointRequest(BaseModel):
    url: str = Field(min_length=1, max_length=webhooks.URL_MAX)
    events: Events = Field(min_length=1, max_length=100)


class EndpointUpdate(BaseModel):
    url: str | None = Field(default=None, min_length=1, max_length=webhooks.URL_MAX)
    events: Events | None = Field(default=None, min_length=1, max_length=100)
    enabled: bool | None = Field(default=None, description="false disables, true re-enables.")


class SecretRotation(BaseModel):
    grace_seconds: int = Field(default=86_400, ge=0, le=webhooks.MAX_OVERLAP_MS // 1000)


class EndpointCreated(BaseModel):
    endpoint: EndpointPublic
    secret: str = Field(description="The signing secret (whsec_...): shown this once.")


# /deliveries first: "/{endpoint_id}" would take the word for an id
@router.get("/deliveries", summary="The tenant's deliveries, newest first, by cursor")
def list_deliveries(
    ctx: Read,
    endpoint_id: uuid.UUID | None = None,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[DeliveryPublic]:
    return deliveries.page_deliveries(
        ctx.ctl,
        tenant=ctx.caller.tenant,
        endpoint_id=endpoint_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a delivery again from its first attempt (same webhook-id)",
)
def replay_delivery(delivery_id: uuid.UUID, ctx: Write) -> ReplayPlan:
    return deliveries.replay(ctx.ctl, delivery_id=str(delivery_id), tenant=ctx.caller.tenant)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Add an endpoint (secret once)")
def create_endpoint(body: EndpointRequest, ctx: Write) -> EndpointCreated:
    ep, secret = webhooks.add_endpoint(
        ctx.ctl, tenant=ctx.caller.tenant, url=body.url, events=body.events
    )
    return EndpointCreated(endpoint=ep, secret=secret)


@router.get("", summary="The tenant's endpoints (never their secrets)")
def list_endpoints(ctx: Read) -> Page[EndpointPublic]:
    items = webhooks.list_endpoints(ctx.ctl, tenant=ctx.caller.tenant)
    return Page(items=items, next_cursor=None)


@router.get("/{endpoint_id}", summary="One endpoint")
def get_endpoint(endpoint_id: uuid.UUID, ctx: Read) -> EndpointPublic:
    return webhooks.get_endpoint(ctx.ctl, endpoint_id, tenant=ctx.caller.tenant)


@router.patch("/{endpoint_id}", summary="Change the URL or events; disable or re-enable")
def update_endpoint(endpoint_id: uuid.UUID, body: EndpointUpdate, ctx: Write) -> EndpointPublic:
    return webhooks.update_endpoint(
        ctx.ctl,
        endpoint_id,
        tenant=ctx.caller.tenant,
        url=body.url,
        events=body.events,
        enabled=body.enabled,
    )


@router.delete(
    "/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an endpoint"
)
def delete_endpoint(endpoint_id: uuid.UUID, ctx: Write) -> None:
    webhooks.delete_endpoint(ctx.ctl, endpoint_id, tenant=ctx.caller.tenant)


@router.post(
    "/{endpoint_id}/secret/rotate",
    status_code=status.HTTP_201_CREATED,
    summary="A new signing secret (shown once); the previous ones sign for the grace period",
)
def rotate_secret(
    endpoint_id: uuid.UUID, ctx: Write, body: SecretRotation | None = None
) -> EndpointCreated:
    grace = (body or SecretRotation()).grace_seconds
    ep, secret = webhooks.rotate_secret(
        ctx.ctl, endpoint_id, overlap_ms=grace * 1000, tenant=ctx.caller.tenant
    )
    return EndpointCreated(endpoint=ep, secret=secret)
