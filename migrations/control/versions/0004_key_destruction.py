"""Keyring: when a version stopped being primary (a JWT key signs nothing after it) and when
its material was destroyed (the wrapped key bytes are gone, the metadata row stays).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("keyring", sa.Column("demoted_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.add_column("keyring", sa.Column("destroyed_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.alter_column("keyring", "wrapped_key", existing_type=sa.LargeBinary(), nullable=True)
    op.create_check_constraint(
        "ck_keyring_material",
        "keyring",
        "(wrapped_key IS NULL) = (destroyed_at IS NOT NULL) "
        "AND (destroyed_at IS NULL OR retired_at IS NOT NULL)",
    )


def downgrade() -> None:
    # Destroyed material cannot come back: their rows go with the columns.
    op.drop_constraint("ck_keyring_material", "keyring", type_="check")
    op.execute("DELETE FROM keyring WHERE wrapped_key IS NULL")
    op.alter_column("keyring", "wrapped_key", existing_type=sa.LargeBinary(), nullable=False)
    op.drop_column("keyring", "destroyed_at")
    op.drop_column("keyring", "demoted_at")
