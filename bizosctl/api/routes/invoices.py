"""Customers and invoices (``invoices:read|write``, ``customers:read|write``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field

from bizosctl.api.deps import Ctx, Needs
from bizosctl.api.params import IsoDate
from bizosctl.resources import invoices as core
from bizosctl.resources.pages import Page

router = APIRouter(prefix="/api/v1", tags=["invoices"])

Read = Annotated[Ctx, Depends(Needs("invoice:read", "invoices:read"))]
Create = Annotated[Ctx, Depends(Needs("invoice:create", "invoices:write"))]
Update = Annotated[Ctx, Depends(Needs("invoice:update", "invoices:write"))]
Delete = Annotated[Ctx, Depends(Needs("invoice:delete", "invoices:write"))]
CustomersRead = Annotated[Ctx, Depends(Needs("customer:read", "customers:read"))]
CustomersWrite = Annotated[Ctx, Depends(Needs("customer:write", "customers:write"))]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]


class PaymentRequest(BaseModel):
    reference: str | None = Field(default=None, max_length=200)


@router.post("/customers", status_code=status.HTTP_201_CREATED, summary="Add a customer")
def create_customer(body: core.CustomerCreate, ctx: CustomersWrite) -> core.CustomerPublic:
    with ctx.session() as s:
        return core.create_customer(s, tenant_id=ctx.caller.tenant_id, data=body, ctl=ctx.ctl)


@router.get("/customers", summary="Customers, newest first")
def list_customers(
    ctx: CustomersRead, limit: Limit = 50, cursor: Cursor = None
) -> Page[core.CustomerPublic]:
    with ctx.session(read_only=True) as s:
        return core.list_customers(s, limit=limit, cursor=cursor)


@router.get("/customers/{customer_id}", summary="One customer")
def get_customer(customer_id: uuid.UUID, ctx: CustomersRead) -> core.CustomerPublic:
    with ctx.session(read_only=True) as s:
        return core.get_customer(s, customer_id)


@router.post("/invoices", status_code=status.HTTP_201_CREATED, summary="Create an invoice")
def create_invoice(body: core.InvoiceCreate, ctx: Create) -> core.InvoicePublic:
    with ctx.session() as s:
        return core.create_invoice(s, tenant_id=ctx.caller.tenant_id, data=body)


@router.get("/invoices", summary="Invoices, newest first, filtered, by cursor")
def list_invoices(
    ctx: Read,
    status: Annotated[core.Status | None, Query()] = None,
    customer_id: uuid.UUID | None = None,
    due_before: IsoDate = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[core.InvoicePublic]:
    with ctx.session(read_only=True) as s:
        return core.list_invoices(
            s,
            status=status,
            customer_id=customer_id,
            due_before=due_before,
            limit=limit,
            cursor=cursor,
        )


@router.get("/invoices/{invoice_id}", summary="One invoice with its items")
def get_invoice(invoice_id: uuid.UUID, ctx: Read) -> core.InvoicePublic:
    with ctx.session(read_only=True) as s:
        return core.get_invoice(s, invoice_id)


@router.post("/invoices/{invoice_id}/pay", summary="Mark an invoice paid")
def pay_invoice(
    invoice_id: uuid.UUID, ctx: Update, body: PaymentRequest | None = None
) -> core.InvoicePublic:
    with ctx.session() as s:
        return core.mark_paid(
            s,
            tenant_id=ctx.caller.tenant_id,
            invoice_id=invoice_id,
            reference=body.reference if body else None,
        )


@router.delete(
    "/invoices/{invoice_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an invoice"
)
def delete_invoice(invoice_id: uuid.UUID, ctx: Delete) -> None:
    with ctx.session() as s:
        core.delete_invoice(s, invoice_id=invoice_id)
