"""X (Twitter): OAuth 2.0 authorization code with PKCE, confidential client (docs/platforms.md, "X / Twitter").

What is particular here:

* The client authenticates with HTTP Basic at the token and revocation endpoints; credentials in
  the form body alone are refused (``unauthorized_client: Missing valid authorization header``).
* PKCE S256 is mandatory; scopes are space-separated and include ``offline.access``, without
  which no refresh token is issued.
* Access tokens live 2 hours and refresh tokens rotate (single use): every refresh answer is
  stored as is, and replaying a spent refresh token may revoke the whole grant.

How failures are read (decided here, because only this module knows X):

* API 401 (problem-details ``{"title": "Unauthorized", ...}``) → ``AccessTokenExpired``. With
  2-hour tokens an expired access token is by far the common cause, so the caller refreshes
  first; if the grant is really gone, the refresh answers ``invalid_grant`` → ``NeedsReconnect``.
* Token endpoint ``invalid_grant``, and ``invalid_request`` on a *refresh* (X's answer for a
  spent or revoked refresh token) → ``NeedsReconnect``. ``unauthorized_client`` means our own
  client credentials are wrong: reconnecting cannot fix that, so it is ``Permanent``.
* 429 → ``RateLimited`` until ``x-rate-limit-reset`` (Unix epoch seconds); without that header
  (X omits it when the app's access tier does not match) the 15-minute window is assumed.

Revocation (https://docs.x.com/fundamentals/authentication/oauth-2-0/user-access-token): one
``POST /2/oauth2/revoke`` per token, each with its ``token_type_hint``. The refresh token goes
first (no new access token can be minted after it), then the access token, which would otherwise
keep working for up to two hours.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import httpx

from platforms.base import RateHint
from platforms.http import header_is_zero, oauth_error, rate_limited, seconds_until_epoch, send
from platforms.oauth2 import OAuth2Adapter
from social_accounts.errors import AccessTokenExpired, NeedsReconnect, Permanent, PlatformError, RateLimited
from social_accounts.values import AccountProfile, RefreshModel, RevokeResult, Stats, TokenSet

__all__ = ["TwitterAdapter", "remaining_zero"]

#: X's rate-limit windows are 15 minutes; used when a 429 carries no reset header
WINDOW_SECONDS = 15 * 60


def remaining_zero(response: httpx.Response) -> bool:
    """True when the response says this window is used up (``x-rate-limit-remaining: 0``).

    A successful answer can already announce that the next call will be refused; a shared
    cooldown can use this to stop before X answers 429.
    """
    return header_is_zero(response, "x-rate-limit-remaining")


class TwitterAdapter(OAuth2Adapter):
    platform = "twitter"
    refresh_model: ClassVar[RefreshModel] = "rotate"
    default_lifetime = timedelta(hours=2)  # X: access tokens last 2 h (docs/platforms.md)
    required_env = ("TWITTER_CLIENT_ID", "TWITTER_CLIENT_SECRET")

    authorize_url = "https://x.com/i/oauth2/authorize"
    token_url = "https://api.x.com/2/oauth2/token"
    api_url = "https://api.x.com/2"
    revoke_url = "https://api.x.com/2/oauth2/revoke"
    scopes = ("tweet.read", "users.read", "offline.access")
    scope_separator = " "
    client_auth = "basic"
    use_pkce = True
    client_id_setting = "twitter_client_id"
    client_secret_setting = "twitter_client_secret"
    #: API v2 resources under ``P_API_URL``; never ``/oauth2/...``
    api_prefixes = ("/tweets", "/users", "/media", "/lists", "/spaces", "/dm_conversations", "/dm_events")
    #: the refresh grant rotates; without ``offline.access`` X issues no refresh token at all
    missing_refresh_message = "no refresh token was issued (offline.access missing)"

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> PlatformError | None:
        """API calls: rate limits and 401s as X means them (see the module docstring)."""
        status = response.status_code
        if status == 429:
            return self._rate_limited(response)
        if oauth_error(response)[0] is not None:  # token/revoke endpoints answer in OAuth's shape
            return self.classify_token_error(response)
        if status == 401:
            return AccessTokenExpired("access token rejected; refresh first", platform=self.platform, status=401)
        return self.classify_token_error(response)

    def classify_token_error(self, response: httpx.Response) -> PlatformError | None:
        error, description = oauth_error(response)
        if error == "unauthorized_client":
            return Permanent(
                "X refused our client credentials", platform=self.platform, status=response.status_code, code=error
            )
        if response.status_code == 429:
            return self._rate_limited(response)
        return super().classify_token_error(response)

    def classify_refresh_error(self, response: httpx.Response) -> PlatformError | None:
        """``invalid_request`` on a refresh is X's answer for a spent or revoked refresh token."""
        error, description = oauth_error(response)
        if error == "invalid_request":
            return NeedsReconnect(
                description or "the refresh token was refused",
                platform=self.platform,
                status=response.status_code,
                code=error,
            )
        return self.classify_token_error(response)

    def _rate_limited(self, response: httpx.Response) -> RateLimited:
        return rate_limited(
            response, platform=self.platform, default=WINDOW_SECONDS, code="88", reset_header="x-rate-limit-reset"
        )

    def rate_hint(self, response: httpx.Response) -> RateHint | None:
        """``x-rate-limit-remaining: 0`` on a success: this user's window is spent until the reset."""
        if not remaining_zero(response):
            return None
        retry = seconds_until_epoch(response.headers.get("x-rate-limit-reset"))
        return RateHint(WINDOW_SECONDS if retry is None else retry, "account")

    # ---- revocation -------------------------------------------------------------------------

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """Revoke the refresh token, then the access token: two calls (module docstring)."""
        url = self.endpoint("revoke_url", self.revoke_url)
        pairs = [(tokens.refresh_token, "refresh_token"), (tokens.access_token, "access_token")]
        for token, hint in pairs:
            if not token:
                continue
            send(
                self.http,
                "POST",
                url,
                platform=self.platform,
                classify=self.classify,
                data={"token": token, "token_type_hint": hint},
                auth=self.client_basic_auth(),
                timeout=self.timeout(),
            )
        return "revoked"

    # ---- the flow ---------------------------------------------------------------------------

    def _me(self, tokens: TokenSet) -> dict[str, Any]:
        body = self.get_json(self.api("users/me"), tokens, params={"user.fields": "profile_image_url,public_metrics"})
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not data.get("id"):
            raise Permanent("users/me answered without a user", platform=self.platform)
        return data

    @staticmethod
    def _stats(user: dict[str, Any]) -> Stats:
        metrics = user.get("public_metrics")
        if not isinstance(metrics, dict):
            return Stats()
        return Stats(
            followers=OAuth2Adapter.as_int(metrics.get("followers_count")),
            following=OAuth2Adapter.as_int(metrics.get("following_count")),
            posts=OAuth2Adapter.as_int(metrics.get("tweet_count")),
        )

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        user = self._me(tokens)
        return [
            AccountProfile(
                platform_account_id=str(user["id"]),
                name=user.get("name") or None,
                handle=user.get("username") or None,
                avatar_url=user.get("profile_image_url") or None,
                tokens=tokens,
                stats=self._stats(user),
                refresh_model="rotate",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        """``users/me`` again: a user token only ever speaks for its own account."""
        user = self._me(tokens)
        if str(user["id"]) != platform_account_id:
            raise Permanent("the token belongs to another X account", platform=self.platform)
        return self._stats(user)
