"""Rate-limit cooldowns shared by every worker, and proactive budgets.

When a platform says "slow down" (429, Meta usage headers near their limit, X
``x-rate-limit-remaining: 0``, Bluesky ``RateLimit-Remaining: 0``), one worker learns it and all
of them must stop calling that platform until the reset time: otherwise N workers each discover
the same 429. A cooldown is a Redis key with a TTL, per app (the whole platform) or per account.
Workers check it before calling out and defer the message without spending a retry.

Budgets keep us under published limits in the first place (Bluesky createSession 30 per 5 minutes
per identifier; Mastodon 300 per 5 minutes per account): a sliding window in a sorted set.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

__all__ = [
    "Cooldown",
    "active_cooldowns",
    "cooldown_key",
    "cooldown_keys",
    "publish_gauge",
    "remaining",
    "remaining_later",
    "set_cooldown",
    "take_budget",
]

# Extend a cooldown, never shorten it: a later, smaller Retry-After must not cut an app-wide wait.
_EXTEND = """
local current = redis.call('PTTL', KEYS[1])
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return 1
end
return 0
"""

# Sliding window: drop old entries, count, add when under the limit; else say when a slot frees.
_BUDGET = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now
"""


# Each key's remaining TTL (ms; negative when it has none).
_PTTLS = """
local result = {}
for i, key in ipairs(KEYS) do
  result[i] = redis.call('PTTL', key)
end
return result
"""


@dataclass(frozen=True)
class Cooldown:
    platform: str
    scope: str  # "app" or "account:<id>"
    seconds_left: float
    reason: str


def cooldown_key(namespace: str, platform: str, account_id: str | None = None) -> str:
    scope = f"account:{account_id}" if account_id else "app"
    return f"{namespace}:cooldown:{platform}:{scope}"


def cooldown_keys(namespace: str, platform: str, account_id: str | None = None) -> tuple[str, ...]:
    """Every key that pauses calls to ``platform`` for this account: the app's, then the account's."""
    app = cooldown_key(namespace, platform)
    return (app, cooldown_key(namespace, platform, account_id)) if account_id else (app,)


def set_cooldown(
    client: redis.Redis,
    namespace: str,
    platform: str,
    seconds: float,
    *,
    account_id: str | None = None,
    reason: str = "rate_limited",
) -> bool:
    """Start (or extend) a cooldown; ``account_id=None`` means app-wide. True when it changed."""
    ms = max(1, int(seconds * 1000))
    key = cooldown_key(namespace, platform, account_id)
    return bool(client.register_script(_EXTEND)(keys=[key], args=[ms, reason]))


def remaining(client: redis.Redis, namespace: str, platform: str, account_id: str | None = None) -> float:
    """Seconds until this platform may be called for this account (0: go ahead)."""
    return remaining_later(client, namespace, [platform], account_id)()[platform]


def remaining_later(
    client: redis.Redis, namespace: str, platforms: Sequence[str], account_id: str | None = None
) -> Callable[[], dict[str, float]]:
    """``remaining`` for several platforms in one round trip, asked now; the returned callable
    gives the answer (seconds by platform) as it stood when asked.

    Why: a connect checks for an app-wide pause before each of its platform calls; asking once
    for all of them saves a round trip per call (``Coordination.cooldowns_later``).
    """
    groups = [cooldown_keys(namespace, platform, account_id) for platform in platforms]
    ttls = [int(ms) for ms in client.register_script(_PTTLS)(keys=[key for group in groups for key in group])]
    waits, at = {}, 0
    for platform, group in zip(platforms, groups, strict=True):
        waits[platform] = max(0, *ttls[at : at + len(group)]) / 1000.0
        at += len(group)
    return lambda: waits


def active_cooldowns(client: redis.Redis, namespace: str) -> list[Cooldown]:
    """Every cooldown in force (for ``doctor`` and metrics)."""
    found = []
    prefix = f"{namespace}:cooldown:"
    for raw in client.scan_iter(match=prefix + "*", count=500):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        ttl = client.pttl(key)
        if not isinstance(ttl, int) or ttl <= 0:
            continue
        reason = client.get(key)
        platform, _, scope = key[len(prefix) :].partition(":")
        text = reason.decode() if isinstance(reason, bytes) else str(reason or "")
        found.append(Cooldown(platform, scope, ttl / 1000.0, text))
    return sorted(found, key=lambda c: (c.platform, c.scope))


def publish_gauge(client: redis.Redis, namespace: str) -> int:
    """Set ``social_accounts_cooldowns_active{platform}`` from Redis (on each ``/metrics`` scrape).

    Redis is the truth shared by every worker; a per-process counter would only know the
    cooldowns its own process started. Returns how many are in force.
    """
    from social_accounts.metrics import COOLDOWNS_ACTIVE

    found = active_cooldowns(client, namespace)
    counts: dict[str, int] = {}
    for cooldown in found:
        counts[cooldown.platform] = counts.get(cooldown.platform, 0) + 1
    COOLDOWNS_ACTIVE.clear()  # a platform whose cooldowns ended must drop back, not stay stale
    for platform, count in counts.items():
        COOLDOWNS_ACTIVE.labels(platform).set(count)
    return len(found)


def take_budget(client: redis.Redis, namespace: str, name: str, *, limit: int, window_seconds: float) -> float:
    """Use one call of a published budget. Returns 0 when allowed, else seconds until a slot frees."""
    now_ms = int(time.time() * 1000)
    key = f"{namespace}:budget:{name}"
    budget = client.register_script(_BUDGET)
    wait_ms = budget(keys=[key], args=[now_ms, int(window_seconds * 1000), limit, uuid.uuid4().hex])
    return max(0, int(str(wait_ms))) / 1000.0
