"""Pinterest API v5 (docs/platforms.md, "Pinterest").

What is particular here:

* HTTP Basic ``app_id:app_secret`` at the token endpoint, for the code exchange and for every
  refresh; comma-separated scopes; no PKCE (support UNCONFIRMED).
* Access tokens live about 30 days. Under continuous refresh each refresh answer may carry a new
  refresh token and its own ``refresh_token_expires_in``: it is treated as rotating — whatever
  comes back is stored, and an answer without one keeps the old (``refresh_model = "rotate"``).
* No revocation endpoint is documented (UNCONFIRMED; users remove the app in their settings), so
  ``revoke`` answers ``"none"`` unless ``PINTEREST_REVOKE_URL`` is set, which turns on RFC 7009
  revocation with Basic client authentication.
* The display name is ``business_name`` when the account has one, else ``username``.

How failures are read (Pinterest bodies are ``{"code": int, "message": str}``, not OAuth's):

* API 401 → ``AccessTokenExpired``: refresh first; a dead grant then fails the refresh.
* A refresh refused with 400 or 401 → ``NeedsReconnect``: we build that request ourselves and it
  only varies by the refresh token, so the refusal means the token is expired, revoked or
  malformed (Pinterest documents the ``{"code", "message"}`` body, not a code for this case:
  https://developers.pinterest.com/docs/api/v5/oauth-token). Only a 401 whose message names the
  client (``Authentication failed.``, the answer to wrong Basic credentials, or a message about
  the client or app) is ``Permanent``: reconnecting cannot fix our app credentials, but an
  account marked ``error`` for a dead refresh token would never ask its user to reconnect.
* 429 → ``RateLimited``: ``Retry-After`` if present (header names UNCONFIRMED), else 60 s.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, ClassVar

import httpx

from platforms.http import json_body, rate_limited, scrub
from platforms.oauth2 import OAuth2Adapter
from social_accounts.errors import AccessTokenExpired, NeedsReconnect, Permanent, PlatformError
from social_accounts.values import AccountProfile, RefreshModel, Stats, TokenSet

__all__ = ["PinterestAdapter"]

#: back-off for a 429 that says nothing about when to come back
DEFAULT_BACKOFF = 60.0


#: words in a token-endpoint 401 message that blame our client credentials, not the refresh token
CLIENT_FAULT = re.compile(r"authentication failed|\bclient\b|\bapp(lication)?\b( id| secret)?", re.IGNORECASE)
#: words that blame the token: they win over :data:`CLIENT_FAULT` ("refresh token ... for this app")
TOKEN_FAULT = re.compile(r"\btoken\b", re.IGNORECASE)


def blames_client(message: str) -> bool:
    """True when a token-endpoint refusal says our client credentials are wrong."""
    return bool(CLIENT_FAULT.search(message)) and not TOKEN_FAULT.search(message)


def pinterest_error(response: httpx.Response) -> tuple[str | None, str]:
    """``(code, message)`` of Pinterest's ``{"code", "message"}`` error body (scrubbed)."""
    body = json_body(response)
    if isinstance(body, dict) and "code" in body and "message" in body:
        return str(body["code"]), scrub(body.get("message"))
    return None, ""


class PinterestAdapter(OAuth2Adapter):
    platform = "pinterest"
    refresh_model: ClassVar[RefreshModel] = "rotate"
    default_lifetime = timedelta(days=30)  # Pinterest: access tokens last about 30 d (docs/platforms.md)
    #: 30-day tokens: refresh two days early, leaving time for retries
    refresh_margin = timedelta(days=2)
    required_env = ("PINTEREST_APP_ID", "PINTEREST_APP_SECRET")

    authorize_url = "https://www.pinterest.com/oauth/"
    token_url = "https://api.pinterest.com/v5/oauth/token"
    api_url = "https://api.pinterest.com/v5"
    revoke_url = ""  # none documented (UNCONFIRMED): only with PINTEREST_REVOKE_URL
    scopes = ("user_accounts:read", "boards:read", "pins:read")
    scope_separator = ","
    client_auth = "basic"
    use_pkce = False
    client_id_setting = "pinterest_app_id"
    client_secret_setting = "pinterest_app_secret"
    #: API v5 resources; never ``/oauth/...``
    api_prefixes = ("/user_account", "/boards", "/pins", "/media", "/ad_accounts", "/search")

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> PlatformError | None:
        status = response.status_code
        if status == 429:
            code, _ = pinterest_error(response)
            return rate_limited(response, platform=self.platform, default=DEFAULT_BACKOFF, code=code)
        if status == 401:
            return AccessTokenExpired("access token rejected; refresh first", platform=self.platform, status=401)
        return self.classify_token_error(response)

    def classify_token_error(self, response: httpx.Response) -> PlatformError | None:
        error = super().classify_token_error(response)
        if error is not None:
            return error
        code, message = pinterest_error(response)
        if response.status_code == 401:
            return Permanent("Pinterest refused our app credentials", platform=self.platform, status=401, code=code)
        if response.status_code < 500 and code is not None and response.status_code != 429:
            return Permanent(
                message or "request refused", platform=self.platform, status=response.status_code, code=code
            )
        return None

    def classify_refresh_error(self, response: httpx.Response) -> PlatformError | None:
        """A 400 or 401 to our own refresh request means the refresh token unless the body blames
        the client (module docstring)."""
        status = response.status_code
        code, message = pinterest_error(response)
        if status == 400 or (status == 401 and not blames_client(message)):
            return NeedsReconnect(
                message or "the refresh token was refused", platform=self.platform, status=status, code=code
            )
        return self.classify_token_error(response)

    # ---- profile and counts -----------------------------------------------------------------

    def _account(self, tokens: TokenSet) -> dict[str, Any]:
        body = self.get_json(self.api("user_account"), tokens)
        if not isinstance(body, dict) or not (body.get("id") or body.get("username")):
            raise Permanent("user_account answered without an account", platform=self.platform)
        return body

    def _stats(self, account: dict[str, Any]) -> Stats:
        return Stats(
            followers=self.as_int(account.get("follower_count")),
            following=self.as_int(account.get("following_count")),
            posts=self.as_int(account.get("pin_count")),
        )

    @staticmethod
    def _account_id(account: dict[str, Any]) -> str:
        return str(account.get("id") or account["username"])

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        account = self._account(tokens)
        return [
            AccountProfile(
                platform_account_id=self._account_id(account),
                name=account.get("business_name") or account.get("username") or None,
                handle=account.get("username") or None,
                avatar_url=account.get("profile_image") or None,
                tokens=tokens,
                stats=self._stats(account),
                refresh_model="rotate",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        account = self._account(tokens)
        if self._account_id(account) != platform_account_id:
            raise Permanent("the token belongs to another Pinterest account", platform=self.platform)
        return self._stats(account)
