"""Instagram professional accounts reached through Facebook Login (not "Instagram Login").

One login can reach several Instagram accounts: every Page of ``/me/accounts`` with an
``instagram_business_account`` is one. Each account stores the long-lived *user* token
(≈60 days) and keeps it alive by exchanging it again with ``fb_exchange_token`` before it
expires (``refresh_model="extend"``); an expired token cannot be exchanged, so that case is a
reconnect (``shared/platforms.md`` §1-2).
"""

from __future__ import annotations

from datetime import timedelta

from platforms.meta import MetaGraphAdapter, nonempty_str
from social_accounts.errors import NeedsReconnect
from social_accounts.values import AccountProfile, Stats, TokenSet

__all__ = ["InstagramAdapter"]

PROFILE_FIELDS = "id,username,name,profile_picture_url,followers_count,follows_count,media_count"
STATS_FIELDS = "followers_count,follows_count,media_count"


class InstagramAdapter(MetaGraphAdapter):
    platform = "instagram"
    refresh_model = "extend"
    default_lifetime = timedelta(days=60)  # Meta's long-lived user tokens last 60 d (docs/platforms.md)
    #: a 60-day token is extended a week ahead, leaving days of retries before it dies
    refresh_margin = timedelta(days=7)
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
        """One profile per Instagram business account linked to one of the user's Pages."""
        tokens = self.ensure_long_lived(tokens)
        user_id = self.user_id(tokens)
        stored = tokens.replace(metadata={**tokens.metadata, "meta_user_id": user_id, "long_lived": True})
        seen: set[str] = set()
        profiles = []
        for page in self.list_pages(tokens, "id,name,instagram_business_account"):
            linked = page.get("instagram_business_account")
            ig_id = str(linked.get("id") or "") if isinstance(linked, dict) else ""
            if not ig_id or ig_id in seen:
                continue
            seen.add(ig_id)
            body = self.graph_get(self.api(ig_id), tokens.access_token, {"fields": PROFILE_FIELDS})
            profiles.append(
                AccountProfile(
                    platform_account_id=str(body.get("id") or ig_id),
                    name=nonempty_str(body.get("name")),
                    handle=nonempty_str(body.get("username")),
                    avatar_url=nonempty_str(body.get("profile_picture_url")),
                    tokens=stored.replace(metadata={**stored.metadata, "page_id": str(page["id"])}),
                    stats=self._stats(body),
                    refresh_model="extend",
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
        """Exchange the current (still valid) user token for a fresh long-lived one."""
        if tokens.expires_at is not None and tokens.expires_at <= self.clock():
            raise NeedsReconnect(
                "the Instagram token expired and cannot be extended", platform=self.platform, code="expired"
            )
        fresh = self.exchange_long_lived(tokens)
        return tokens.merged_with(fresh)
