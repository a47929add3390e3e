"""TikTok Login Kit v2 and the user info API (docs/platforms.md, "TikTok").

What is particular here:

* The client id is called ``client_key``, in the authorization URL and in every token body
  (with ``client_secret``); no Basic auth, no PKCE for web apps; scopes are comma-separated.
* Lifetimes changed between TikTok's documents (24 h/365 d, then 2 h/180 d), so nothing is
  hard-coded: ``expires_in`` and ``refresh_expires_in`` of each answer are used.
* Refresh tokens rotate: each refresh answer is stored whole; the spent one stops working.
* The account id is ``open_id`` (per app); ``union_id`` (stable across one developer's apps)
  is kept in the token metadata.
* ``user/info`` only returns fields whose scope the user granted, so the field list follows the
  granted scopes when the token answer named them (a user may untick ``user.info.stats``).

How failures are read: API bodies are ``{"error": {"code", "message", "log_id"}}``.
``access_token_invalid`` → ``AccessTokenExpired`` (2-hour tokens: refresh first; a dead grant
then fails the refresh with ``invalid_grant`` → ``NeedsReconnect``). ``scope_not_authorized`` /
``scope_permission_missed`` → ``NeedsReconnect`` (only a new consent grants the scope).
``rate_limit_exceeded`` / 429 → ``RateLimited``: ``Retry-After`` if sent, else the 1-minute
window (TikTok's reset header name is UNCONFIRMED, so it is not read). The token endpoint's
OAuth errors (``invalid_grant``...) are read even when TikTok sends them with HTTP 200.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import httpx

from platforms.base import engagement_rate
from platforms.http import json_body, rate_limited, scrub
from platforms.oauth2 import RECONNECT_ERRORS, OAuth2Adapter
from social_accounts.errors import AccessTokenExpired, NeedsReconnect, Permanent, PlatformError
from social_accounts.values import AccountProfile, RefreshModel, Stats, TokenSet

__all__ = ["TikTokAdapter"]

#: TikTok's rate limits are per 1-minute sliding window
WINDOW_SECONDS = 60.0

#: user/info fields by the scope that unlocks them
FIELDS_BY_SCOPE = {
    "user.info.basic": ("open_id", "union_id", "avatar_url", "display_name"),
    "user.info.profile": ("username",),
    "user.info.stats": ("follower_count", "following_count", "likes_count", "video_count"),
}
SCOPE_ERRORS = frozenset({"scope_not_authorized", "scope_permission_missed"})


def api_error(body: Any) -> tuple[str | None, str]:
    """``(code, message)`` from TikTok's ``{"error": {"code", "message"}}`` (scrubbed)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"], scrub(error.get("message") or "")
    return None, ""


class TikTokAdapter(OAuth2Adapter):
    platform = "tiktok"
    refresh_model: ClassVar[RefreshModel] = "rotate"
    default_lifetime = timedelta(hours=2)  # TikTok's pages say 24 h or 2 h: the shorter (docs/platforms.md)
    required_env = ("TIKTOK_CLIENT_KEY", "TIKTOK_CLIENT_SECRET")

    authorize_url = "https://www.tiktok.com/v2/auth/authorize/"
    token_url = "https://open.tiktokapis.com/v2/oauth/token/"
    api_url = "https://open.tiktokapis.com/v2"
    revoke_url = "https://open.tiktokapis.com/v2/oauth/revoke/"
    scopes = ("user.info.basic", "user.info.profile", "user.info.stats")
    scope_separator = ","
    client_auth = "body"
    use_pkce = False
    client_id_param = "client_key"
    client_id_setting = "tiktok_client_key"
    client_secret_setting = "tiktok_client_secret"
    #: Display and Content Posting API resources; never ``/oauth/...``
    api_prefixes = ("/user", "/video", "/post")

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> PlatformError | None:
        code, message = api_error(json_body(response))
        status = response.status_code
        if status == 429 or code == "rate_limit_exceeded":
            return rate_limited(response, platform=self.platform, default=WINDOW_SECONDS, code=code)
        if code == "access_token_invalid":
            return AccessTokenExpired("access token rejected; refresh first", platform=self.platform, status=status)
        if code in SCOPE_ERRORS:
            return NeedsReconnect(
                message or "a needed scope was not granted", platform=self.platform, status=status, code=code
            )
        if code is not None and status < 500:
            return Permanent(message or "request refused", platform=self.platform, status=status, code=code)
        return self.classify_token_error(response)

    # ---- tokens -----------------------------------------------------------------------------

    def parse_token_response(self, body: dict[str, Any], previous: TokenSet | None = None) -> TokenSet:
        error = body.get("error")
        if isinstance(error, str) and error and not body.get("access_token"):
            description = scrub(body.get("error_description") or "") or "the token request was refused"
            if error in RECONNECT_ERRORS:
                raise NeedsReconnect(description, platform=self.platform, code=error)
            raise Permanent(description, platform=self.platform, code=error)
        tokens = super().parse_token_response(body, previous)
        if body.get("open_id"):
            tokens = tokens.replace(metadata={**tokens.metadata, "open_id": str(body["open_id"])})
        return tokens

    def revoke_form(self, tokens: TokenSet) -> dict[str, str]:
        """TikTok revokes by access token: ``client_key``, ``client_secret``, ``token`` in the body."""
        return {**self.client_body_fields(), "token": tokens.access_token}

    # ---- profile and counts -----------------------------------------------------------------

    def fields_for(self, tokens: TokenSet) -> str:
        """The user/info fields the granted scopes allow (all of ours when scopes are unknown)."""
        granted = [s for s in FIELDS_BY_SCOPE if s in tokens.scopes] if tokens.scopes else list(FIELDS_BY_SCOPE)
        if "user.info.basic" not in granted:
            granted.insert(0, "user.info.basic")  # always granted with Login Kit
        return ",".join(field for scope in granted for field in FIELDS_BY_SCOPE[scope])

    def _user(self, tokens: TokenSet) -> dict[str, Any]:
        body = self.get_json(self.api("user/info/"), tokens, params={"fields": self.fields_for(tokens)})
        code, message = api_error(body)
        if code not in (None, "ok"):
            raise Permanent(message or "user/info refused", platform=self.platform, code=code)
        data = body.get("data") if isinstance(body, dict) else None
        user = data.get("user") if isinstance(data, dict) else None
        if not isinstance(user, dict) or not user.get("open_id"):
            raise Permanent("user/info answered without a user", platform=self.platform)
        return user

    def _stats(self, user: dict[str, Any]) -> Stats:
        """Counts from ``user.info.stats``; ``likes_count`` (likes the user's videos received)
        over ``video_count`` and ``follower_count`` gives the engagement rate."""
        followers = self.as_int(user.get("follower_count"))
        posts = self.as_int(user.get("video_count"))
        return Stats(
            followers=followers,
            following=self.as_int(user.get("following_count")),
            posts=posts,
            engagement_rate=engagement_rate(self.as_int(user.get("likes_count")), posts, followers),
        )

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        user = self._user(tokens)
        if user.get("union_id"):
            tokens = tokens.replace(metadata={**tokens.metadata, "union_id": str(user["union_id"])})
        return [
            AccountProfile(
                platform_account_id=str(user["open_id"]),
                name=user.get("display_name") or None,
                handle=user.get("username") or None,
                avatar_url=user.get("avatar_url") or None,
                tokens=tokens,
                stats=self._stats(user),
                refresh_model="rotate",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        user = self._user(tokens)
        if str(user["open_id"]) != platform_account_id:
            raise Permanent("the token belongs to another TikTok account", platform=self.platform)
        return self._stats(user)
