"""Which login role each server's shared database uses now (the shared role alternates
between two roles like a tenant's), and whether a key version binds the row into its
ciphertexts' associated data.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "servers",
        sa.Column("app_role", sa.Text(), server_default="bizos_app_shared", nullable=False),
    )
    # Existing versions wrote ciphertexts without the row: they stay readable that way. Every
    # version made from now on binds the row (the server default is for new rows).
    op.add_column(
        "keyring",
        sa.Column("binds_rows", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.alter_column("keyring", "binds_rows", server_default=sa.true())


def downgrade() -> None:
    op.drop_column("keyring", "binds_rows")
    op.drop_column("servers", "app_role")
