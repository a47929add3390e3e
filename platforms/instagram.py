"""Instagram professional accounts reached through Facebook Login (not "Instagram Login").

One login can reach several Instagram accounts: every Page (``/me/accounts``, plus Business
Manager Pages with ``business_management``) with an ``instagram_business_account`` is one.

Each account stores the linked **Page's access token** and makes every call with it. A Page
token obtained with a long-lived user token does not expire
(https://developers.facebook.com/docs/facebook-login/guides/access-tokens/get-long-lived,
"Long-lived Page access token"),
so there is nothing to refresh (``refresh_model="none"``). It dies only when the user removes
the app, loses the Page role or changes their password: Graph then answers code 190 and the
account needs a reconnect.

The user token is not kept. Meta documents ``fb_exchange_token`` only for exchanging a
*short-lived* user token (done once, at connect), not for extending a long-lived one, so
re-exchanging a 60-day user token risked accounts dying silently at day 60. Revocation uses the
app token and the stored Meta user id, so it needs no user token either.

Accounts connected before this change hold the user token (``token_type`` is not ``page``):
their next refresh swaps it for the Page token (``GET /{page-id}?fields=access_token``) while
the user token still works.
"""

from __future__ import annotations

from platforms.meta import MetaGraphAdapter, nonempty_str
from social_accounts.errors import NeedsReconnect, Permanent
from social_accounts.values import AccountProfile, Stats, TokenSet

__all__ = ["InstagramAdapter"]

PROFILE_FIELDS = "id,username,name,profile_picture_url,followers_count,follows_count,media_count"
STATS_FIELDS = "followers_count,follows_count,media_count"
PAGE_FIELDS = "id,name,access_token,instagram_business_account"


class InstagramAdapter(MetaGraphAdapter):
    platform = "instagram"
    refresh_model = "none"
    scopes = (
        "instagram_basic",
        "instagram_content_publish",
        "instagram_manage_insights",
        "instagram_manage_comments",
        "pages_show_list",
        "pages_read_engagement",
        "business_management",
    )

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        """One profile per Instagram business account linked to a Page the user can act for,
        holding that Page's token (a Page listed without one cannot be acted for: left out)."""
        tokens = self.ensure_long_lived(tokens)
        user_id = self.user_id(tokens)
        granted = self.granted_permissions(tokens)
        seen: set[str] = set()
        profiles = []
        for page in self.list_pages(tokens, PAGE_FIELDS, granted):
            linked = page.get("instagram_business_account")
            ig_id = str(linked.get("id") or "") if isinstance(linked, dict) else ""
            page_token = page.get("access_token")
            if not ig_id or ig_id in seen or not isinstance(page_token, str) or not page_token:
                continue
            seen.add(ig_id)
            body = self.graph_get(self.api(ig_id), page_token, {"fields": PROFILE_FIELDS})
            profiles.append(
                AccountProfile(
                    platform_account_id=str(body.get("id") or ig_id),
                    name=nonempty_str(body.get("name")),
                    handle=nonempty_str(body.get("username")),
                    avatar_url=nonempty_str(body.get("profile_picture_url")),
                    tokens=TokenSet(
                        access_token=page_token,
                        expires_at=None,
                        scopes=granted or tokens.scopes,
                        metadata={"meta_user_id": user_id, "page_id": str(page["id"]), "token_type": "page"},
                    ),
                    stats=self._stats(body),
                    refresh_model="none",
                )
            )
        return profiles

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        body = self.graph_get(self.api(platform_account_id), tokens.access_token, {"fields": STATS_FIELDS})
        return self._stats(body)

    def _stats(self, body: dict[str, object]) -> Stats:
        return Stats(
            followers=self.as_int(body.get("followers_count")),
            following=self.as_int(body.get("follows_count")),
            posts=self.as_int(body.get("media_count")),
        )

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """Nothing to refresh for a Page token; an account still on a user token gets its Page's.

        No ``fb_exchange_token`` here: it is documented for short-lived tokens only.
        """
        if tokens.metadata.get("token_type") == "page":
            raise Permanent("Instagram accounts use a Page token, which has nothing to refresh", platform=self.platform)
        if tokens.expires_at is not None and tokens.expires_at <= self.clock():
            raise NeedsReconnect("the Instagram user token expired", platform=self.platform, code="expired")
        page_id = tokens.metadata.get("page_id")
        if not page_id:
            raise NeedsReconnect("no Page is known for this account; reconnect it", platform=self.platform)
        body = self.graph_get(self.api(str(page_id)), tokens.access_token, {"fields": "access_token"})
        page_token = body.get("access_token")
        if not isinstance(page_token, str) or not page_token:
            raise NeedsReconnect("the user no longer has a task on the linked Page", platform=self.platform)
        return TokenSet(
            access_token=page_token,
            expires_at=None,
            scopes=tokens.scopes,
            metadata={**tokens.metadata, "token_type": "page", "long_lived": True},
        )
