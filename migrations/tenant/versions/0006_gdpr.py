"""GDPR: consents get the version of the text agreed to and a withdrawal time.

A consent is one row per (member, purpose, version) granted; withdrawing it sets
``withdrawn_at`` (the record of having had consent stays, as Art. 7(1) asks it to be
demonstrable). Pure DDL: the table keeps its RLS, write guard and audit trigger.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
offline_safe = True


def upgrade() -> None:
    op.add_column("consents", sa.Column("version", sa.Text(), server_default="1", nullable=False))
    op.add_column("consents", sa.Column("withdrawn_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.create_index(
        "ix_consents_member", "consents", ["tenant_id", "member_id", "purpose"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_consents_member", table_name="consents")
    op.drop_column("consents", "withdrawn_at")
    op.drop_column("consents", "version")
