"""Threads: Meta's separate API on ``graph.threads.com`` with its own app id and secret.

Not Facebook's flow (docs/platforms.md, Threads): the code yields a short-lived
token plus ``user_id``; ``th_exchange_token`` turns it into a 60-day token and
``th_refresh_token`` extends that one (it must be at least 24 h old and not expired), hence
``refresh_model="extend"``. Errors are Meta-shaped and read by :func:`platforms.meta.classify_meta`.

The dialog is ``https://threads.com/oauth/authorize`` and the API ``https://graph.threads.com``, as
the current documentation shows
(https://developers.facebook.com/documentation/threads/get-started/get-access-tokens-and-permissions);
``threads.net`` still answers but is the older host.

``THREADS_API_URL`` is the host base (default ``https://graph.threads.com``, no version): the
versioned profile paths (``/v1.0/me``) and the unversioned token paths (``/access_token``,
``/refresh_access_token``) are both joined to it, exactly as the documented URLs read. The
token-exchange calls are GETs with the token in the query string because that is the only
documented form; Graph reads send the token in the ``Authorization`` header.

There is no documented revocation endpoint, so ``revoke`` answers ``none`` unless
``THREADS_REVOKE_URL`` turns on RFC 7009 revocation (the base class does that).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from platforms.http import Classifier, as_int
from platforms.meta import MetaOAuth2Adapter, is_permission_error, nonempty_str
from social_accounts.errors import NeedsReconnect, Permanent, PlatformError
from social_accounts.values import AccountProfile, Stats, TokenSet

__all__ = ["ThreadsAdapter"]

API_VERSION = "v1.0"
PROFILE_FIELDS = "id,username,name,threads_profile_picture_url"


class ThreadsAdapter(MetaOAuth2Adapter):
    platform = "threads"
    refresh_model = "extend"
    default_lifetime = timedelta(days=60)  # Meta's long-lived Threads tokens last 60 d (docs/platforms.md)
    refresh_margin = timedelta(days=7)
    required_env = ("THREADS_APP_ID", "THREADS_APP_SECRET")
    client_id_setting = "threads_app_id"
    client_secret_setting = "threads_app_secret"
    authorize_url = "https://threads.com/oauth/authorize"
    token_url = "https://graph.threads.com/oauth/access_token"
    api_url = "https://graph.threads.com"
    scopes = ("threads_basic", "threads_content_publish", "threads_manage_insights")
    #: versioned Graph nodes (``/v1.0/me``, ``/v1.0/{id}/threads``); never the token paths
    api_prefixes = ("/v[0-9]*/me", "/v[0-9]*/[0-9]*")

    # ---- tokens ---------------------------------------------------------------------------------

    def after_exchange(self, tokens: TokenSet, body: dict[str, Any]) -> TokenSet:
        """Record ``user_id`` and trade the short token for a 60-day one right away.

        A temporary failure of that follow-up leaves the short token marked ``long_lived: False``
        (the code is spent; retrying the exchange would fail): ``fetch_accounts`` and ``refresh``
        finish the upgrade later.
        """
        user_id = body.get("user_id")
        if user_id is not None:
            tokens = tokens.replace(metadata={**tokens.metadata, "threads_user_id": str(user_id)})
        return self.long_lived_or_later(tokens)

    def token_request(
        self, form: dict[str, str], *, classify: Classifier | None = None, url: str | None = None
    ) -> dict[str, Any]:
        """The code exchange; ``THREADS_API_URL`` moves it too unless ``THREADS_TOKEN_URL`` is set."""
        return super().token_request(
            form, classify=classify, url=url or self.endpoint("token_url", self.api("oauth/access_token"))
        )

    def exchange_long_lived(self, tokens: TokenSet) -> TokenSet:
        """``th_exchange_token``: the short-lived token of the code exchange → a 60-day one."""
        return self.exchange_by_get(tokens, "th_exchange_token")

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """``th_refresh_token`` on the long-lived token (``th_exchange_token`` if it never became one)."""
        if tokens.expires_at is not None and tokens.expires_at <= self.clock():
            raise NeedsReconnect(
                "the Threads token expired and cannot be refreshed", platform=self.platform, code="expired"
            )
        if tokens.metadata.get("long_lived") is False:
            return self.exchange_long_lived(tokens)
        body = self.token_get(
            "refresh_access_token", {"grant_type": "th_refresh_token", "access_token": tokens.access_token}
        )
        return self.long_lived(tokens, body)

    # ---- profile and counts -----------------------------------------------------------------------

    def _get(self, path: str, tokens: TokenSet, params: dict[str, str]) -> dict[str, Any]:
        body = self.get_json(self.api(f"{API_VERSION}/{path}"), tokens, params=params)
        if not isinstance(body, dict):
            raise Permanent("Threads answered without a JSON object", platform=self.platform)
        return body

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        """The one Threads profile of this token; followers when the insights scope allows."""
        tokens = self.ensure_long_lived(tokens)
        body = self._get("me", tokens, {"fields": PROFILE_FIELDS})
        user_id = str(body.get("id") or tokens.metadata.get("threads_user_id") or "")
        if not user_id:
            raise Permanent("Threads /me returned no id", platform=self.platform)
        try:
            followers = self._followers(user_id, tokens)
        except PlatformError:
            followers = None  # counts never fail a connect; the next sync retries them
        return [
            AccountProfile(
                platform_account_id=user_id,
                name=nonempty_str(body.get("name")),
                handle=nonempty_str(body.get("username")),
                avatar_url=nonempty_str(body.get("threads_profile_picture_url")),
                tokens=tokens.replace(metadata={**tokens.metadata, "threads_user_id": user_id}),
                stats=Stats(followers=followers),
                refresh_model="extend",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        return Stats(followers=self._followers(platform_account_id, tokens), following=None, posts=None)

    def _followers(self, user_id: str, tokens: TokenSet) -> int | None:
        """``threads_insights?metric=followers_count``; a missing permission gives None, not an error."""
        try:
            body = self._get(f"{user_id}/threads_insights", tokens, {"metric": "followers_count"})
        except Permanent as exc:
            if is_permission_error(exc):
                return None
            raise
        for item in body.get("data") or []:
            if isinstance(item, dict) and item.get("name") == "followers_count":
                return _metric_value(item)
        return None


def _metric_value(item: dict[str, Any]) -> int | None:
    """An insights metric: ``total_value.value``, else the last of ``values[].value``."""
    total = item.get("total_value")
    if isinstance(total, dict) and total.get("value") is not None:
        return as_int(total.get("value"))
    values = item.get("values")
    if isinstance(values, list) and values and isinstance(values[-1], dict):
        return as_int(values[-1].get("value"))
    return None
