"""LinkedIn: OpenID Connect sign-in plus the member follower count (docs/platforms.md).

What is particular here:

* Client id and secret travel in the form body; no PKCE for web apps; space-separated scopes.
* Access tokens live 60 days. Refresh tokens are issued only to approved partner apps, so the
  refresh model is per account: ``reuse`` when the token answer carried a refresh token, else
  ``none`` (the user reconnects before the 60 days end). It is also kept in
  ``TokenSet.metadata["refresh_model"]`` so later code can tell without the profile.
* Scopes are ``LINKEDIN_SCOPES`` (space-separated; default ``openid profile email
  w_member_social``).
* Followers come from the versioned ``/rest`` API, which lives next to ``/v2``: the ``/rest``
  base is ``P_API_URL`` with a trailing ``/v2`` replaced by ``/rest`` (any other base simply gets
  ``/rest`` appended). ``memberFollowersCount`` needs ``r_member_profileAnalytics``
  (https://learn.microsoft.com/en-us/linkedin/marketing/community-management/members/follower-statistics),
  a Community Management API product most apps lack. It is requested only when
  ``LINKEDIN_SCOPES`` names it, and the count is asked for only when the token answer's
  ``scope`` shows it granted; otherwise followers are ``None`` without a request. A refusal
  there still leaves the count ``None`` and never fails the connect. Following and post counts
  do not exist for members.
* Revocation: ``POST https://www.linkedin.com/oauth/v2/revoke`` is used by several open-source
  clients but is not in LinkedIn's stored documentation (UNCONFIRMED). So by default there is
  none (``revoke`` answers ``"none"``); setting ``LINKEDIN_REVOKE_URL`` turns on RFC 7009
  revocation with the credentials in the body.

How failures are read:

* 401 ``serviceErrorCode`` 65601 (``REVOKED_ACCESS_TOKEN``) or 65600 (invalid token) →
  ``NeedsReconnect``. Other 401s → ``AccessTokenExpired`` (the refresh, where there is no refresh
  token, itself answers ``NeedsReconnect``). LinkedIn is known to answer ``REVOKED_ACCESS_TOKEN``
  for a few seconds right after a fresh authorization, so during a connect
  (``fetch_accounts``) that answer is ``Transient`` and the worker tries again shortly.
* 429 without headers: the limits are daily and reset at midnight UTC → ``RateLimited`` until
  then (a ``Retry-After``, should LinkedIn ever send one, wins).
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any, ClassVar

import httpx

from platforms.http import json_body, parse_retry_after, seconds_until_midnight
from platforms.oauth2 import OAuth2Adapter
from social_accounts.errors import (
    AccessTokenExpired,
    NeedsReconnect,
    Permanent,
    PlatformError,
    RateLimited,
    Transient,
)
from social_accounts.values import AccountProfile, RefreshModel, Stats, TokenSet

__all__ = ["FOLLOWERS_SCOPE", "LinkedInAdapter"]

#: the scope memberFollowersCount needs
FOLLOWERS_SCOPE = "r_member_profileAnalytics"

#: LinkedIn's serviceErrorCode values meaning the token is gone for good
RECONNECT_SERVICE_CODES = {65600: "INVALID_ACCESS_TOKEN", 65601: "REVOKED_ACCESS_TOKEN"}


class LinkedInAdapter(OAuth2Adapter):
    platform = "linkedin"
    refresh_model: ClassVar[RefreshModel] = "reuse"
    default_lifetime = timedelta(days=60)  # LinkedIn: access tokens last 60 d (docs/platforms.md)
    #: 60-day tokens: refresh two days early, leaving time for retries
    refresh_margin = timedelta(days=2)
    required_env = ("LINKEDIN_CLIENT_ID", "LINKEDIN_CLIENT_SECRET")

    authorize_url = "https://www.linkedin.com/oauth/v2/authorization"
    token_url = "https://www.linkedin.com/oauth/v2/accessToken"
    api_url = "https://api.linkedin.com/v2"
    revoke_url = ""  # UNCONFIRMED endpoint: only with LINKEDIN_REVOKE_URL (see the module docstring)
    scopes = ("openid", "profile", "email", "w_member_social")
    scope_separator = " "
    client_auth = "body"
    use_pkce = False
    client_id_setting = "linkedin_client_id"
    client_secret_setting = "linkedin_client_secret"
    #: ``/v2`` resources, and the versioned ``/rest`` API beside it (posts, images...), reached
    #: as ``/rest/...``; never ``/oauth/...``
    api_prefixes = ("/userinfo", "/me", "/ugcPosts", "/shares", "/assets", "/socialActions", "/rest")

    # ---- scopes -----------------------------------------------------------------------------

    def requested_scopes(self) -> tuple[str, ...]:
        """``LINKEDIN_SCOPES`` split on spaces (or commas); the class default when it is empty."""
        configured = tuple(s for s in self.settings.linkedin_scopes.replace(",", " ").split() if s)
        return configured or self.scopes

    def authorization_params(self, *, state: str, redirect_uri: str, code_challenge: str | None) -> dict[str, str]:
        params = super().authorization_params(state=state, redirect_uri=redirect_uri, code_challenge=code_challenge)
        params["scope"] = self.scope_separator.join(self.requested_scopes())
        return params

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> PlatformError | None:
        status = response.status_code
        if status == 429:
            retry = parse_retry_after(response.headers.get("retry-after"))
            if retry is None:
                retry = seconds_until_midnight(self.clock(), UTC)
            return RateLimited("daily limit reached", retry_after=retry, platform=self.platform, status=429)
        if status == 401:
            body = json_body(response)
            service_code = body.get("serviceErrorCode") if isinstance(body, dict) else None
            if service_code in RECONNECT_SERVICE_CODES:
                return NeedsReconnect(
                    "LinkedIn no longer accepts this token",
                    platform=self.platform,
                    status=401,
                    code=RECONNECT_SERVICE_CODES[service_code],
                )
            return AccessTokenExpired("access token rejected; refresh first", platform=self.platform, status=401)
        return self.classify_token_error(response)

    # ---- tokens -----------------------------------------------------------------------------

    def parse_token_response(self, body: dict[str, Any], previous: TokenSet | None = None) -> TokenSet:
        tokens = super().parse_token_response(body, previous)
        model: RefreshModel = "reuse" if tokens.refresh_token else "none"
        return tokens.replace(metadata={**tokens.metadata, "refresh_model": model})

    # ---- requests for other modules -----------------------------------------------------

    def request_base(self, tokens: TokenSet) -> str:
        """The root both APIs hang from: ``P_API_URL`` without its ``/v2`` (module docstring)."""
        return self.endpoint("api_url", self.api_url).rstrip("/").removesuffix("/v2")

    def request_url(self, path: str, tokens: TokenSet) -> str:
        """``/rest/...`` goes to the versioned API beside ``/v2``; every other path to ``/v2``."""
        if path == "/rest" or path.startswith("/rest/"):
            return self.rest(path.removeprefix("/rest"))
        return self.api(path)

    def authorize_request(self, request: httpx.Request, tokens: TokenSet) -> httpx.Request:
        """Bearer, plus the version headers the ``/rest`` API requires on every call."""
        request = super().authorize_request(request, tokens)
        if str(request.url).startswith(self.rest("")):
            request.headers.setdefault("LinkedIn-Version", self.settings.linkedin_api_version)
            request.headers.setdefault("X-Restli-Protocol-Version", "2.0.0")
        return request

    # ---- profile and counts -----------------------------------------------------------------

    def rest(self, path: str) -> str:
        """A versioned ``/rest`` path next to the ``/v2`` API base (see the module docstring)."""
        base = self.endpoint("api_url", self.api_url).rstrip("/")
        base = base.removesuffix("/v2") + "/rest"
        return base + "/" + path.lstrip("/")

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        try:
            info = self.get_json(self.api("userinfo"), tokens)
        except NeedsReconnect as exc:
            if exc.code != "REVOKED_ACCESS_TOKEN":
                raise
            raise Transient(
                "LinkedIn reported a fresh token as revoked (known delay); try again shortly",
                platform=self.platform,
                status=exc.status,
                code=exc.code,
            ) from None
        if not isinstance(info, dict) or not info.get("sub"):
            raise Permanent("userinfo answered without a member id", platform=self.platform)
        try:
            followers = self._followers(tokens)
        except PlatformError:
            followers = None  # counts never fail a connect
        model: RefreshModel = "reuse" if tokens.refresh_token else "none"
        return [
            AccountProfile(
                platform_account_id=str(info["sub"]),
                name=info.get("name") or None,
                handle=None,  # vanityName needs r_basicprofile, a restricted product
                avatar_url=info.get("picture") or None,
                tokens=tokens,
                stats=Stats(followers=followers),
                refresh_model=model,
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        """Followers only; a missing permission gives ``None``, a dead token still raises."""
        try:
            followers = self._followers(tokens)
        except Permanent:
            followers = None
        return Stats(followers=followers)

    def _followers(self, tokens: TokenSet) -> int | None:
        """``memberFollowersCount``, only when the granted scope allows it (no request otherwise)."""
        if FOLLOWERS_SCOPE not in tokens.scopes:
            return None
        body = self.get_json(
            self.rest("memberFollowersCount"),
            tokens,
            params={"q": "me"},
            headers={
                "LinkedIn-Version": self.settings.linkedin_api_version,
                "X-Restli-Protocol-Version": "2.0.0",
            },
        )
        elements = body.get("elements") if isinstance(body, dict) else None
        if not isinstance(elements, list) or not elements or not isinstance(elements[0], dict):
            return None
        return self.as_int(elements[0].get("memberFollowersCount"))
