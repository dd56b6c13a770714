"""GDPR: routing keys (a keyed hash of an e-mail -> the tenants holding that person's data) and
the log of data-subject requests.

A routing key is an HMAC under the keyring's ``gdpr`` key, never the tenants' blind index
(the ``pii`` key): the catalog cannot be joined to tenant rows, and no e-mail, name or blind
index is stored here. ``tenants.owner_email_bidx`` held the owner's blind index (a value that
does join); it is emptied here and no longer written (the owner gets a routing key instead).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TS = sa.TIMESTAMP(timezone=True)
KINDS = "('find', 'export', 'delete')"
STATUSES = "('received', 'in_progress', 'partially_done', 'done', 'failed')"


def upgrade() -> None:
    op.create_table(
        "gdpr_subjects",
        sa.Column("subject_ref", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("noted_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_gdpr_subjects_tenant_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("subject_ref", "tenant_id", name=op.f("pk_gdpr_subjects")),
    )
    op.create_index("ix_gdpr_subjects_tenant_id", "gdpr_subjects", ["tenant_id"])
    op.create_table(
        "gdpr_requests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("subject_ref", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),  # the slug it was limited to, if any
        sa.Column("source", sa.Text(), server_default="cli", nullable=False),
        sa.Column("received_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("extended_to", TS, nullable=True),
        sa.Column("extension_reason", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="received", nullable=False),
        sa.Column("operation_id", sa.UUID(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("receipt", sa.dialects.postgresql.JSONB(), nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["operation_id"],
            ["operations.id"],
            name=op.f("fk_gdpr_requests_operation_id"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gdpr_requests")),
        sa.CheckConstraint(f"kind IN {KINDS}", name="ck_gdpr_requests_kind"),
        sa.CheckConstraint(f"status IN {STATUSES}", name="ck_gdpr_requests_status"),
        # GDPR Art. 12(3): one month, extendable by two more (three in all).
        sa.CheckConstraint(
            "extended_to IS NULL OR (extended_to > due_at "
            "AND extended_to <= received_at + interval '3 months' "
            "AND extension_reason IS NOT NULL)",
            name="ck_gdpr_requests_extension",
        ),
    )
    op.create_index("ix_gdpr_requests_status", "gdpr_requests", ["status", "due_at"])
    op.create_index("ix_gdpr_requests_operation_id", "gdpr_requests", ["operation_id"])
    op.execute("UPDATE tenants SET owner_email_bidx = NULL WHERE owner_email_bidx IS NOT NULL")


def downgrade() -> None:
    op.drop_table("gdpr_requests")
    op.drop_table("gdpr_subjects")
