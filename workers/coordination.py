"""Locks, cooldowns and budgets shared by every worker: Redis in production, in-process under `run`.

With a Redis broker every process shares the same Redis, so the per-account refresh lock and
rate-limit cooldowns hold across processes and machines. The embedded ``run`` (memory broker,
one process) has no Redis: the same interface is served from process memory, which is exactly as
strong there because only one process exists.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import redis

from social_accounts.settings import PLATFORMS
from workers import cooldowns, locks
from workers.runtime import Runtime

__all__ = ["Coordination", "LocalCoordination", "RedisCoordination", "for_runtime", "lock_ttl_seconds"]


class Coordination(Protocol):
    def account_lock(self, account_id: str, *, wait_seconds: float = 0.0) -> AbstractContextManager[locks.Hold]: ...
    def cooldown_remaining(self, platform: str, account_id: str | None) -> float: ...
    def cooldowns_later(self, platforms: Sequence[str], account_id: str | None) -> Callable[[], dict[str, float]]: ...
    def set_cooldown(self, platform: str, seconds: float, *, account_id: str | None, reason: str) -> None: ...
    def take_budget(self, name: str, *, limit: int, window_seconds: float) -> float: ...
    def claim_flag(self, name: str, seconds: float) -> bool: ...
    def clear_flag(self, name: str) -> None: ...


class RedisCoordination:
    def __init__(
        self, client: redis.Redis, namespace: str, *, lock_ttl_seconds: float = locks.LOCK_TTL_SECONDS
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.lock_ttl_seconds = lock_ttl_seconds

    def account_lock(self, account_id: str, *, wait_seconds: float = 0.0) -> AbstractContextManager[locks.Hold]:
        """The lock, and in the same round trip every platform's cooldowns for this account
        (which platform it is on is only known after the read the lock protects)."""
        peek = {platform: cooldowns.cooldown_keys(self.namespace, platform, account_id) for platform in PLATFORMS}
        return locks.account_lock(
            self.client,
            self.namespace,
            account_id,
            wait_seconds=wait_seconds,
            ttl_seconds=self.lock_ttl_seconds,
            peek=peek,
        )

    def cooldown_remaining(self, platform: str, account_id: str | None) -> float:
        return cooldowns.remaining(self.client, self.namespace, platform, account_id)

    def cooldowns_later(self, platforms: Sequence[str], account_id: str | None) -> Callable[[], dict[str, float]]:
        """``cooldown_remaining`` of each platform, asked now in one round trip, read by the callable."""
        return cooldowns.remaining_later(self.client, self.namespace, platforms, account_id)

    def set_cooldown(self, platform: str, seconds: float, *, account_id: str | None, reason: str) -> None:
        cooldowns.set_cooldown(self.client, self.namespace, platform, seconds, account_id=account_id, reason=reason)

    def take_budget(self, name: str, *, limit: int, window_seconds: float) -> float:
        return cooldowns.take_budget(self.client, self.namespace, name, limit=limit, window_seconds=window_seconds)

    def claim_flag(self, name: str, seconds: float) -> bool:
        """Raise the flag ``name`` for ``seconds`` unless it is up: True for the one who raised it."""
        key = f"{self.namespace}:flag:{name}"
        return bool(self.client.set(key, b"1", nx=True, px=max(1, int(seconds * 1000))))

    def clear_flag(self, name: str) -> None:
        self.client.delete(f"{self.namespace}:flag:{name}")


class LocalCoordination:
    """The same guarantees inside one process (the embedded ``run``)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._cooldowns: dict[tuple[str, str | None], float] = {}
        self._budgets: dict[str, deque[float]] = defaultdict(deque)
        self._flags: dict[str, float] = {}

    @contextmanager
    def _lock(self, account_id: str, wait_seconds: float) -> Iterator[locks.Hold]:
        with self._mutex:
            lock = self._locks[account_id]
        got = lock.acquire(timeout=wait_seconds) if wait_seconds > 0 else lock.acquire(blocking=False)
        try:
            yield locks.Hold(got, {})  # no peeked cooldowns: ``cooldown_remaining`` is a dict lookup here
        finally:
            if got:
                lock.release()

    def account_lock(self, account_id: str, *, wait_seconds: float = 0.0) -> AbstractContextManager[locks.Hold]:
        return self._lock(account_id, wait_seconds)

    def cooldown_remaining(self, platform: str, account_id: str | None) -> float:
        now = time.monotonic()
        with self._mutex:
            until = max(self._cooldowns.get((platform, None), 0.0), self._cooldowns.get((platform, account_id), 0.0))
        return max(0.0, until - now)

    def cooldowns_later(self, platforms: Sequence[str], account_id: str | None) -> Callable[[], dict[str, float]]:
        waits = {platform: self.cooldown_remaining(platform, account_id) for platform in platforms}
        return lambda: waits

    def set_cooldown(self, platform: str, seconds: float, *, account_id: str | None, reason: str) -> None:
        until = time.monotonic() + seconds
        with self._mutex:
            key = (platform, account_id)
            self._cooldowns[key] = max(self._cooldowns.get(key, 0.0), until)

    def take_budget(self, name: str, *, limit: int, window_seconds: float) -> float:
        now = time.monotonic()
        with self._mutex:
            used = self._budgets[name]
            while used and used[0] <= now - window_seconds:
                used.popleft()
            if len(used) < limit:
                used.append(now)
                return 0.0
            return used[0] + window_seconds - now

    def claim_flag(self, name: str, seconds: float) -> bool:
        now = time.monotonic()
        with self._mutex:
            if self._flags.get(name, 0.0) > now:
                return False
            self._flags[name] = now + seconds
            return True

    def clear_flag(self, name: str) -> None:
        with self._mutex:
            self._flags.pop(name, None)


_local = LocalCoordination()


def for_runtime(rt: Runtime) -> Coordination:
    """Redis coordination when the broker is Redis (shared by every process), else in-process."""
    if rt.settings.coordination_redis_url:
        return RedisCoordination(
            rt.redis, rt.settings.redis_namespace, lock_ttl_seconds=lock_ttl_seconds(rt.settings.http_timeout_seconds)
        )
    return _local


def lock_ttl_seconds(http_timeout_seconds: float) -> float:
    """The refresh lock's TTL: room for two calls (connect + read each) and the database writes.

    Derived from the HTTP timeout, because the lock must outlive every request made under it
    (60 s with the default 10 s timeout); and no longer than that, because a worker killed while
    holding it keeps everyone else from refreshing the account until it expires.
    """
    return 4 * http_timeout_seconds + 20.0
