"""Customers and invoices of a tenant, with their domain events.

Amounts are decimals with two places; VAT is 11 % (Indonesia's PPN) of the subtotal after
discount, and the discount is at most 20 % of the subtotal. Every change emits its event
(``invoice.created``, ``invoice.paid``, ``invoice.deleted``) through the outbox in the same
transaction, so a webhook is sent exactly when the change committed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bizosctl.catalog.control import Control
from bizosctl.errors import AlreadyExists, InvalidInput, NotFound
from bizosctl.notify.outbox import emit_event
from bizosctl.resources.pages import Page, keyset
from tenant_schema.models import Customer, Invoice, InvoiceItem, Transaction

VAT = Decimal("0.11")
MAX_DISCOUNT = Decimal("0.20")
CENT = Decimal("0.01")
Status = Literal["draft", "sent", "paid", "void"]


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


class CustomerCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    #: stored encrypted with its blind index (never returned in clear by the list)
    email: str | None = Field(default=None, max_length=254)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")


class CustomerPublic(BaseModel):
    id: uuid.UUID
    name: str
    country: str | None
    created_at: dt.datetime


class ItemCreate(BaseModel):
    description: str = Field(min_length=1, max_length=500)
    quantity: Decimal = Field(gt=0, le=Decimal("1000000"), max_digits=14, decimal_places=3)
    unit_price: Decimal = Field(ge=0, le=Decimal("1000000000000"), max_digits=14, decimal_places=2)


class InvoiceCreate(BaseModel):
    customer_id: uuid.UUID
    number: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9/_.-]*$")
    currency: str = Field(default="IDR", pattern=r"^[A-Z]{3}$")
    issued_on: dt.date | None = None
    due_on: dt.date | None = None
    discount: Decimal = Field(default=Decimal(0), ge=0, max_digits=14, decimal_places=2)
    items: list[ItemCreate] = Field(min_length=1, max_length=200)

    @field_validator("due_on")
    @classmethod
    def _due_after_issue(cls, due: dt.date | None, info: object) -> dt.date | None:
        data = getattr(info, "data", {})
        issued = data.get("issued_on")
        if due is not None and issued is not None and due < issued:
            raise ValueError("the due date is before the issue date")
        return due


class ItemPublic(BaseModel):
    id: uuid.UUID
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


class InvoicePublic(BaseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    number: str
    status: str
    currency: str
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    total: Decimal
    issued_on: dt.date | None
    due_on: dt.date | None
    paid_at: dt.datetime | None
    created_at: dt.datetime
    items: list[ItemPublic] | None = None


def _customer_public(c: Customer) -> CustomerPublic:
    return CustomerPublic(id=c.id, name=c.name, country=c.country, created_at=c.created_at)


def create_customer(
    s: Session, *, tenant_id: uuid.UUID, data: CustomerCreate, ctl: Control | None = None
) -> CustomerPublic:
    """Add a customer; one with an e-mail needs ``ctl`` (encryption, blind index and the
    GDPR routing key, written before the tenant's transaction commits)."""
    cid = uuid.uuid4()
    values: dict[str, object] = {
        "tenant_id": tenant_id,
        "id": cid,
        "name": data.name.strip(),
        "country": data.country,
    }
    if data.email is not None:
        if ctl is None:
            raise InvalidInput("a customer's e-mail needs the control plane (keyring)")
        from bizosctl.privacy.subjects import note_subject
        from bizosctl.security.fields import blind_index, encrypt
        from bizosctl.tenancy.members import check_email

        email = check_email(data.email)
        note_subject(ctl, email, tenant_id)
        ring = ctl.keyring
        values["email_enc"] = encrypt(
            ring, email, tenant_id=tenant_id, table="customers", column="email", row=cid
        )
        values["email_bidx"] = blind_index(ring, email)
    row = s.execute(insert(Customer).values(**values).returning(Customer)).scalar_one()
    return _customer_public(row)


def list_customers(
    s: Session, *, limit: int = 50, cursor: str | None = None
) -> Page[CustomerPublic]:
    rows, nxt = keyset(
        s, select(Customer), at=Customer.created_at, row_id=Customer.id, limit=limit, cursor=cursor
    )
    return Page(items=[_customer_public(c) for c in rows], next_cursor=nxt)


def get_customer(s: Session, customer_id: uuid.UUID) -> CustomerPublic:
    row = s.execute(select(Customer).where(Customer.id == customer_id)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no customer {customer_id}")
    return _customer_public(row)


def _public(inv: Invoice, items: list[InvoiceItem] | None = None) -> InvoicePublic:
    return InvoicePublic(
        id=inv.id,
        customer_id=inv.customer_id,
        number=inv.number,
        status=inv.status,
        currency=inv.currency,
        subtotal=inv.subtotal,
        discount=inv.discount,
        tax=inv.tax,
        total=inv.total,
        issued_on=inv.issued_on,
        due_on=inv.due_on,
        paid_at=inv.paid_at,
        created_at=inv.created_at,
        items=None
        if items is None
        else [
            ItemPublic(
                id=i.id,
                description=i.description,
                quantity=i.quantity,
                unit_price=i.unit_price,
                amount=i.amount,
            )
            for i in items
        ],
    )


def _event_data(inv: InvoicePublic) -> dict[str, object]:
    return {
        "id": str(inv.id),
        "number": inv.number,
        "status": inv.status,
        "currency": inv.currency,
        "total": str(inv.total),
        "customer_id": str(inv.customer_id),
    }


def create_invoice(s: Session, *, tenant_id: uuid.UUID, data: InvoiceCreate) -> InvoicePublic:
    """Create an invoice with its items (status ``draft``); emits ``invoice.created``."""
    get_customer(s, data.customer_id)  # NotFound for another tenant's customer, too (RLS)
    amounts = [_money(i.quantity * i.unit_price) for i in data.items]
    subtotal = sum(amounts, Decimal(0))
    if data.discount > _money(subtotal * MAX_DISCOUNT):
        raise InvalidInput("discount: at most 20 % of the subtotal")
    tax = _money((subtotal - data.discount) * VAT)
    inv_id = uuid.uuid4()
    try:
        with s.begin_nested():
            s.execute(
                insert(Invoice).values(
                    tenant_id=tenant_id,
                    id=inv_id,
                    customer_id=data.customer_id,
                    number=data.number,
                    currency=data.currency,
                    subtotal=subtotal,
                    discount=data.discount,
                    tax=tax,
                    total=subtotal - data.discount + tax,
                    issued_on=data.issued_on,
                    due_on=data.due_on,
                )
            )
    except IntegrityError:
        raise AlreadyExists(f"an invoice numbered {data.number!r} exists") from None
    s.execute(
        insert(InvoiceItem),
        [
            {
                "tenant_id": tenant_id,
                "invoice_id": inv_id,
                "description": i.description,
                "quantity": i.quantity,
                "unit_price": i.unit_price,
                "amount": a,
            }
            for i, a in zip(data.items, amounts, strict=True)
        ],
    )
    out = get_invoice(s, inv_id)
    emit_event(s, "invoice.created", _event_data(out))
    return out


def get_invoice(s: Session, invoice_id: uuid.UUID, *, lock: bool = False) -> InvoicePublic:
    stmt = select(Invoice).where(Invoice.id == invoice_id)
    if lock:
        stmt = stmt.with_for_update()
    inv = s.execute(stmt).scalar_one_or_none()
    if inv is None:
        raise NotFound(f"no invoice {invoice_id}")
    items = list(
        s.execute(
            select(InvoiceItem).where(InvoiceItem.invoice_id == invoice_id).order_by(InvoiceItem.id)
        ).scalars()
    )
    return _public(inv, items)


def list_invoices(
    s: Session,
    *,
    status: str | None = None,
    customer_id: uuid.UUID | None = None,
    due_before: dt.date | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Page[InvoicePublic]:
    """Newest first; ``next_cursor`` continues after the last one shown."""
    stmt = select(Invoice)
    if status:
        stmt = stmt.where(Invoice.status == status)
    if customer_id:
        stmt = stmt.where(Invoice.customer_id == customer_id)
    if due_before:
        stmt = stmt.where(Invoice.due_on < due_before)
    rows, nxt = keyset(
        s, stmt, at=Invoice.created_at, row_id=Invoice.id, limit=limit, cursor=cursor
    )
    return Page(items=[_public(r) for r in rows], next_cursor=nxt)


def mark_paid(
    s: Session, *, tenant_id: uuid.UUID, invoice_id: uuid.UUID, reference: str | None = None
) -> InvoicePublic:
    """Mark an invoice paid (records the payment); emits ``invoice.paid``. Paying a paid
    invoice again changes nothing and emits nothing."""
    inv = get_invoice(s, invoice_id, lock=True)
    if inv.status == "paid":
        return inv
    if inv.status == "void":
        raise InvalidInput("a void invoice cannot be paid")
    s.execute(
        update(Invoice).where(Invoice.id == invoice_id).values(status="paid", paid_at=func.now())
    )
    s.execute(
        insert(Transaction).values(
            tenant_id=tenant_id,
            invoice_id=invoice_id,
            kind="payment",
            amount=inv.total,
            currency=inv.currency,
            reference=reference,
        )
    )
    out = get_invoice(s, invoice_id)
    emit_event(s, "invoice.paid", _event_data(out))
    return out


def delete_invoice(s: Session, *, invoice_id: uuid.UUID) -> None:
    """Delete a draft or sent invoice; a paid one is kept (the books need it). Emits
    ``invoice.deleted``."""
    inv = get_invoice(s, invoice_id, lock=True)
    if inv.status == "paid":
        raise InvalidInput("a paid invoice cannot be deleted")
    s.execute(delete(Invoice).where(Invoice.id == invoice_id))
    emit_event(s, "invoice.deleted", _event_data(inv))
