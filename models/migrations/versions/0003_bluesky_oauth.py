"""Bluesky by AT Protocol OAuth: the DPoP key of each session, encrypted, in a column of its own.

An access token of AT Protocol OAuth is bound to one ES256 key (DPoP, RFC 9449): the key must
sign a proof on every request to the authorization server and the PDS, for as long as the
session lives. ``social_accounts.dpop_key`` holds it for a connected account, and
``social_oauth_states.dpop_key`` for a connect in flight (with the issuer and DID it was made
for), both encrypted through the key ring like the tokens (docs/design.md, "Secrets at rest").

Revision ID: 0003_bluesky_oauth
Revises: 0002_next_sync_at
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_bluesky_oauth"
down_revision: str | None = "0002_next_sync_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("social_accounts") as batch:
        batch.add_column(sa.Column("dpop_key", sa.Text(), nullable=True))
    with op.batch_alter_table("social_oauth_states") as batch:
        batch.add_column(sa.Column("dpop_key", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("social_oauth_states") as batch:
        batch.drop_column("dpop_key")
    with op.batch_alter_table("social_accounts") as batch:
        batch.drop_column("dpop_key")
