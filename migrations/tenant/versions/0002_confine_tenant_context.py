"""Suspended tenants read nothing; the audit trail keeps no ciphertexts or blind indexes.

Replaces, in an existing target, what ``tenant_schema.ddl`` now renders: the functions
(``bizos_tenant()``, ``bizos_redact()``, the audit trigger that redacts ``*_enc``/``*_bidx``
columns) and every ``tenant_isolation`` policy (now comparing with ``(SELECT bizos_tenant())``,
NULL for a suspended tenant). Then scrubs the audit rows written before it. On a target that
0001 built from the current ``ddl`` every step is a no-op.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from tenant_schema.ddl import functions_sql, policy_sql, scrub_audit_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
# DDL plus one static UPDATE whose SQL reads nothing on the Python side: the offline rendering
# (``alembic --sql``, see bizosctl.db.migrate) is exactly what it does online, on any target.
offline_safe = True

TABLES = (
    "tenant_state", "members", "roles", "permissions", "member_roles", "projects",
    "project_members", "tasks", "customers", "invoices", "invoice_items", "transactions",
    "documents", "document_chunks", "notifications", "consents", "settings",
    "onboarding_progress", "audit_logs",
)  # fmt: skip


def upgrade() -> None:
    # The target schema, known online and offline (``--sql``): the version table lives there.
    schema = op.get_context().version_table_schema
    for stmt in functions_sql(schema):
        op.execute(stmt)
    for table in TABLES:
        for stmt in policy_sql(table):
            op.execute(stmt)
    for stmt in scrub_audit_sql():
        op.execute(stmt)


def downgrade() -> None:
    # Nothing to undo: 0001 renders the current tenant_schema.ddl (so a target built at 0001
    # today already looks like this), and scrubbed audit values cannot come back.
    pass
