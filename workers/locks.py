"""The per-account refresh lock: at most one refresh per account, across every process.

Rotating refresh tokens are single-use: two workers refreshing the same account at once make the
platform revoke the whole grant. The lock is Redis ``SET NX PX`` with an owner token, released
and extended only by its owner (redis-py's ``Lock`` does exactly this with Lua scripts). Because a
Redis lock is not safe across a failover, the database write is fenced too (``token_version``).

The TTL must outlive every request made under the lock: it is set well above the HTTP timeouts,
so a lock cannot expire while its holder is still talking to the platform.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis
from redis.exceptions import LockError

__all__ = ["LOCK_TTL_SECONDS", "account_lock", "lock_key"]

#: seconds; > 2 x (connect + read timeout) of the token call, with room for the DB write
LOCK_TTL_SECONDS = 60.0


def lock_key(namespace: str, account_id: str) -> str:
    return f"{namespace}:lock:refresh:{account_id}"


@contextmanager
def account_lock(
    client: redis.Redis,
    namespace: str,
    account_id: str,
    *,
    wait_seconds: float = 0.0,
    ttl_seconds: float = LOCK_TTL_SECONDS,
) -> Iterator[bool]:
    """Hold the account's refresh lock for the block; yields whether it was acquired.

    With ``wait_seconds`` > 0 the caller waits for a holder to finish (a caller that then finds the
    token already refreshed uses it without calling the platform).
    """
    lock = client.lock(
        lock_key(namespace, account_id),
        timeout=ttl_seconds,
        blocking=wait_seconds > 0,
        blocking_timeout=wait_seconds or None,
        thread_local=False,
    )
    acquired = bool(lock.acquire())
    try:
        yield acquired
    finally:
        if acquired:
            # expired and maybe taken by another owner: theirs now, leave it
            with suppress(LockError):
                lock.release()
