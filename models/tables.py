"""The four tables, as SQLModel classes (names and columns: README "HTTP API" and docs/design.md).

Every column is spelled out with an explicit SQL type so that the hand-written migration
(``models/migrations/versions/0001_initial.py``) and these classes describe exactly the same
schema; ``tests/test_migrations.py`` compares the two. Encrypted columns hold the text format of
``models.crypto`` and are listed in ``ENCRYPTED_COLUMNS`` so key rotation finds all of them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, json_dict, json_list

__all__ = [
    "ACCOUNT_STATUSES",
    "ENCRYPTED_COLUMNS",
    "SocialAccount",
    "SocialAccountEvent",
    "SocialMastodonApp",
    "SocialOAuthState",
    "SocialWebhookAttempt",
    "SocialWebhookDelivery",
    "SocialWebhookEndpoint",
    "PUBLIC_EVENT_KINDS",
    "table_of",
    "utcnow",
]

#: ``social_accounts.status`` values (README, "Account statuses and health")
ACCOUNT_STATUSES = ("active", "error", "rate_limited", "expired", "disconnected")

#: every column holding a ciphertext, per table: key rotation walks exactly these
ENCRYPTED_COLUMNS: dict[str, tuple[str, ...]] = {
    "social_accounts": ("access_token", "refresh_token", "dpop_key"),
    "social_oauth_states": ("code_verifier", "app_password", "token_bundle", "dpop_key"),
    "social_mastodon_apps": ("client_secret",),
}


def utcnow() -> datetime:
    return datetime.now(UTC)


_ID = sa.String(36)
_NAME = sa.String(255)
_SHORT = sa.String(32)


def _ts(nullable: bool = True, **kw: Any) -> Any:
    return Field(sa_type=UTCDateTime(), nullable=nullable, **kw)


class SocialAccount(SQLModel, table=True):
    """One connected account. ``id`` = ``models.ids.account_id(site_id, platform, platform_account_id)``."""

    __tablename__ = "social_accounts"
    __table_args__ = (
        sa.UniqueConstraint(
            "site_id", "platform", "platform_account_id", name="uq_social_accounts_site_platform_account"
        ),
        sa.Index(
            "ix_social_accounts_next_refresh_active",
            "next_refresh_at",
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        ),
        sa.Index(
            "ix_social_accounts_next_sync_active",
            "next_sync_at",
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        ),
    )

    id: str = Field(sa_type=_ID, primary_key=True)
    site_id: str = Field(sa_type=_NAME, nullable=False)
    platform: str = Field(sa_type=_SHORT, nullable=False)
    platform_account_id: str = Field(sa_type=_NAME, nullable=False)
    account_name: str | None = Field(default=None, sa_type=sa.Text())
    account_handle: str | None = Field(default=None, sa_type=sa.Text())
    account_avatar: str | None = Field(default=None, sa_type=sa.Text())
    access_token: str | None = Field(default=None, sa_type=sa.Text())  # encrypted
    refresh_token: str | None = Field(default=None, sa_type=sa.Text())  # encrypted
    token_expires_at: datetime | None = _ts(default=None)
    refresh_token_expires_at: datetime | None = _ts(default=None)
    scopes: list[str] = Field(default_factory=list, sa_type=json_list(), nullable=False)
    followers_count: int | None = Field(default=None, sa_type=sa.BigInteger())
    following_count: int | None = Field(default=None, sa_type=sa.BigInteger())
    posts_count: int | None = Field(default=None, sa_type=sa.BigInteger())
    engagement_rate: float | None = Field(default=None, sa_type=sa.Float())
    status: str = Field(
        default="active",
        sa_type=sa.String(16),
        nullable=False,
        sa_column_kwargs={"server_default": sa.text("'active'")},
    )
    health_score: int = Field(
        default=100, sa_type=sa.Integer(), nullable=False, sa_column_kwargs={"server_default": sa.text("100")}
    )
    last_synced_at: datetime | None = _ts(default=None)
    last_error: str | None = Field(default=None, sa_type=sa.Text())
    last_error_at: datetime | None = _ts(default=None)
    token_metadata: dict[str, Any] = Field(default_factory=dict, sa_type=json_dict(), nullable=False)
    created_at: datetime = _ts(nullable=False, default_factory=utcnow)
    updated_at: datetime = _ts(nullable=False, default_factory=utcnow)
    # --- internal (docs/design.md) ---
    token_version: int = Field(
        default=0, sa_type=sa.Integer(), nullable=False, sa_column_kwargs={"server_default": sa.text("0")}
    )
    next_refresh_at: datetime | None = _ts(default=None)
    #: the account's next stats-sync turn (migration 0002); also the scheduler's claim lease
    next_sync_at: datetime | None = _ts(default=None)
    consecutive_failures: int = Field(
        default=0, sa_type=sa.Integer(), nullable=False, sa_column_kwargs={"server_default": sa.text("0")}
    )
    first_failure_at: datetime | None = _ts(default=None)
    rate_limited_until: datetime | None = _ts(default=None)
    user_id: str | None = Field(default=None, sa_type=_NAME)
    refresh_model: str = Field(
        default="none", sa_type=sa.String(16), nullable=False, sa_column_kwargs={"server_default": sa.text("'none'")}
    )
    #: the session's DPoP private key (Bluesky OAuth, migration 0003), encrypted
    dpop_key: str | None = Field(default=None, sa_type=sa.Text())


class SocialOAuthState(SQLModel, table=True):
    """One connect attempt; ``id`` is the ``attempt_id`` the API hands out."""

    __tablename__ = "social_oauth_states"
    __table_args__ = (sa.Index("ix_social_oauth_states_expires_at", "expires_at"),)

    id: str = Field(sa_type=_ID, primary_key=True)
    platform: str = Field(sa_type=_SHORT, nullable=False)
    site_id: str = Field(sa_type=_NAME, nullable=False)
    user_id: str = Field(sa_type=_NAME, nullable=False)
    return_to: str | None = Field(default=None, sa_type=sa.Text())
    instance: str | None = Field(default=None, sa_type=_NAME)
    code_verifier: str | None = Field(default=None, sa_type=sa.Text())  # encrypted
    app_password: str | None = Field(default=None, sa_type=sa.Text())  # encrypted, cleared after login
    token_bundle: str | None = Field(default=None, sa_type=sa.Text())  # encrypted JSON of a TokenSet
    #: Bluesky OAuth: the DPoP key and the issuer and DID it was made for (migration 0003), encrypted
    dpop_key: str | None = Field(default=None, sa_type=sa.Text())
    status: str = Field(default="pending", sa_type=sa.String(16), nullable=False)
    stage: str = Field(default="created", sa_type=sa.String(16), nullable=False)
    error_code: str | None = Field(default=None, sa_type=sa.String(64))
    error_message: str | None = Field(default=None, sa_type=sa.Text())
    account_ids: list[str] = Field(default_factory=list, sa_type=json_list(), nullable=False)
    history: list[dict[str, Any]] = Field(default_factory=list, sa_type=json_list(), nullable=False)
    expires_at: datetime = _ts(nullable=False)
    consumed_at: datetime | None = _ts(default=None)
    #: the broker message id that consumed the state, so a redelivery of that same message resumes
    consumed_by: str | None = Field(default=None, sa_type=sa.String(64))
    created_at: datetime = _ts(nullable=False, default_factory=utcnow)
    updated_at: datetime = _ts(nullable=False, default_factory=utcnow)


class SocialMastodonApp(SQLModel, table=True):
    """The app registered on one Mastodon instance; ``id`` = ``models.ids.mastodon_app_id(instance)``."""

    __tablename__ = "social_mastodon_apps"
    __table_args__ = (sa.UniqueConstraint("instance", name="uq_social_mastodon_apps_instance"),)

    id: str = Field(sa_type=_ID, primary_key=True)
    instance: str = Field(sa_type=_NAME, nullable=False)
    client_id: str = Field(sa_type=sa.Text(), nullable=False)
    client_secret: str = Field(sa_type=sa.Text(), nullable=False)  # encrypted
    scopes: str = Field(sa_type=sa.Text(), nullable=False)
    redirect_uri: str = Field(sa_type=sa.Text(), nullable=False)
    created_at: datetime = _ts(nullable=False, default_factory=utcnow)


#: audit kinds that are also public events (README "Events"): the outbox is these rows, ``seq``
#: NULL until the dispatcher publishes them (migration 0004)
PUBLIC_EVENT_KINDS = ("connected", "status_changed", "attempt_failed")
_OUTBOX_WHERE = "seq IS NULL AND kind IN ('connected', 'status_changed', 'attempt_failed')"


class SocialAccountEvent(SQLModel, table=True):
    """The audit trail: what happened to which account, when and why. Never a secret in ``data``.

    It is also the transactional outbox of the public events: a row of a kind in
    ``PUBLIC_EVENT_KINDS`` is written in the same statement or transaction as the change it
    records, and the dispatcher (``models.outbox``) gives it its place in the public order, ``seq``.
    """

    __tablename__ = "social_account_events"
    __table_args__ = (
        sa.Index("ix_social_account_events_account_created", "account_id", "created_at"),
        sa.Index("uq_social_account_events_seq", "seq", unique=True),
        sa.Index(
            "ix_social_account_events_outbox",
            "created_at",
            postgresql_where=sa.text(_OUTBOX_WHERE),
            sqlite_where=sa.text(_OUTBOX_WHERE),
        ),
    )

    id: str = Field(sa_type=_ID, primary_key=True)
    account_id: str | None = Field(default=None, sa_type=_ID)
    site_id: str | None = Field(default=None, sa_type=_NAME)
    platform: str | None = Field(default=None, sa_type=_SHORT)
    kind: str = Field(sa_type=sa.String(32), nullable=False)
    reason: str = Field(default="", sa_type=sa.Text(), nullable=False)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=json_dict(), nullable=False)
    created_at: datetime = _ts(nullable=False, default_factory=utcnow)
    #: the public cursor: assigned in commit order by the dispatcher; NULL = not yet published
    seq: int | None = Field(default=None, sa_type=sa.BigInteger())


class SocialWebhookEndpoint(SQLModel, table=True):
    """A webhook receiver: from ``WEBHOOK_URLS`` (``source='env'``) or added with the CLI."""

    __tablename__ = "social_webhook_endpoints"
    __table_args__ = (sa.UniqueConstraint("url", name="uq_social_webhook_endpoints_url"),)

    id: str = Field(sa_type=_ID, primary_key=True)
    url: str = Field(sa_type=sa.Text(), nullable=False)
    #: event types it receives; empty: all
    event_types: list[str] = Field(default_factory=list, sa_type=json_list(), nullable=False)
    #: sites whose events it receives; empty: all
    site_ids: list[str] = Field(default_factory=list, sa_type=json_list(), nullable=False)
    source: str = Field(default="operator", sa_type=sa.String(16), nullable=False)
    disabled_at: datetime | None = _ts(default=None)
    disabled_reason: str | None = Field(default=None, sa_type=sa.Text())
    #: first failed attempt since its last success; failing for a day marks the endpoint failing
    failing_since: datetime | None = _ts(default=None)
    last_success_at: datetime | None = _ts(default=None)
    created_at: datetime = _ts(nullable=False, default_factory=utcnow)


class SocialWebhookDelivery(SQLModel, table=True):
    """One event for one endpoint: pending until delivered, dropped (410, endpoint removed) or failed."""

    __tablename__ = "social_webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("event_id", "endpoint_id", name="uq_social_webhook_deliveries_event_endpoint"),
        sa.Index("ix_social_webhook_deliveries_order", "endpoint_id", "account_id", "seq"),
    )

    id: str = Field(sa_type=_ID, primary_key=True)
    event_id: str = Field(sa_type=_ID, nullable=False)
    endpoint_id: str = Field(sa_type=_ID, nullable=False)
    account_id: str | None = Field(default=None, sa_type=_ID)
    seq: int = Field(sa_type=sa.BigInteger(), nullable=False)
    status: str = Field(default="pending", sa_type=sa.String(16), nullable=False)
    attempts: int = Field(default=0, sa_type=sa.Integer(), nullable=False)
    #: when a message for it is due at the latest; a pending delivery past this (its message was
    #: lost with a crash) is enqueued again by the scheduler's sweep
    next_attempt_at: datetime | None = _ts(default=None)
    last_status: int | None = Field(default=None, sa_type=sa.Integer())
    last_error: str | None = Field(default=None, sa_type=sa.Text())
    created_at: datetime = _ts(nullable=False, default_factory=utcnow)
    updated_at: datetime = _ts(nullable=False, default_factory=utcnow)
    delivered_at: datetime | None = _ts(default=None)


class SocialWebhookAttempt(SQLModel, table=True):
    """One HTTP attempt of a delivery: its status (NULL: no answer) and latency."""

    __tablename__ = "social_webhook_attempts"
    __table_args__ = (sa.Index("ix_social_webhook_attempts_delivery", "delivery_id"),)

    id: str = Field(sa_type=_ID, primary_key=True)
    delivery_id: str = Field(sa_type=_ID, nullable=False)
    endpoint_id: str = Field(sa_type=_ID, nullable=False)
    status_code: int | None = Field(default=None, sa_type=sa.Integer())
    latency_ms: int = Field(sa_type=sa.Integer(), nullable=False)
    error: str | None = Field(default=None, sa_type=sa.Text())
    at: datetime = _ts(nullable=False, default_factory=utcnow)


def table_of(model: type[SQLModel]) -> sa.Table:
    """The Core ``Table`` of a model, for the single-statement upserts and updates."""
    return cast(sa.Table, sa.inspect(model).local_table)
