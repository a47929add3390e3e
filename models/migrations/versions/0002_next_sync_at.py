"""Per-account stats-sync schedule: ``next_sync_at`` with a partial index for active accounts.

The scheduler claims accounts whose sync turn has come exactly as it claims due refreshes
(``FOR UPDATE SKIP LOCKED`` plus a lease in the same statement), so the turn lives in the
database, survives a Redis restart, and is spread with jitter instead of all at once.

Revision ID: 0002_next_sync_at
Revises: 0001_initial
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_next_sync_at"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("social_accounts") as batch:
        batch.add_column(sa.Column("next_sync_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_social_accounts_next_sync_active",
        "social_accounts",
        ["next_sync_at"],
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    op.drop_index("ix_social_accounts_next_sync_active", table_name="social_accounts")
    with op.batch_alter_table("social_accounts") as batch:
        batch.drop_column("next_sync_at")
