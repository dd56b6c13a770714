"""SQLAlchemy 2.0 models of a tenant's data (no schema: the search_path picks the target)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TIMESTAMP

EMBEDDING_DIM = 384
NOW = text("now()")
NEW_ID = text("gen_random_uuid()")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map: dict[Any, Any] = {
        uuid.UUID: UUID(as_uuid=True),
        dt.datetime: TIMESTAMP(timezone=True),
        dict[str, Any]: JSONB,
        Decimal: Numeric(14, 2),
    }


class TenantRow:
    # sort_order puts tenant_id first in the table and in every primary key.
    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, sort_order=-20)


class Keyed(TenantRow):
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=NEW_ID, sort_order=-10)


def _fk(cols: list[str], table: str, *, ondelete: str = "CASCADE") -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["tenant_id", *cols], [f"{table}.tenant_id", f"{table}.id"], ondelete=ondelete
    )


class TenantState(Base):
    """Mirror of the catalog's status, read by the write guard trigger."""

    __tablename__ = "tenant_state"
    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, sort_order=-20)
    slug: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Member(Keyed, Base):
    __tablename__ = "members"
    email_enc: Mapped[str] = mapped_column(Text)
    email_bidx: Mapped[str] = mapped_column(Text)
    name_enc: Mapped[str] = mapped_column(Text)
    phone_enc: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    #: bcrypt (12 rounds); NULL for a member who logs in only through OAuth or is invited
    password_hash: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("tenant_id", "email_bidx"),)


class Role(Keyed, Base):
    __tablename__ = "roles"
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)


class Permission(Keyed, Base):
    __tablename__ = "permissions"
    role_id: Mapped[uuid.UUID]
    permission: Mapped[str] = mapped_column(Text)
    __table_args__ = (
        _fk(["role_id"], "roles"),
        UniqueConstraint("tenant_id", "role_id", "permission"),
    )


class MemberRole(TenantRow, Base):
    __tablename__ = "member_roles"
    member_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    role_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    __table_args__ = (_fk(["member_id"], "members"), _fk(["role_id"], "roles"))


class Project(Keyed, Base):
    __tablename__ = "projects"
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class ProjectMember(TenantRow, Base):
    __tablename__ = "project_members"
    project_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    member_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    access: Mapped[str] = mapped_column(Text, server_default="editor")
    __table_args__ = (_fk(["project_id"], "projects"), _fk(["member_id"], "members"))


class Task(Keyed, Base):
    __tablename__ = "tasks"
    project_id: Mapped[uuid.UUID]
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="todo")
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    position: Mapped[int] = mapped_column(Integer, server_default="0")
    assignee_id: Mapped[uuid.UUID | None]
    due_on: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    __table_args__ = (
        _fk(["project_id"], "projects"),
        _fk(["assignee_id"], "members", ondelete="NO ACTION"),
        Index("ix_tasks_board", "tenant_id", "project_id", "status", "position"),
    )


class Customer(Keyed, Base):
    __tablename__ = "customers"
    name: Mapped[str] = mapped_column(Text)
    email_enc: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Invoice(Keyed, Base):
    __tablename__ = "invoices"
    customer_id: Mapped[uuid.UUID]
    number: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="draft")
    currency: Mapped[str] = mapped_column(Text, server_default="IDR")
    subtotal: Mapped[Decimal] = mapped_column(server_default="0")
    discount: Mapped[Decimal] = mapped_column(server_default="0")
    tax: Mapped[Decimal] = mapped_column(server_default="0")
    total: Mapped[Decimal] = mapped_column(server_default="0")
    issued_on: Mapped[dt.date | None] = mapped_column(Date)
    due_on: Mapped[dt.date | None] = mapped_column(Date)
    paid_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    __table_args__ = (
        _fk(["customer_id"], "customers", ondelete="RESTRICT"),
        UniqueConstraint("tenant_id", "number"),
        Index("ix_invoices_status_due", "tenant_id", "status", "due_on"),
    )


class InvoiceItem(Keyed, Base):
    __tablename__ = "invoice_items"
    invoice_id: Mapped[uuid.UUID]
    description: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Numeric(14, 3), server_default="1")
    unit_price: Mapped[Decimal]
    amount: Mapped[Decimal]
    __table_args__ = (_fk(["invoice_id"], "invoices"),)


class Transaction(Keyed, Base):
    __tablename__ = "transactions"
    invoice_id: Mapped[uuid.UUID | None]
    kind: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(Text, server_default="IDR")
    reference: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    __table_args__ = (_fk(["invoice_id"], "invoices", ondelete="SET NULL (invoice_id)"),)


