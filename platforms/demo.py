"""The built-in demo platform: a standard OAuth 2.0 provider served by this very process.

Why it exists: a newcomer with no platform credentials and no internet can still connect, sync,
refresh and disconnect an account within a minute of ``social-accounts run --demo``. The provider
side lives in ``web_callback.demo`` under ``PUBLIC_URL/demo/...``; this adapter talks to it over
HTTP exactly like any other OAuth 2.0 adapter (PKCE, client secret in the body, rotating refresh
tokens, RFC 7009 revocation), so the demo exercises the real connect, refresh and sync paths.

It is registered only when ``settings.demo_enabled`` (``platforms.registry``); nothing here is
configured through the environment. The client secret is derived from ``STATE_SECRET``, so
both sides know it without another setting and it never appears anywhere in clear.

Access tokens live ``ACCESS_TOKEN_SECONDS`` (5 minutes) so a refresh is visible in the demo; the
refresh margin of 2 minutes means the scheduler refreshes each token about 3 minutes in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import httpx

from platforms.oauth2 import OAuth2Adapter
from social_accounts.errors import AccessTokenExpired, Permanent, PlatformError
from social_accounts.settings import Settings
from social_accounts.signing import derive_key
from social_accounts.values import AccountProfile, RefreshModel, Stats, TokenSet

__all__ = [
    "ACCESS_TOKEN_SECONDS",
    "DEMO_CLIENT_ID",
    "DEMO_PATH",
    "DemoAdapter",
    "demo_client_secret",
]

#: where web_callback.demo serves the provider, below PUBLIC_URL
DEMO_PATH = "/demo"
DEMO_CLIENT_ID = "social-accounts-demo"
#: short on purpose: the demo shows a refresh within minutes
ACCESS_TOKEN_SECONDS = 300


def demo_client_secret(settings: Settings) -> str:
    """The demo client's secret, derived from STATE_SECRET (both sides compute the same)."""
    return derive_key(settings.state_secret or "", b"sa-demo-client-secret-v1").hex()


class DemoAdapter(OAuth2Adapter):
    platform = "demo"
    refresh_model: ClassVar[RefreshModel] = "rotate"
    default_lifetime = timedelta(minutes=5)  # the demo provider issues 5-minute access tokens
    refresh_margin = timedelta(minutes=2)
    required_env = ()

    # paths below PUBLIC_URL (see ``endpoint``)
    authorize_url = f"{DEMO_PATH}/authorize"
    token_url = f"{DEMO_PATH}/token"
    api_url = f"{DEMO_PATH}/api"
    revoke_url = f"{DEMO_PATH}/revoke"
    scopes = ("profile", "stats")
    client_auth = "body"
    use_pkce = True
    client_id_setting = "demo_enabled"  # unused: client_id / client_secret are overridden
    client_secret_setting = "demo_enabled"

    @property
    def client_id(self) -> str:
        return DEMO_CLIENT_ID

    @property
    def client_secret(self) -> str:
        return demo_client_secret(self.settings)

    def endpoint(self, kind: str, default: str) -> str:
        """Every demo endpoint is a path of this service's own ``PUBLIC_URL``."""
        return self.settings.public_url.rstrip("/") + default

    def classify(self, response: httpx.Response) -> PlatformError | None:
        """An API 401 means the 5-minute access token ran out: refresh first, then retry."""
        if response.status_code == 401 and not response.request.url.path.endswith(("/token", "/revoke")):
            return AccessTokenExpired("access token rejected; refresh first", platform=self.platform, status=401)
        return self.classify_token_error(response)

    def _me(self, tokens: TokenSet) -> dict[str, Any]:
        body = self.get_json(self.api("me"), tokens)
        if not isinstance(body, dict) or not body.get("id"):
            raise Permanent("the demo profile answered without an id", platform=self.platform)
        return body

    @staticmethod
    def _stats(body: dict[str, Any]) -> Stats:
        return Stats(
            followers=OAuth2Adapter.as_int(body.get("followers_count")),
            following=OAuth2Adapter.as_int(body.get("following_count")),
            posts=OAuth2Adapter.as_int(body.get("posts_count")),
        )

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        me = self._me(tokens)
        return [
            AccountProfile(
                platform_account_id=str(me["id"]),
                name=me.get("name") or None,
                handle=me.get("username") or None,
                avatar_url=me.get("avatar_url") or None,
                tokens=tokens,
                stats=self._stats(me),
                refresh_model="rotate",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        me = self._me(tokens)
        if str(me["id"]) != platform_account_id:
            raise Permanent("the token belongs to another demo account", platform=self.platform)
        return self._stats(me)
