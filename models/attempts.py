"""Connect attempts (``social_oauth_states``): creation, loading, and their encrypted fields.

The PKCE verifier, a Bluesky app password and the exchanged token bundle are secrets, so they
are stored encrypted and bound to the attempt row. The token bundle exists so that a retried
connect step continues from the tokens it already has instead of exchanging the single-use
code a second time. ``history`` is a JSON list that shows every retry of the attempt.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from models.crypto import KeyRing
from models.ids import new_id
from models.tables import SocialOAuthState
from platforms.base import TokenSet

__all__ = [
    "SECRET_COLUMNS",
    "append_history",
    "attempt_secret",
    "create_attempt",
    "load_attempt",
    "read_token_bundle",
    "store_token_bundle",
    "tokens_from_json",
    "tokens_to_json",
]

_T = "social_oauth_states"
SECRET_COLUMNS = ("code_verifier", "app_password", "token_bundle")


def create_attempt(
    session: Session,
    ring: KeyRing,
    *,
    platform: str,
    site_id: str,
    user_id: str,
    expires_at: datetime,
    now: datetime,
    attempt_id: str | None = None,
    return_to: str | None = None,
    instance: str | None = None,
    code_verifier: str | None = None,
    app_password: str | None = None,
) -> str:
    """Write a new pending attempt and return its id (``attempt_id`` when the caller chose one)."""
    row_id = attempt_id or new_id()
    row = SocialOAuthState(
        id=row_id,
        platform=platform,
        site_id=site_id,
        user_id=user_id,
        return_to=return_to,
        instance=instance,
        code_verifier=ring.encrypt_optional(code_verifier, table=_T, column="code_verifier", row_id=row_id),
        app_password=ring.encrypt_optional(app_password, table=_T, column="app_password", row_id=row_id),
        status="pending",
        stage="created",
        account_ids=[],
        history=[{"at": now.isoformat(), "event": "created", "detail": ""}],
        expires_at=expires_at,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row_id


def load_attempt(session: Session, attempt_id: str, *, for_update: bool = False) -> SocialOAuthState | None:
    """The attempt row (``for_update`` locks it on PostgreSQL until the transaction ends)."""
    return session.get(SocialOAuthState, attempt_id, populate_existing=True, with_for_update=for_update or None)


def attempt_secret(ring: KeyRing, row: SocialOAuthState, column: str) -> str | None:
    """Decrypt ``code_verifier`` or ``app_password`` of an attempt (``None`` when not set)."""
    if column not in ("code_verifier", "app_password"):
        raise ValueError(f"{column!r} is not a secret column of an attempt")
    value: str | None = getattr(row, column)
    return ring.decrypt_optional(value, table=_T, column=column, row_id=row.id)


def append_history(row: SocialOAuthState, event: str, detail: str = "", *, now: datetime) -> None:
    """Add ``{at, event, detail}`` to the attempt's history (tracked in place by MutableList)."""
    row.history.append({"at": now.isoformat(), "event": event, "detail": detail})
    row.updated_at = now


# ---- the token bundle ---------------------------------------------------------------------------


def tokens_to_json(tokens: TokenSet) -> str:
    """A ``TokenSet`` as JSON text (to be encrypted before it is stored anywhere)."""
    return json.dumps(
        {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_at": tokens.expires_at.isoformat() if tokens.expires_at else None,
            "refresh_expires_at": tokens.refresh_expires_at.isoformat() if tokens.refresh_expires_at else None,
            "scopes": list(tokens.scopes),
            "metadata": tokens.metadata,
        },
        separators=(",", ":"),
    )


def tokens_from_json(text: str) -> TokenSet:
    data: dict[str, Any] = json.loads(text)

    def when(key: str) -> datetime | None:
        value = data.get(key)
        return datetime.fromisoformat(value) if value else None

    return TokenSet(
        access_token=data["access_token"],
        refresh_token=data.get("refresh_token"),
        expires_at=when("expires_at"),
        refresh_expires_at=when("refresh_expires_at"),
        scopes=tuple(data.get("scopes") or ()),
        metadata=dict(data.get("metadata") or {}),
    )


def store_token_bundle(ring: KeyRing, row: SocialOAuthState, tokens: TokenSet) -> None:
    """Put the exchanged tokens on the attempt, encrypted (the caller commits at once)."""
    row.token_bundle = ring.encrypt(tokens_to_json(tokens), table=_T, column="token_bundle", row_id=row.id)


def read_token_bundle(ring: KeyRing, row: SocialOAuthState) -> TokenSet | None:
    """The tokens stored by ``store_token_bundle``, or ``None`` when the code was not exchanged yet."""
    text = ring.decrypt_optional(row.token_bundle, table=_T, column="token_bundle", row_id=row.id)
    return tokens_from_json(text) if text is not None else None