class Document(Keyed, Base):
    __tablename__ = "documents"
    title: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(Text, server_default="text/plain")
    storage_key: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_by: Mapped[uuid.UUID | None]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class DocumentChunk(Keyed, Base):
    __tablename__ = "document_chunks"
    document_id: Mapped[uuid.UUID]
    chunk_index: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIM), nullable=True)
    __table_args__ = (_fk(["document_id"], "documents"),)


class Notification(Keyed, Base):
    __tablename__ = "notifications"
    member_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    read_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    __table_args__ = (
        _fk(["member_id"], "members"),
        Index("ix_notifications_unread", "tenant_id", "member_id", "read_at"),
    )


class Consent(Keyed, Base):
    __tablename__ = "consents"
    member_id: Mapped[uuid.UUID]
    purpose: Mapped[str] = mapped_column(Text)
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    #: the version of the text agreed to; withdrawn_at: when it was withdrawn (the row stays)
    version: Mapped[str] = mapped_column(Text, server_default="1")
    withdrawn_at: Mapped[dt.datetime | None]
    __table_args__ = (
        _fk(["member_id"], "members"),
        Index("ix_consents_member", "tenant_id", "member_id", "purpose"),
    )


class Setting(TenantRow, Base):
    __tablename__ = "settings"
    branding: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    smtp: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    timezone: Mapped[str] = mapped_column(Text, server_default="UTC")
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class OnboardingProgress(TenantRow, Base):
    __tablename__ = "onboarding_progress"
    step: Mapped[str] = mapped_column(Text, primary_key=True)
    completed_at: Mapped[dt.datetime | None]
    data: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class AuditLog(Keyed, Base):
    __tablename__ = "audit_logs"
    actor: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    table_name: Mapped[str] = mapped_column(Text)
    row_key: Mapped[dict[str, Any] | None]
    old: Mapped[dict[str, Any] | None]
    new: Mapped[dict[str, Any] | None]
    txid: Mapped[int] = mapped_column(BigInteger, server_default=text("txid_current()"))
    at: Mapped[dt.datetime] = mapped_column(server_default=text("clock_timestamp()"))
    __table_args__ = (Index("ix_audit_logs_at", "tenant_id", "at"),)


class OutboxEvent(TenantRow, Base):
    """A domain event written in the transaction of the change that caused it; the webhook
    relay (``bizosctl.notify.relay``) moves it to the catalog's deliveries and deletes it."""

    __tablename__ = "outbox"
    id: Mapped[str] = mapped_column(Text, primary_key=True)  # evt_<32 hex>: the webhook-id
    type: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # Set for an event meant for one endpoint only (``webhook test``), whatever it subscribes.
    endpoint_id: Mapped[uuid.UUID | None]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=text("clock_timestamp()"))
    __table_args__ = (Index("ix_outbox_created_at", "created_at"),)


class AuthSession(Keyed, Base):
    """One login of a member (password or OAuth): its refresh tokens form one family, and
    revoking the session (logout, a refresh token used twice) ends them all. An access token
    names its session (``sid``), so a revoked session's access tokens are refused too."""

    __tablename__ = "auth_sessions"
    member_id: Mapped[uuid.UUID]
    method: Mapped[str] = mapped_column(Text, server_default="password")
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (_fk(["member_id"], "members"),)


class RefreshToken(Keyed, Base):
    """A refresh token, stored as its SHA-256 only; each use replaces it (``used_at``)."""

    __tablename__ = "refresh_tokens"
    session_id: Mapped[uuid.UUID]
    token_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    used_at: Mapped[dt.datetime | None]
    __table_args__ = (
        _fk(["session_id"], "auth_sessions"),
        UniqueConstraint("tenant_id", "token_hash"),
    )


class LoginThrottle(TenantRow, Base):
    """Failed logins per e-mail (its blind index), known or not: an unknown address slows
    down and locks exactly as a member's does, so the answers tell nothing apart."""

    __tablename__ = "login_throttle"
    email_bidx: Mapped[str] = mapped_column(Text, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    last_failed_at: Mapped[dt.datetime | None]
    locked_until: Mapped[dt.datetime | None]


class MemberIdentity(TenantRow, Base):
    """A member's account at an OAuth provider (``provider`` + its stable ``subject``)."""

    __tablename__ = "member_identities"
    provider: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, primary_key=True)
    member_id: Mapped[uuid.UUID]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    __table_args__ = (_fk(["member_id"], "members"),)


