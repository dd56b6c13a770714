"""GDPR: consents and erasure bookkeeping in the tenant (reserved; filled in by the GDPR work).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
offline_safe = True


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
