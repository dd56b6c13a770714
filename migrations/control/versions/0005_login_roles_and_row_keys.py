"""Which login role each server's shared database uses now (the shared role alternates
between two roles like a tenant's), and whether a key version binds the row into its
ciphertexts' associated data.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "servers",
        sa.Column("app_role", sa.Text(), server_default="bizos_app_shared", nullable=False),
    )
    # Existing versions wrote ciphertexts without the row: they stay readable that way. Every
    # pii version made from now on binds the row (the code sets it), and so does the staged
    # next pii version: it has never encrypted anything (a version newer than the primary
    # never was primary), so the next rotation re-encrypts every value bound to its row.
    op.add_column(
        "keyring",
        sa.Column("binds_rows", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.execute(
        "UPDATE keyring AS k SET binds_rows = true WHERE k.purpose = 'pii' "
        "AND NOT k.is_primary AND k.retired_at IS NULL AND k.version > coalesce(("
        "SELECT max(p.version) FROM keyring AS p WHERE p.purpose = 'pii' AND p.is_primary), 0)"
    )


def downgrade() -> None:
    op.drop_column("keyring", "binds_rows")
    op.drop_column("servers", "app_role")