class AiUsage(TenantRow, Base):
    """The usage ledger: one row per call through the LLM gate (``bizosctl.ai``), never the
    text. ``reserved`` is the cost held against the budget while the call runs (status
    ``reserved``); the settled row (``done``) has the real tokens and cost."""

    __tablename__ = "ai_usage"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=NEW_ID)
    at: Mapped[dt.datetime] = mapped_column(server_default=text("clock_timestamp()"))
    period: Mapped[dt.date] = mapped_column(Date)  # the budget month (first day, UTC)
    member_id: Mapped[uuid.UUID | None]
    feature: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="done")  # reserved|done|refused
    tokens_in: Mapped[int] = mapped_column(Integer, server_default="0")
    tokens_out: Mapped[int] = mapped_column(Integer, server_default="0")
    reserved: Mapped[Decimal] = mapped_column(Numeric(14, 6), server_default="0")
    cost: Mapped[Decimal] = mapped_column(Numeric(14, 6), server_default="0")
    latency_ms: Mapped[float | None]
    overhead_ms: Mapped[float | None]
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    degraded: Mapped[bool] = mapped_column(Boolean, server_default="false")
    reason: Mapped[str | None] = mapped_column(Text)  # why degraded or refused
    entities: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    __table_args__ = (
        _fk(["member_id"], "members", ondelete="SET NULL (member_id)"),
        Index("ix_ai_usage_at", "tenant_id", "at"),
    )


class AiSpend(TenantRow, Base):
    """The budget counter: what a tenant's ledger holds for one month (reserved and settled
    costs), kept in the transaction of every ledger write, so that a budget check is one row
    lock and not a sum over the month."""

    __tablename__ = "ai_spend"
    period: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    spent: Mapped[Decimal] = mapped_column(Numeric(14, 6), server_default="0")
    calls: Mapped[int] = mapped_column(Integer, server_default="0")


class Digest(Keyed, Base):
    """A CEO digest: one tenant's figures for one local day and three insights on them
    (``bizosctl.digest``). Made once per day; ``digest run --force`` adds a new version."""

    __tablename__ = "digests"
    day: Mapped[dt.date] = mapped_column(Date)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    zone: Mapped[str] = mapped_column(Text)
    figures: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    insights: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    provider: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    degraded: Mapped[bool] = mapped_column(Boolean, server_default="false")
    reason: Mapped[str | None] = mapped_column(Text)
    usage_id: Mapped[uuid.UUID | None]
    deliver: Mapped[str] = mapped_column(Text, server_default="both")  # email | card | both
    cards: Mapped[int] = mapped_column(Integer, server_default="0")  # Admins given a card
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    __table_args__ = (UniqueConstraint("tenant_id", "day", "version"),)


class EmailSender(TenantRow, Base):
    """The tenant's white-label sender: who its e-mails come from and how they look."""

    __tablename__ = "email_senders"
    from_address: Mapped[str | None] = mapped_column(Text)
    from_name: Mapped[str | None] = mapped_column(Text)
    reply_to: Mapped[str | None] = mapped_column(Text)
    logo_url: Mapped[str | None] = mapped_column(Text)
    primary_color: Mapped[str] = mapped_column(Text, server_default="#1f2937")
    accent_color: Mapped[str] = mapped_column(Text, server_default="#2563eb")
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class EmailMessage(Keyed, Base):
    """One e-mail to one member; the address is read (decrypted) from the member at send
    time, never copied here. Sent by the ``email.send`` job; every try is an attempt row."""

    __tablename__ = "email_messages"
    member_id: Mapped[uuid.UUID]
    template: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    digest_id: Mapped[uuid.UUID | None]
    status: Mapped[str] = mapped_column(Text, server_default="queued")  # queued|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    sent_at: Mapped[dt.datetime | None]
    __table_args__ = (
        _fk(["member_id"], "members"),
        _fk(["digest_id"], "digests"),
        UniqueConstraint("tenant_id", "digest_id", "member_id"),
        Index("ix_email_messages_status", "tenant_id", "status"),
    )


class EmailAttempt(Keyed, Base):
    """One try at sending one e-mail: when, how it went, the server's answer."""

    __tablename__ = "email_attempts"
    message_id: Mapped[uuid.UUID]
    at: Mapped[dt.datetime] = mapped_column(server_default=text("clock_timestamp()"))
    outcome: Mapped[str] = mapped_column(Text)  # sent | failed
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (_fk(["message_id"], "email_messages"),)


#: Every tenant table, parents before children (the order to copy and to create).
TENANT_TABLES: tuple[str, ...] = tuple(t.name for t in metadata.sorted_tables)


#: Columns encrypted with the keyring's ``pii`` key: table -> {column: blind index column or
#: None}. The associated data names the column without ``_enc`` (``members/email``).
ENCRYPTED_COLUMNS: dict[str, dict[str, str | None]] = {
    "members": {"email_enc": "email_bidx", "name_enc": None, "phone_enc": None},
    "customers": {"email_enc": "email_bidx"},
}
