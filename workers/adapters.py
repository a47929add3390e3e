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
    """The runtime's adapter for ``platform``, built once per HTTP client (adapters keep no state
    of their own between calls, so one serves them all)."""
    from workers.ratelimits import sink_for

    http = rt.http
    built = rt.adapters.get(platform)
    if built is not None and built.http is http and built.clock is rt.clock and built.settings is rt.settings:
        return built
    if platform == "mastodon":
        from workers.mastodon_store import mastodon_adapter

        adapter: PlatformAdapter = mastodon_adapter(rt)
    else:
        adapter = get_adapter(platform, rt.settings, rt.http, rt.clock)
    adapter.rate_signals = sink_for(rt)
    if platform != "mastodon":  # its app store holds the runtime's engine, which may be replaced
        rt.adapters[platform] = adapter
    return adapter
