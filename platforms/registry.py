"""Which adapter serves which platform, and whether each one is configured.

Adapters are imported lazily by dotted path so that a broken or slow import of one platform
never stops the others (and ``GET /v1/platforms`` stays cheap).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import httpx

from platforms.base import Clock, PlatformAdapter, utcnow
from social_accounts.errors import UnknownPlatform
from social_accounts.settings import PLATFORMS, Settings

__all__ = ["ADAPTERS", "PlatformStatus", "adapter_class", "get_adapter", "platform_statuses"]

ADAPTERS: dict[str, str] = {
    "facebook": "platforms.facebook:FacebookAdapter",
    "instagram": "platforms.instagram:InstagramAdapter",
    "twitter": "platforms.twitter:TwitterAdapter",
    "linkedin": "platforms.linkedin:LinkedInAdapter",
    "tiktok": "platforms.tiktok:TikTokAdapter",
    "youtube": "platforms.youtube:YouTubeAdapter",
    "pinterest": "platforms.pinterest:PinterestAdapter",
    "threads": "platforms.threads:ThreadsAdapter",
    "bluesky": "platforms.bluesky:BlueskyAdapter",
    "mastodon": "platforms.mastodon:MastodonAdapter",
}
assert tuple(ADAPTERS) == PLATFORMS


@dataclass(frozen=True)
class PlatformStatus:
    platform: str
    auth_type: str
    configured: bool
    missing_env: list[str]

    def as_dict(self) -> dict[str, object]:
        return {
            "platform": self.platform,
            "auth_type": self.auth_type,
            "configured": self.configured,
            "missing_env": list(self.missing_env),
        }


def adapter_class(platform: str) -> type[PlatformAdapter]:
    try:
        target = ADAPTERS[platform]
    except KeyError:
        raise UnknownPlatform(
            f"unknown platform {platform[:40]!r}; expected one of {', '.join(PLATFORMS)}"
        ) from None
    module_name, _, attr = target.partition(":")
    cls: type[PlatformAdapter] = getattr(importlib.import_module(module_name), attr)
    return cls


def get_adapter(
    platform: str, settings: Settings, http: httpx.Client, clock: Clock = utcnow
) -> PlatformAdapter:
    return adapter_class(platform)(settings, http, clock)


def platform_statuses(settings: Settings) -> list[PlatformStatus]:
    """All ten platforms, each configured or with the exact env vars it lacks."""
    statuses = []
    for platform in PLATFORMS:
        cls = adapter_class(platform)
        missing = [name for name in cls.required_env if not getattr(settings, name.lower(), None)]
        statuses.append(PlatformStatus(platform, cls.auth_type, not missing, missing))
    return statuses
