"""Digests (reserved; filled in by the digest work).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
offline_safe = True


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
