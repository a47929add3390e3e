"""Facebook Pages: one Facebook Login, one connected account per Page the user manages.

The user token only serves to list Pages: each Page of ``/me/accounts`` comes with its own Page
token, and a Page token obtained with a *long-lived* user token does not expire
(https://developers.facebook.com/docs/pages/access-tokens; docs/platforms.md), so Page accounts have
``refresh_model="none"``. When Meta invalidates one (password change, lost role, app removed)
the Graph answers code 190 and the account needs a reconnect.
"""

from __future__ import annotations

from typing import Any

from platforms.meta import MetaGraphAdapter, nonempty_str
from social_accounts.errors import Permanent
from social_accounts.values import AccountProfile, Stats, TokenSet

__all__ = ["FacebookAdapter"]

PAGE_FIELDS = "id,name,username,access_token,picture"


class FacebookAdapter(MetaGraphAdapter):
    platform = "facebook"
    refresh_model = "none"
    scopes = (
        "pages_show_list",
        "pages_read_engagement",
        "pages_manage_posts",
        "pages_manage_engagement",
        "read_insights",
        "business_management",
    )

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        """Every Page of ``/me/accounts`` and, with ``business_management``, of the user's
        businesses (all result pages), each with its own Page token.

        A Page listed without an ``access_token`` (the user lacks a task on it) cannot be acted
        for, so it is left out. Counts are not fetched here: the first sync fills them.
        """
        tokens = self.ensure_long_lived(tokens)
        user_id = self.user_id(tokens)
        granted = self.granted_permissions(tokens)
        profiles = []
        for page in self.list_pages(tokens, PAGE_FIELDS, granted):
            page_token = page.get("access_token")
            if not isinstance(page_token, str) or not page_token:
                continue
            page_id = str(page["id"])
            profiles.append(
                AccountProfile(
                    platform_account_id=page_id,
                    name=nonempty_str(page.get("name")),
                    handle=nonempty_str(page.get("username")),
                    avatar_url=_picture_url(page.get("picture")),
                    tokens=TokenSet(
                        access_token=page_token,
                        expires_at=None,
                        scopes=granted or tokens.scopes,
                        metadata={"meta_user_id": user_id, "token_type": "page"},
                    ),
                    refresh_model="none",
                )
            )
        return profiles

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """Page tokens do not expire and Meta has no refresh grant: nothing to do, ever.

        (The OAuth 2.0 base would call a missing refresh token a reconnect; for a Page that
        would wrongly mark a healthy account as expired.)
        """
        raise Permanent("Facebook Page tokens do not expire and have nothing to refresh", platform=self.platform)

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        """``followers_count`` of the Page (``fan_count`` counts likes, so it is not used)."""
        body = self.graph_get(self.api(platform_account_id), tokens.access_token, {"fields": "followers_count"})
        return Stats(followers=self.as_int(body.get("followers_count")), following=None, posts=None)


def _picture_url(picture: Any) -> str | None:
    """``picture.data.url`` (the Graph wraps the picture edge in ``data``)."""
    if isinstance(picture, dict):
        data = picture.get("data")
        if isinstance(data, dict):
            return nonempty_str(data.get("url"))
        return nonempty_str(picture.get("url"))
    return None
