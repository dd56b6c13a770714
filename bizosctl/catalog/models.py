"""Tables of the ``bizos_control`` database (Alembic: ``migrations/control``)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TIMESTAMP

NOW = text("now()")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
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
        list[Any]: JSONB,
        str: Text,
    }


class Region(Base):
    __tablename__ = "regions"
    name: Mapped[str] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Server(Base):
    __tablename__ = "servers"
    name: Mapped[str] = mapped_column(primary_key=True)
    region: Mapped[str] = mapped_column(ForeignKey("regions.name", ondelete="RESTRICT"))
    provider: Mapped[str]  # embedded | postgres | neon | supabase
    port: Mapped[int | None] = mapped_column(Integer)  # embedded: TCP port, None = socket only
    url_enc: Mapped[str | None]  # postgres: the operator's URL, encrypted (db-credentials)
    app_password_enc: Mapped[str | None]  # password of the shared database's login role
    # that login role now: bizos_app_shared or bizos_app_shared__b (rotation alternates)
    app_role: Mapped[str] = mapped_column(server_default="bizos_app_shared")
    is_default: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    # neon | supabase: where the provider makes projects (e.g. aws-ap-southeast-1), its org
    provider_region: Mapped[str | None]
    provider_org: Mapped[str | None]
    # a tenant's own cloud project: its id at the provider, the provider server that made it
    project_id: Mapped[str | None]
    parent: Mapped[str | None]
    __table_args__ = (
        Index(
            "uq_servers_provider_project",
            "provider",
            "project_id",
            unique=True,
            postgresql_where=text("project_id IS NOT NULL"),
        ),
    )


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    slug: Mapped[str]
    name: Mapped[str]
    tier: Mapped[str]  # shared | schema | isolated
    region: Mapped[str] = mapped_column(ForeignKey("regions.name", ondelete="RESTRICT"))
    # provisioning | active | read_only | suspended | moving | deleting | deleted
    status: Mapped[str] = mapped_column(server_default="provisioning")
    status_reason: Mapped[str | None]
    owner_email_bidx: Mapped[str | None]
    operation_id: Mapped[uuid.UUID | None]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    deleted_at: Mapped[dt.datetime | None]
    # The plan names an entry of the ai_plans setting (monthly price, AI budget); ai_budget
    # (USD a month) overrides the plan's; ai_over_budget: refuse | offline (bizosctl.ai).
    plan: Mapped[str] = mapped_column(server_default="free")
    ai_budget: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    ai_over_budget: Mapped[str] = mapped_column(server_default="refuse")
    # IANA zone of the tenant's "today" and 05:00 (None: its region's default, see tenancy.zones)
    time_zone: Mapped[str | None]
    __table_args__ = (
        CheckConstraint(
            "ai_over_budget IN ('refuse', 'offline')", name="ck_tenants_ai_over_budget"
        ),
        # A slug names one live tenant; deleted tenants stay on record.
        Index(
            "uq_tenants_live_slug",
            "slug",
            unique=True,
            postgresql_where=text("status <> 'deleted'"),
        ),
    )


class Route(Base):
    __tablename__ = "routes"
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    server: Mapped[str] = mapped_column(ForeignKey("servers.name", ondelete="RESTRICT"))
    database: Mapped[str]
    schema: Mapped[str]
    role: Mapped[str]  # the login role the application uses
    password_enc: Mapped[str | None]  # isolated tier: the tenant role's password, encrypted
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Operation(Base):
    __tablename__ = "operations"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str]  # an OperationKind
    target: Mapped[str]
    # an OperationStatus: queued|running|done|failed|aborted|cancelled (checked in SQL)
    status: Mapped[str] = mapped_column(server_default="running")
    params: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    error: Mapped[str | None]
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None]
    started_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    finished_at: Mapped[dt.datetime | None]
    progress: Mapped[dict[str, Any] | None]  # {"done", "total", "note"}: what ops show draws
    cancel_requested_at: Mapped[dt.datetime | None]
    __table_args__ = (
        Index("ix_operations_target", "kind", "target", "status"),
        Index("ix_operations_started", "started_at"),
        CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'aborted', 'cancelled')",
            name="ck_operations_status",
        ),
    )


class OperationStep(Base):
    """One checkpoint of an operation: a step or a target done (one row, rewritten in place)."""

    __tablename__ = "operation_steps"
    op_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(server_default="done")  # done|undone
    data: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    at: Mapped[dt.datetime] = mapped_column(server_default=text("clock_timestamp()"))
    __table_args__ = (
        CheckConstraint("status IN ('done', 'undone')", name="ck_operation_steps_status"),
    )


class KeyringEntry(Base):
    __tablename__ = "keyring"
    purpose: Mapped[str] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)  # None once destroyed
    is_primary: Mapped[bool] = mapped_column(Boolean, server_default="false")
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    retired_at: Mapped[dt.datetime | None]
    master_id: Mapped[str | None]  # fingerprint of the master key that wrapped it
    retire_after: Mapped[dt.datetime | None]  # e.g. a JWT key: when its last token expires
    # True: the row's id is part of the associated data of every value this version encrypts
    # (every pii version made since revision 0005; older ones stay readable without it)
    binds_rows: Mapped[bool] = mapped_column(Boolean, server_default="false")
    demoted_at: Mapped[dt.datetime | None]  # when it stopped being primary (writing, signing)
    destroyed_at: Mapped[dt.datetime | None]  # its material deleted; the row stays on record
    __table_args__ = (
        CheckConstraint(
            "(wrapped_key IS NULL) = (destroyed_at IS NOT NULL) "
            "AND (destroyed_at IS NULL OR retired_at IS NOT NULL)",
            name="ck_keyring_material",
        ),
    )


class SchemaTarget(Base):
    """Last known state of one migration target (a schema in a database on a server)."""

    __tablename__ = "schema_targets"
    server: Mapped[str] = mapped_column(primary_key=True)
    database: Mapped[str] = mapped_column(primary_key=True)
    schema: Mapped[str] = mapped_column(primary_key=True)
    kind: Mapped[str]  # shared | schema | isolated
    tenant_id: Mapped[uuid.UUID | None]
    region: Mapped[str]
    revision: Mapped[str | None]
    status: Mapped[str]  # ok | failed
    error: Mapped[str | None]
    operation_id: Mapped[uuid.UUID | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class ApiKey(Base):
    """An API key of one tenant: only a hash of its secret is stored."""

    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str]
    prefix: Mapped[str] = mapped_column(unique=True)
    secret_hash: Mapped[str]
    scopes: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    replaced_by: Mapped[uuid.UUID | None]


class WebhookEndpoint(Base):
    """Where a tenant receives webhooks; ``secrets`` holds every live signing secret."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str]
    events: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    # [{"secret_enc", "created_at", "expires_at" | null}], newest first
    secrets: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    disabled_at: Mapped[dt.datetime | None]
    disabled_reason: Mapped[str | None]
    # first failed attempt since the last success: disabled once it is 5 days old
    failing_since: Mapped[dt.datetime | None]


