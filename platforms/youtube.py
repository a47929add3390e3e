"""YouTube: Google OAuth 2.0 and the YouTube Data API v3 (docs/platforms.md, "YouTube").

What is particular here:

* ``access_type=offline`` and ``prompt=consent`` on every authorization: Google gives a refresh
  token only on a consented code exchange, so without them a reconnect could come back without
  one. PKCE S256 is used; client id and secret travel in the token body.
* Refresh tokens normally do not rotate: the refresh answer has no ``refresh_token`` and the
  stored one is kept (``refresh_model = "reuse"``; the base class merges).
* One Google identity may own several channels (brand accounts): ``channels?mine=true`` can list
  several, and each becomes its own account sharing the token set.
* Counts are uint64 sent as JSON strings; ``hiddenSubscriberCount: true`` means the subscriber
  count is not public, so it is ``None`` rather than whatever number comes along. Following does
  not exist on YouTube; posts are ``videoCount``.

How failures are read (Google's ``{"error": {"code", "status", "errors": [{"reason"}]}}``):

* 403 ``quotaExceeded`` → ``RateLimited`` until the next midnight Pacific time, when the daily
  project quota resets; ``scope="app"`` since the quota is shared by every account.
* 403 ``rateLimitExceeded`` / ``userRateLimitExceeded`` → ``RateLimited`` for a short while
  (``Retry-After`` if sent, else 60 s).
* 401 ``UNAUTHENTICATED`` / ``authError`` → ``AccessTokenExpired`` (tokens live about an hour:
  refresh first). A refresh answering ``invalid_grant`` ("Token has been expired or revoked")
  → ``NeedsReconnect``.
* Revocation posts only ``token=`` (the refresh token, which revokes the whole grant). Google's
  400 ``invalid_token`` there means the grant is already gone, which is what disconnect wants.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx

from platforms.http import json_body, rate_limited, scrub, seconds_until_midnight
from platforms.oauth2 import OAuth2Adapter
from social_accounts.errors import AccessTokenExpired, Permanent, PlatformError, RateLimited
from social_accounts.values import AccountProfile, RefreshModel, RevokeResult, Stats, TokenSet

__all__ = ["YouTubeAdapter"]

#: the YouTube Data API quota resets at midnight Pacific time
QUOTA_TIMEZONE = ZoneInfo("America/Los_Angeles")
#: how long to back off from a per-second/per-user rate limit that names no time
SHORT_BACKOFF = 60.0
SHORT_LIMITS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})


def google_error(body: Any) -> tuple[set[str], str, str]:
    """``(reasons, status, message)`` of a Google API error body (message scrubbed)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return set(), "", ""
    details = error.get("errors")
    reasons = {str(d.get("reason")) for d in details if isinstance(d, dict)} if isinstance(details, list) else set()
    return reasons, str(error.get("status") or ""), scrub(error.get("message") or "")


class YouTubeAdapter(OAuth2Adapter):
    platform = "youtube"
    refresh_model: ClassVar[RefreshModel] = "reuse"
    default_lifetime = timedelta(hours=1)  # Google: access tokens last about 1 h (docs/platforms.md)
    required_env = ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET")

    authorize_url = "https://accounts.google.com/o/oauth2/v2/auth"
    token_url = "https://oauth2.googleapis.com/token"
    api_url = "https://www.googleapis.com/youtube/v3"
    revoke_url = "https://oauth2.googleapis.com/revoke"
    scopes = ("https://www.googleapis.com/auth/youtube.readonly",)
    scope_separator = " "
    client_auth = "body"
    use_pkce = True
    extra_authorize_params: ClassVar[dict[str, str]] = {"access_type": "offline", "prompt": "consent"}
    client_id_setting = "google_client_id"
    client_secret_setting = "google_client_secret"
    #: YouTube Data API v3 resources
    api_prefixes = (
        "/activities",
        "/captions",
        "/channels",
        "/commentThreads",
        "/comments",
        "/playlistItems",
        "/playlists",
        "/search",
        "/subscriptions",
        "/thumbnails",
        "/videos",
    )

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> PlatformError | None:
        reasons, status_text, message = google_error(json_body(response))
        status = response.status_code
        if "quotaExceeded" in reasons:
            return RateLimited(
                "daily YouTube quota exhausted",
                retry_after=seconds_until_midnight(self.clock(), QUOTA_TIMEZONE),
                scope="app",
                platform=self.platform,
                status=status,
                code="quotaExceeded",
            )
        short = reasons & SHORT_LIMITS
        if short:
            return rate_limited(response, platform=self.platform, default=SHORT_BACKOFF, code=sorted(short)[0])
        if status == 401:
            return AccessTokenExpired(
                "access token rejected; refresh first", platform=self.platform, status=401, code=status_text or None
            )
        if reasons and status < 500 and status != 429:
            return Permanent(
                message or "request refused", platform=self.platform, status=status, code=sorted(reasons)[0]
            )
        return self.classify_token_error(response)

    # ---- revoke -----------------------------------------------------------------------------

    def revoke_form(self, tokens: TokenSet) -> dict[str, str]:
        """Google takes ``token=`` alone (no client credentials)."""
        return {"token": tokens.refresh_token or tokens.access_token}

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """RFC 7009 as the base class sends it; ``invalid_token`` means the grant is already gone."""
        try:
            return super().revoke(tokens)
        except Permanent as exc:
            if exc.code != "invalid_token":
                raise
        return "revoked"

    # ---- channels ---------------------------------------------------------------------------

    def _channels(self, tokens: TokenSet, params: dict[str, str]) -> list[dict[str, Any]]:
        body = self.get_json(self.api("channels"), tokens, params=params)
        items = body.get("items") if isinstance(body, dict) else None
        return [item for item in items or [] if isinstance(item, dict) and item.get("id")]

    def _stats(self, channel: dict[str, Any]) -> Stats:
        statistics = channel.get("statistics")
        if not isinstance(statistics, dict):
            return Stats()
        hidden = statistics.get("hiddenSubscriberCount") is True
        return Stats(
            followers=None if hidden else self.as_int(statistics.get("subscriberCount")),
            following=None,
            posts=self.as_int(statistics.get("videoCount")),
        )

    @staticmethod
    def _avatar(snippet: dict[str, Any]) -> str | None:
        thumbnails = snippet.get("thumbnails")
        if not isinstance(thumbnails, dict):
            return None
        for size in ("high", "medium", "default"):
            thumb = thumbnails.get(size)
            if isinstance(thumb, dict) and thumb.get("url"):
                return str(thumb["url"])
        return None

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        channels = self._channels(tokens, {"part": "snippet,statistics", "mine": "true"})
        if not channels:
            raise Permanent("this Google account has no YouTube channel", platform=self.platform)
        profiles = []
        for channel in channels:
            snippet = channel.get("snippet")
            if not isinstance(snippet, dict):
                snippet = {}
            profiles.append(
                AccountProfile(
                    platform_account_id=str(channel["id"]),
                    name=snippet.get("title") or None,
                    handle=snippet.get("customUrl") or None,
                    avatar_url=self._avatar(snippet),
                    tokens=tokens,
                    stats=self._stats(channel),
                    refresh_model="reuse",
                )
            )
        return profiles

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        channels = self._channels(tokens, {"part": "statistics", "id": platform_account_id})
        channel = next((c for c in channels if str(c["id"]) == platform_account_id), None)
        if channel is None:
            raise Permanent("the channel no longer exists", platform=self.platform)
        return self._stats(channel)
