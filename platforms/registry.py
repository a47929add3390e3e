"""Which adapter serves which platform, and whether each one is configured.

Adapters are imported lazily by dotted path so that a broken or slow import of one platform
never stops the others (and ``GET /v1/platforms`` stays cheap).

The built-in demo platform (``platforms.demo``, served by ``web_callback.demo``) exists only when
``settings.demo_enabled`` (``social-accounts run --demo``): ``ADAPTERS`` and ``PLATFORMS`` stay the
platforms of the contract, and every lookup that has no settings, or settings with the demo off, treats
``demo`` as an unknown platform.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import httpx

from platforms.base import PlatformAdapter
from social_accounts.clock import Clock, utcnow
from social_accounts.errors import UnknownPlatform
from social_accounts.settings import PLATFORMS, Settings

__all__ = [
    "ADAPTERS",
    "DEMO_ADAPTER",
    "DEMO_PLATFORM",
    "PlatformStatus",
    "adapter_class",
    "enabled_platforms",
    "get_adapter",
    "platform_statuses",
]

ADAPTERS: dict[str, str] = {
    "facebook": "platforms.facebook:FacebookAdapter",
    "instagram": "platforms.instagram:InstagramAdapter",
    "instagram_login": "platforms.instagram_login:InstagramLoginAdapter",
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

#: the demo platform: registered only when ``settings.demo_enabled``
DEMO_PLATFORM = "demo"
DEMO_ADAPTER = "platforms.demo:DemoAdapter"


def enabled_platforms(settings: Settings | None) -> tuple[str, ...]:
    """The contract's platforms, plus ``demo`` when these settings enable it."""
    if settings is not None and settings.demo_enabled:
        return (*PLATFORMS, DEMO_PLATFORM)
    return PLATFORMS


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


def adapter_class(platform: str, settings: Settings | None = None) -> type[PlatformAdapter]:
    """The adapter class of ``platform``; ``demo`` only with settings that enable it."""
    if platform == DEMO_PLATFORM and settings is not None and settings.demo_enabled:
        target = DEMO_ADAPTER
    else:
        try:
            target = ADAPTERS[platform]
        except KeyError:
            raise UnknownPlatform(
                f"unknown platform {platform[:40]!r}; expected one of {', '.join(enabled_platforms(settings))}"
            ) from None
    module_name, _, attr = target.partition(":")
    cls: type[PlatformAdapter] = getattr(importlib.import_module(module_name), attr)
    return cls


def get_adapter(platform: str, settings: Settings, http: httpx.Client, clock: Clock = utcnow) -> PlatformAdapter:
    return adapter_class(platform, settings)(settings, http, clock)


def platform_statuses(settings: Settings) -> list[PlatformStatus]:
    """All platforms (and ``demo`` when enabled), each configured or with the env vars it lacks."""
    statuses = []
    for platform in enabled_platforms(settings):
        cls = adapter_class(platform, settings)
        missing = [name for name in cls.required_env if not getattr(settings, name.lower(), None)]
        statuses.append(PlatformStatus(platform, cls.auth_type, not missing, missing))
    return statuses