class WebhookDelivery(Base):
    """One event to one endpoint: made by the relay, sent (and retried) by the delivery."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_id: Mapped[str]  # the outbox event's id: the Standard Webhooks webhook-id
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_type: Mapped[str]
    payload: Mapped[str]  # the exact request body, the same on every attempt
    # pending | delivered | failed (retries exhausted, 410, endpoint disabled)
    status: Mapped[str] = mapped_column(server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None]  # pending: due then (or a claim's lease end)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None]
    event_at: Mapped[dt.datetime]  # when the event was committed in the tenant's database
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    delivered_at: Mapped[dt.datetime | None]
    __table_args__ = (
        Index("uq_webhook_deliveries_event_endpoint", "event_id", "endpoint_id", unique=True),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
        CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"
        ),
    )


class WebhookAttempt(Base):
    """One try of one delivery: what came back (or why nothing did), how long it took."""

    __tablename__ = "webhook_attempts"
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None]
    latency_ms: Mapped[int] = mapped_column(Integer)
    response_excerpt: Mapped[str | None]


class OAuthState(Base):
    """One OAuth login started and not yet finished (``bizosctl.security.oauth``): used
    once, from the browser that started it, before it expires."""

    __tablename__ = "oauth_states"
    state_hash: Mapped[str] = mapped_column(primary_key=True)  # SHA-256 of the state
    provider: Mapped[str]
    tenant: Mapped[str]  # the slug the login is for
    browser_hash: Mapped[str]  # SHA-256 of the binding cookie's value
    verifier_enc: Mapped[str]  # the PKCE code verifier, sealed with the keyring
    nonce: Mapped[str | None]  # OIDC (Google)
    redirect_uri: Mapped[str]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class ScheduledRun(Base):
    """One run the scheduler enqueued: entry, key (a tenant's slug, or ``*``) and slot (a
    local date, a due instant). Inserted with the run's job in one transaction: the primary
    key makes a run enqueued once, whatever the number of schedulers (bizosctl.jobs.scheduler).
    """

    __tablename__ = "scheduled_runs"
    entry: Mapped[str] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(primary_key=True)
    slot: Mapped[str] = mapped_column(primary_key=True)
    due_at: Mapped[dt.datetime]
    enqueued_at: Mapped[dt.datetime] = mapped_column(server_default=NOW, index=True)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    scheduler: Mapped[str]


class SchedulerHeartbeat(Base):
    """A running ``bizosctl scheduler`` (doctor warns when none has been seen recently)."""

    __tablename__ = "scheduler_heartbeats"
    id: Mapped[str] = mapped_column(primary_key=True)
    host: Mapped[str]
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    last_heartbeat: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class GdprSubject(Base):
    """A routing key: one person (an HMAC of the e-mail under the keyring's ``gdpr`` key, not
    the tenants' blind index) has data in one tenant. Never an e-mail or a name."""

    __tablename__ = "gdpr_subjects"
    subject_ref: Mapped[str] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    noted_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class GdprRequest(Base):
    """One data-subject request (find, export, delete) and what answered it."""

    __tablename__ = "gdpr_requests"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str]  # find | export | delete
    subject_ref: Mapped[str]
    tenant: Mapped[str | None]
    source: Mapped[str] = mapped_column(server_default="cli")  # cli | api
    received_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    due_at: Mapped[dt.datetime]
    extended_to: Mapped[dt.datetime | None]
    extension_reason: Mapped[str | None]
    # received | in_progress | partially_done | done | failed
    status: Mapped[str] = mapped_column(server_default="received")
    operation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("operations.id", ondelete="SET NULL"), index=True
    )
    actor: Mapped[str]
    receipt: Mapped[dict[str, Any] | None]
    finished_at: Mapped[dt.datetime | None]
    __table_args__ = (
        Index("ix_gdpr_requests_status", "status", "due_at"),
        CheckConstraint("kind IN ('find', 'export', 'delete')", name="ck_gdpr_requests_kind"),
        CheckConstraint(
            "status IN ('received', 'in_progress', 'partially_done', 'done', 'failed')",
            name="ck_gdpr_requests_status",
        ),
        CheckConstraint(
            "extended_to IS NULL OR (extended_to > due_at "
            "AND extended_to <= received_at + interval '3 months' "
            "AND extension_reason IS NOT NULL)",
            name="ck_gdpr_requests_extension",
        ),
    )
