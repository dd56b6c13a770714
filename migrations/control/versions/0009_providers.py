"""Cloud providers: a region's server may be a Neon or Supabase account in a provider region,
and each isolated tenant there has a project of its own, recorded as a server.

``provider_region``/``provider_org`` say where a provider server makes projects;
``project_id`` names a tenant's project (its server row carries the project's owner URL,
sealed) and ``parent`` the provider server it was made through.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("servers", sa.Column("provider_region", sa.Text(), nullable=True))
    op.add_column("servers", sa.Column("provider_org", sa.Text(), nullable=True))
    op.add_column("servers", sa.Column("project_id", sa.Text(), nullable=True))
    op.add_column("servers", sa.Column("parent", sa.Text(), nullable=True))
    op.create_index(
        "uq_servers_provider_project",
        "servers",
        ["provider", "project_id"],
        unique=True,
        postgresql_where=sa.text("project_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_servers_provider_project", table_name="servers")
    for column in ("parent", "project_id", "provider_org", "provider_region"):
        op.drop_column("servers", column)
