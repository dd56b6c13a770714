"""Tenants' plans and AI budgets: the plan (its monthly price and AI budget are the
``ai_plans`` setting), a budget of the tenant's own that overrides the plan's, and what the
LLM gate does once the month's budget is spent (``refuse`` or answer ``offline``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("plan", sa.Text(), server_default="free", nullable=False))
    op.add_column("tenants", sa.Column("ai_budget", sa.Numeric(14, 6), nullable=True))
    op.add_column(
        "tenants",
        sa.Column("ai_over_budget", sa.Text(), server_default="refuse", nullable=False),
    )
    op.create_check_constraint(
        "ck_tenants_ai_over_budget", "tenants", "ai_over_budget IN ('refuse', 'offline')"
    )


def downgrade() -> None:
    op.drop_constraint("ck_tenants_ai_over_budget", "tenants", type_="check")
    op.drop_column("tenants", "ai_over_budget")
    op.drop_column("tenants", "ai_budget")
    op.drop_column("tenants", "plan")
