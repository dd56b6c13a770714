"""Test revision that raises in every target whose schema name contains 'boom'.

Revision ID: t003
Revises: t002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "t003"
down_revision = "t002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "projects", sa.Column("archived", sa.Boolean(), server_default="false", nullable=False)
    )
    if "boom" in (op.get_context().version_table_schema or ""):
        raise RuntimeError("boom: this migration refuses this target")


def downgrade() -> None:
    op.drop_column("projects", "archived")
