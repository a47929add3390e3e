"""The value types every layer passes around: what a platform gave us, and what an account is.

They live in the ground package so that ``models`` (which stores them) and ``platforms`` (which
produces them) both depend on them without depending on each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = ["AccountProfile", "RefreshModel", "RevokeResult", "Stats", "TokenSet"]

#: How a platform keeps access alive:
#: ``rotate``  a refresh grant that returns a new refresh token each time (X, TikTok, Pinterest, Bluesky)
#: ``reuse``   a refresh grant whose refresh token normally stays the same (YouTube, LinkedIn partners)
#: ``extend``  no refresh token: the long-lived access token itself is exchanged for a fresh one
#:             before it expires (Instagram via fb_exchange_token, Threads th_refresh_token)
#: ``none``    the token does not expire (Mastodon, Facebook Page tokens)
RefreshModel = Literal["rotate", "reuse", "extend", "none"]

#: ``revoked`` the platform confirmed; ``none`` the platform has no revocation endpoint
RevokeResult = Literal["revoked", "none"]


@dataclass(frozen=True)
class TokenSet:
    """What a platform gave us to act for an account.

    ``metadata`` holds non-secret facts the adapter needs later (Meta user id, Mastodon instance,
    Bluesky DID and PDS URL, the refresh model of this particular token). Secrets go only in
    ``access_token``, ``refresh_token`` and ``dpop_key``: the columns encrypted at rest.
    ``dpop_key`` is the private JWK (JSON) a Bluesky OAuth session's tokens are bound to (DPoP,
    RFC 9449): it lives and rotates with the session, never in ``metadata``.
    """

    access_token: str
    refresh_token: str | None = None
    expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    dpop_key: str | None = None

    def replace(self, **changes: Any) -> TokenSet:
        return dataclasses.replace(self, **changes)

    @property
    def issued_at(self) -> datetime | None:
        """When this token set was issued (the ``issued_at`` stamp of the connect and every
        refresh, an aware ISO 8601 time in ``metadata``), if known."""
        raw = self.metadata.get("issued_at")
        if not isinstance(raw, str):
            return None
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return moment if moment.tzinfo is not None else None

    def merged_with(self, newer: TokenSet) -> TokenSet:
        """``newer`` wins, but an empty refresh token or missing expiry never wipes a stored one.

        A token that expires never becomes one that does not: an answer without an expiry keeps
        the stored one (refreshed again early rather than never). The adapters first fill in
        their platform's documented lifetime (``PlatformAdapter.default_lifetime``).
        """
        return TokenSet(
            access_token=newer.access_token or self.access_token,
            refresh_token=newer.refresh_token or self.refresh_token,
            expires_at=newer.expires_at or self.expires_at,
            refresh_expires_at=newer.refresh_expires_at or self.refresh_expires_at,
            scopes=newer.scopes or self.scopes,
            metadata={**self.metadata, **newer.metadata},
            dpop_key=newer.dpop_key or self.dpop_key,
        )

    def __repr__(self) -> str:  # never print secrets, even in a debugger or a traceback
        return (
            f"TokenSet(access_token=<redacted>, refresh_token={'<redacted>' if self.refresh_token else None},"
            f" expires_at={self.expires_at!r}, scopes={self.scopes!r}, metadata={self.metadata!r},"
            f" dpop_key={'<redacted>' if self.dpop_key else None})"
        )


@dataclass(frozen=True)
class Stats:
    """Counts; ``None`` means the platform does not give it (never guessed as 0)."""

    followers: int | None = None
    following: int | None = None
    posts: int | None = None
    engagement_rate: float | None = None


@dataclass(frozen=True)
class AccountProfile:
    """One account reachable with a token (a user, a Facebook Page, an Instagram business account).

    ``tokens`` is the token set to store for *this* account: a Page gets its own Page token.
    """

    platform_account_id: str
    name: str | None
    handle: str | None
    avatar_url: str | None
    tokens: TokenSet
    stats: Stats = field(default_factory=Stats)
    refresh_model: RefreshModel = "none"
