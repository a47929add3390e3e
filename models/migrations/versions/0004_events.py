"""Events out: the outbox cursor on ``social_account_events`` and the webhook tables.

``seq`` is the public cursor of ``GET /v1/events``, given by the dispatcher in commit order; the
partial index finds the rows it has yet to publish. Rows already there when this runs are
numbered in time order, so they can be replayed, but are never sent as webhooks.

Revision ID: 0004_events
Revises: 0003_bluesky_oauth
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_events"
down_revision: str | None = "0003_bluesky_oauth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTBOX_WHERE = "seq IS NULL AND kind IN ('connected', 'status_changed', 'attempt_failed')"


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("social_account_events") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
    events = sa.table(
        "social_account_events",
        sa.column("id", sa.String()),
        sa.column("kind", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("seq", sa.BigInteger()),
    )
    numbered = (
        sa.select(events.c.id, sa.func.row_number().over(order_by=(events.c.created_at, events.c.id)).label("n"))
        .where(events.c.kind.in_(("connected", "status_changed", "attempt_failed")))
        .subquery()
    )
    op.execute(
        events.update()
        .where(events.c.id == numbered.c.id)
        .values(seq=numbered.c.n)
        if op.get_bind().dialect.name == "postgresql"
        else events.update().values(
            seq=sa.select(numbered.c.n).where(numbered.c.id == events.c.id).scalar_subquery()
        )
    )
    op.create_index("uq_social_account_events_seq", "social_account_events", ["seq"], unique=True)
    op.create_index(
        "ix_social_account_events_outbox",
        "social_account_events",
        ["created_at"],
        postgresql_where=sa.text(_OUTBOX_WHERE),
        sqlite_where=sa.text(_OUTBOX_WHERE),
    )
    op.create_table(
        "social_webhook_endpoints",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", _json(), nullable=False),
        sa.Column("site_ids", _json(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        _ts("disabled_at"),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        _ts("failing_since"),
        _ts("last_success_at"),
        _ts("created_at", nullable=False),
        sa.UniqueConstraint("url", name="uq_social_webhook_endpoints_url"),
    )
    op.create_table(
        "social_webhook_deliveries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("endpoint_id", sa.String(36), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("delivered_at"),
        sa.UniqueConstraint("event_id", "endpoint_id", name="uq_social_webhook_deliveries_event_endpoint"),
    )
    op.create_index(
        "ix_social_webhook_deliveries_order", "social_webhook_deliveries", ["endpoint_id", "account_id", "seq"]
    )
    op.create_table(
        "social_webhook_attempts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("delivery_id", sa.String(36), nullable=False),
        sa.Column("endpoint_id", sa.String(36), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("at", nullable=False),
    )
    op.create_index("ix_social_webhook_attempts_delivery", "social_webhook_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("social_webhook_attempts")
    op.drop_table("social_webhook_deliveries")
    op.drop_table("social_webhook_endpoints")
    op.drop_index("ix_social_account_events_outbox", table_name="social_account_events")
    op.drop_index("uq_social_account_events_seq", table_name="social_account_events")
    with op.batch_alter_table("social_account_events") as batch:
        batch.drop_column("seq")
