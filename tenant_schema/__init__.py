"""The data of one tenant: SQLAlchemy models, RLS policies and the audit trigger DDL.

The same tables serve all three tiers: the region's shared database (schema ``shared``), a
schema per tenant (``t_<slug>``) in that database, or a database per tenant (``t_<slug>``,
holding schema ``t_<slug>``). Every table has ``tenant_id`` and every primary and foreign key
starts with it, so rows of two tenants can never reference each other and a tenant's rows
move between tiers without renumbering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenant_schema.models import TENANT_TABLES, metadata

__all__ = ["TENANT_TABLES", "metadata"]

#: The tenant tables by name, for code that needs no more (``tenant show`` counting rows):
#: declaring the models costs a tenth of a second. A test keeps it equal to TENANT_TABLES
#: (which is in dependency order; this one is not).
TABLE_NAMES: tuple[str, ...] = (
    "ai_spend",
    "ai_usage",
    "audit_logs",
    "auth_sessions",
    "consents",
    "customers",
    "digests",
    "document_chunks",
    "documents",
    "email_attempts",
    "email_messages",
    "email_senders",
    "invoice_items",
    "invoices",
    "login_throttle",
    "member_identities",
    "member_roles",
    "members",
    "notifications",
    "onboarding_progress",
    "outbox",
    "permissions",
    "project_members",
    "projects",
    "refresh_tokens",
    "roles",
    "settings",
    "tasks",
    "tenant_state",
    "transactions",
)


def __getattr__(name: str) -> object:
    # The models cost a tenth of a second to declare: commands that only need the DDL
    # constants (schema status, every sync worker) do not pay for them.
    if name in ("TENANT_TABLES", "metadata"):
        from tenant_schema import models

        return getattr(models, name)
    raise AttributeError(f"module 'tenant_schema' has no attribute {name!r}")
