"""Instagram professional accounts through Instagram Login: no Facebook Page needed.

Meta's "Instagram API with Instagram Login" is its own product, beside the Page-linked path of
``platforms.instagram`` (docs/platforms.md, "Instagram by Instagram Login"): its own app id and
secret (``INSTAGRAM_APP_ID`` / ``INSTAGRAM_APP_SECRET``), its own hosts and its own scopes.

* The user consents at ``https://www.instagram.com/oauth/authorize`` to ``instagram_business_*``
  scopes (comma-separated, no PKCE); the code is exchanged at
  ``https://api.instagram.com/oauth/access_token`` for a short-lived (1 h) token
  (https://developers.facebook.com/docs/instagram-platform/instagram-api-with-instagram-login/business-login).
* ``ig_exchange_token`` at ``graph.instagram.com/access_token`` turns it into a 60-day token at
  once; ``ig_refresh_token`` at ``graph.instagram.com/refresh_access_token`` extends that one
  for another 60 days, but only once it is at least 24 hours old and while it has not expired
  (https://developers.facebook.com/docs/instagram-platform/reference/refresh_access_token), hence
  ``refresh_model="extend"`` with a 7-day margin: due at day 53, a week of retries before day 60.
  A refresh asked for earlier raises ``NotNow`` until the token is a day old; nothing is sent.
* The profile and the counts come from one read of ``graph.instagram.com/{version}/me``.
* Errors and usage headers are the Graph API's (code 190 → reconnect, 4/17 → rate limited,
  ``X-Business-Use-Case-Usage``), read by :func:`platforms.meta.classify_meta`. Only the code
  exchange on ``api.instagram.com`` answers in a flat shape of its own
  (``{"error_type", "code", "error_message"}``).
* There is no revocation endpoint: ``revoke`` answers ``none`` (``INSTAGRAM_LOGIN_REVOKE_URL``
  turns on RFC 7009 there, as for every OAuth platform).

``INSTAGRAM_LOGIN_API_URL`` is the host base (default ``https://graph.instagram.com``, no
version): the unversioned token paths and the versioned ``/me`` are joined to it as the
documented URLs read. The two token GETs carry the token (and the exchange the app secret) in
the query string because that is the only documented form; profile reads send the token in the
``Authorization`` header.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from platforms.http import as_int, json_body, scrub
from platforms.meta import MetaOAuth2Adapter, classify_meta, nonempty_str
from social_accounts.errors import NeedsReconnect, NotNow, Permanent, PlatformError
from social_accounts.values import AccountProfile, Stats, TokenSet

__all__ = ["MIN_REFRESH_AGE", "PROFILE_FIELDS", "InstagramLoginAdapter", "classify_instagram"]

PROFILE_FIELDS = "user_id,username,name,profile_picture_url,followers_count,follows_count,media_count"
STATS_FIELDS = "followers_count,follows_count,media_count"
#: Meta refreshes a long-lived token only once it is this old
MIN_REFRESH_AGE = timedelta(hours=24)
#: the code exchange's token lasts one hour (the business-login page above)
SHORT_LIFETIME = timedelta(hours=1)


def classify_instagram(response: httpx.Response, platform: str) -> PlatformError | None:
    """Graph errors as everywhere at Meta; the code exchange's flat ``error_type`` body as Permanent.

    ``api.instagram.com/oauth/access_token`` refuses a spent or unknown code with
    ``{"error_type": "OAuthException", "code": 400, "error_message": "Matching code was not found
    or was already used"}``: codes are single-use, so nothing but a new login helps.
    """
    error = classify_meta(response, platform)
    if error is not None or response.status_code >= 500 or response.status_code == 429:
        return error
    body = json_body(response)
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        code = as_int(body.get("code"))
        return Permanent(
            scrub(body.get("error_message") or "") or "the code exchange was refused",
            platform=platform,
            status=response.status_code,
            code=f"{body['error_type']}/{code}" if code is not None else str(body["error_type"]),
        )
    return None


def _unwrap(body: dict[str, Any]) -> dict[str, Any]:
    """The one object of an answer that may come wrapped as ``{"data": [{...}]}``.

    The business-login page shows the code exchange's answer wrapped that way, and Meta's
    getting-started page shows ``/me`` so too; the reference pages show plain objects. Both read alike.
    """
    data = body.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0]
    return body


class InstagramLoginAdapter(MetaOAuth2Adapter):
    platform = "instagram_login"
    refresh_model = "extend"
    default_lifetime = timedelta(days=60)  # long-lived Instagram User tokens (docs/platforms.md)
    refresh_margin = timedelta(days=7)
    required_env = ("INSTAGRAM_APP_ID", "INSTAGRAM_APP_SECRET")
    client_id_setting = "instagram_app_id"
    client_secret_setting = "instagram_app_secret"
    authorize_url = "https://www.instagram.com/oauth/authorize"
    token_url = "https://api.instagram.com/oauth/access_token"
    api_url = "https://graph.instagram.com"
    scopes = (
        "instagram_business_basic",
        "instagram_business_content_publish",
        "instagram_business_manage_comments",
        "instagram_business_manage_insights",
    )

    @property
    def version(self) -> str:
        """The Graph version of profile reads: the one ``META_GRAPH_VERSION`` every Meta call uses."""
        return self.settings.meta_graph_version

    def classify(self, response: httpx.Response) -> PlatformError | None:
        return classify_instagram(response, self.platform)

    def classify_token_error(self, response: httpx.Response) -> PlatformError | None:
        return classify_instagram(response, self.platform)

    # ---- tokens ---------------------------------------------------------------------------------

    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str | None, instance: str | None = None
    ) -> TokenSet:
        """``POST api.instagram.com/oauth/access_token`` (form fields, ``grant_type=authorization_code``).

        The answer is ``{"data": [{"access_token", "user_id", "permissions"}]}``: a one-hour
        token, the app-scoped user id and the permissions granted as a comma-separated string.
        """
        body = _unwrap(
            self.token_request({"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri})
        )
        permissions = body.get("permissions")
        if isinstance(permissions, str | list) and "scope" not in body:
            body = {**body, "scope": permissions}
        if body.get("expires_in") is None:  # documented as a one-hour token, not a 60-day one
            body = {**body, "expires_in": int(SHORT_LIFETIME.total_seconds())}
        return self.after_exchange(self.parse_token_response(body), body)

    def after_exchange(self, tokens: TokenSet, body: dict[str, Any]) -> TokenSet:
        """Record the app-scoped user id and trade the short token for a 60-day one right away
        (a temporary failure leaves it marked ``long_lived: False`` for ``fetch_accounts``)."""
        user_id = body.get("user_id")
        if user_id is not None:
            tokens = tokens.replace(metadata={**tokens.metadata, "ig_scoped_user_id": str(user_id)})
        return self.long_lived_or_later(tokens)

    def long_lived(self, tokens: TokenSet, body: dict[str, Any]) -> TokenSet:
        """The 60-day token of an exchange or refresh answer, stamped with when it was issued
        (the 24-hour rule of :meth:`refresh` reads it)."""
        fresh = super().long_lived(tokens, body)
        return fresh.replace(metadata={**fresh.metadata, "issued_at": self.clock().isoformat()})

    def exchange_long_lived(self, tokens: TokenSet) -> TokenSet:
        """``ig_exchange_token``: the short-lived token of the code exchange → a 60-day one."""
        return self.exchange_by_get(tokens, "ig_exchange_token")

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """``ig_refresh_token`` on a long-lived token at least a day old and not expired.

        Raises:
          NeedsReconnect: the token already expired (by our clock): Meta refreshes none then.
          NotNow: the token is younger than 24 hours; nothing is sent, come back when it is a day old.
        """
        now = self.clock()
        if tokens.expires_at is not None and tokens.expires_at <= now:
            raise NeedsReconnect(
                "the Instagram token expired and cannot be refreshed", platform=self.platform, code="expired"
            )
        if tokens.metadata.get("long_lived") is False:
            return self.exchange_long_lived(tokens)
        issued = tokens.issued_at
        if issued is not None and now - issued < MIN_REFRESH_AGE:
            wait = (issued + MIN_REFRESH_AGE - now).total_seconds()
            raise NotNow(wait, "Instagram refreshes a token only once it is 24 hours old")
        body = self.token_get(
            "refresh_access_token", {"grant_type": "ig_refresh_token", "access_token": tokens.access_token}
        )
        return self.long_lived(tokens, body)

    # ---- profile and counts -----------------------------------------------------------------------

    def _me(self, tokens: TokenSet, fields: str) -> dict[str, Any]:
        body = self.get_json(self.api(f"{self.version}/me"), tokens, params={"fields": fields})
        if not isinstance(body, dict):
            raise Permanent("Instagram answered without a JSON object", platform=self.platform)
        return _unwrap(body)

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        """The one professional account of this token, with its counts (one read)."""
        tokens = self.ensure_long_lived(tokens)
        body = self._me(tokens, PROFILE_FIELDS)
        # user_id is the professional account's Instagram id; id is app-scoped
        account_id = str(body.get("user_id") or body.get("id") or tokens.metadata.get("ig_scoped_user_id") or "")
        if not account_id:
            raise Permanent("Instagram /me returned no user id", platform=self.platform)
        return [
            AccountProfile(
                platform_account_id=account_id,
                name=nonempty_str(body.get("name")),
                handle=nonempty_str(body.get("username")),
                avatar_url=nonempty_str(body.get("profile_picture_url")),
                tokens=tokens.replace(metadata={**tokens.metadata, "ig_user_id": account_id}),
                stats=_stats(body),
                refresh_model="extend",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        """The counts of ``/me``: the token belongs to this one account only."""
        return _stats(self._me(tokens, STATS_FIELDS))


def _stats(body: dict[str, Any]) -> Stats:
    return Stats(
        followers=as_int(body.get("followers_count")),
        following=as_int(body.get("follows_count")),
        posts=as_int(body.get("media_count")),
    )
