"""The adapter of a platform, built on the runtime's shared HTTP client and clock.

Mastodon also needs its database-backed app store (the app that issued a token is needed to
exchange codes and to revoke). Every worker path builds adapters here, so none forgets that, and
each gets the rate-signal sink that turns its proactive hints into shared cooldowns
(``workers.ratelimits``).
"""

from __future__ import annotations

from platforms.base import PlatformAdapter
from platforms.registry import get_adapter
from workers.runtime import Runtime

__all__ = ["adapter_for"]


def adapter_for(rt: Runtime, platform: str) -> PlatformAdapter:
    from workers.ratelimits import sink_for

    if platform == "mastodon":
        from workers.mastodon_store import mastodon_adapter

        adapter: PlatformAdapter = mastodon_adapter(rt)
    else:
        adapter = get_adapter(platform, rt.settings, rt.http, rt.clock)
    adapter.rate_signals = sink_for(rt)
    return adapter
