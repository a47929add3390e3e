"""The per-account refresh lock: at most one refresh per account, across every process.

Rotating refresh tokens are single-use: two workers refreshing the same account at once make the
platform revoke the whole grant. The lock is Redis ``SET NX PX`` with a random owner token,
released only by its owner (a Lua compare-and-delete: a lock that expired and was taken by
someone else is theirs). Because a Redis lock is not safe across a failover, the database write
is fenced too (``token_version``).

The TTL must outlive every request made under the lock: it is set well above the HTTP timeouts,
so a lock cannot expire while its holder is still talking to the platform.

Two scripts (redis-py's ``register_script``) rather than redis-py's ``Lock``, because the acquire
also reads the account's cooldowns in the same round trip: a holder learns at once whether it
may call the platform at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import redis

__all__ = ["LOCK_TTL_SECONDS", "Hold", "account_lock", "lock_key"]

#: seconds; > 2 x (connect + read timeout) of the token call, with room for the DB write
LOCK_TTL_SECONDS = 60.0
#: how often a waiting caller tries again
_POLL_SECONDS = 0.05

# SET NX PX, and the remaining TTLs (ms) of the cooldown keys passed after the lock key: a
# holder learns in the same round trip whether it may call the platform at all.
_ACQUIRE = """
local acquired = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
local result = {acquired}
for i = 2, #KEYS do
  result[i] = redis.call('PTTL', KEYS[i])
end
return result
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lock_key(namespace: str, account_id: str) -> str:
    return f"{namespace}:lock:refresh:{account_id}"


class Hold:
    """What ``account_lock`` yields: truthy when the lock was acquired, plus, for each label it was
    asked to peek at, the longest remaining wait (seconds) of that label's cooldown keys, read in
    the same round trip."""

    __slots__ = ("acquired", "waits")

    def __init__(self, acquired: bool, waits: dict[str, float]) -> None:
        self.acquired = acquired
        self.waits = waits

    def __bool__(self) -> bool:
        return self.acquired


@contextmanager
def account_lock(
    client: redis.Redis,
    namespace: str,
    account_id: str,
    *,
    wait_seconds: float = 0.0,
    ttl_seconds: float = LOCK_TTL_SECONDS,
    peek: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[Hold]:
    """Hold the account's refresh lock for the block; yields a ``Hold`` (truthy when acquired).

    With ``wait_seconds`` > 0 the caller waits for a holder to finish (a caller that then finds the
    token already refreshed uses it without calling the platform). ``peek``: cooldown keys whose
    remaining TTL the acquiring round trip also reads, by label (``Hold.waits``).
    """
    key = lock_key(namespace, account_id)
    labels = list(peek or {})
    keys = [k for label in labels for k in (peek or {})[label]]
    owner = os.urandom(16).hex()
    ttl_ms = max(1, int(ttl_seconds * 1000))
    deadline = time.monotonic() + wait_seconds
    acquire = client.register_script(_ACQUIRE)
    while True:
        acquired, *ttls = acquire(keys=[key, *keys], args=[owner, ttl_ms])
        if acquired or time.monotonic() + _POLL_SECONDS > deadline:
            break
        time.sleep(_POLL_SECONDS)
    by_key = dict(zip(keys, ttls, strict=True))
    waits = {label: max(0, *(int(by_key[k]) for k in (peek or {})[label])) / 1000.0 for label in labels}
    hold = Hold(bool(acquired), waits)
    try:
        yield hold
    finally:
        if hold.acquired:
            # 0 when it expired and another owner took it: theirs now, left alone
            client.register_script(_RELEASE)(keys=[key], args=[owner])
