"""What the accounts page remembers on the server: wrong tokens per address, and ended sessions.

Why: the page's session is a signed cookie (``web_callback.session``), so without server state
(1) nothing stops a script from trying tokens as fast as it can, and (2) signing out only asks the
browser to forget the cookie; a copy of it would keep working until it expires. So:

* at most :data:`FAILURE_LIMIT` wrong tokens per client address in any :data:`FAILURE_WINDOW`
  seconds (a sliding window); past that every sign-in from the address, right token or not, is
  ``429`` with ``Retry-After`` until the oldest failure leaves the window;
* signing out records the session id as ended until the session would have expired anyway, and a
  cookie naming an ended session is refused.

Where it lives follows ``workers.coordination``: in Redis when the service has one (every web
process sees the same counts and the same ended sessions), in this process's memory under the
embedded ``run`` (one process). The clock is injected so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from redis import exceptions as redis_errors

if TYPE_CHECKING:
    import redis

    from workers.runtime import Runtime

__all__ = [
    "FAILURE_LIMIT",
    "FAILURE_WINDOW",
    "LocalSignInStore",
    "RedisSignInStore",
    "SharedSignInStore",
    "SignInStore",
    "store_for",
]

#: wrong tokens allowed per client address within :data:`FAILURE_WINDOW` seconds
FAILURE_LIMIT = 10
FAILURE_WINDOW = 60.0
#: addresses and ended sessions kept in memory at most (the oldest are dropped first)
MAX_LOCAL_ENTRIES = 100_000

Clock = Callable[[], float]
_T = TypeVar("_T")

log = logging.getLogger(__name__)


class SignInStore(Protocol):
    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try a token again; 0 when it may now."""

    def failed(self, address: str) -> None:
        """Count one wrong token from ``address``."""

    def end_session(self, sid: str, *, expires_at: float) -> None:
        """Refuse session ``sid`` from now until ``expires_at`` (epoch seconds)."""

    def is_ended(self, sid: str) -> bool:
        """True when session ``sid`` was signed out."""


def _wait(oldest_counted: float, now: float) -> float:
    return max(0.0, oldest_counted + FAILURE_WINDOW - now)


class LocalSignInStore:
    """The store in this process's memory (the embedded ``run``), bounded."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._mutex = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._ended: OrderedDict[str, float] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - FAILURE_WINDOW:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def retry_after(self, address: str) -> float:
        now = self.clock()
        with self._mutex:
            times = self._recent(address, now)
            if len(times) < FAILURE_LIMIT:
                return 0.0
            return _wait(times[len(times) - FAILURE_LIMIT], now)

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._mutex:
            self._recent(address, now)
            self._failures.setdefault(address, deque()).append(now)
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_LOCAL_ENTRIES:
                self._failures.popitem(last=False)

    def end_session(self, sid: str, *, expires_at: float) -> None:
        with self._mutex:
            self._ended[sid] = expires_at
            self._ended.move_to_end(sid)
            while len(self._ended) > MAX_LOCAL_ENTRIES:
                self._ended.popitem(last=False)

    def is_ended(self, sid: str) -> bool:
        now = self.clock()
        with self._mutex:
            until = self._ended.get(sid)
            if until is not None and until <= now:
                del self._ended[sid]
                return False
            return until is not None


class RedisSignInStore:
    """The store in Redis, shared by every web process.

    Failures are a sorted set per address (member: a random id, score: the time), trimmed to the
    window on every look and expiring with it; an ended session is a key that expires when the
    session would have.
    """

    def __init__(self, client: redis.Redis, namespace: str, *, clock: Clock = time.time) -> None:
        self.client = client
        self.namespace = namespace
        self.clock = clock

    def _failures_key(self, address: str) -> str:
        return f"{self.namespace}:signin:failures:{address}"

    def retry_after(self, address: str) -> float:
        now = self.clock()
        key = self._failures_key(address)
        pipe = self.client.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now - FAILURE_WINDOW)
        pipe.zrange(key, -FAILURE_LIMIT, -FAILURE_LIMIT, withscores=True)
        _, counted = pipe.execute()
        if not counted:  # fewer than FAILURE_LIMIT failures in the window
            return 0.0
        return _wait(float(counted[0][1]), now)

    def failed(self, address: str) -> None:
        now = self.clock()
        key = self._failures_key(address)
        pipe = self.client.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now - FAILURE_WINDOW)
        pipe.zadd(key, {uuid.uuid4().hex: now})
        pipe.expire(key, math.ceil(FAILURE_WINDOW))
        pipe.execute()

    def end_session(self, sid: str, *, expires_at: float) -> None:
        seconds = math.ceil(expires_at - self.clock())
        if seconds > 0:
            self.client.set(f"{self.namespace}:signin:ended:{sid}", b"1", ex=seconds)

    def is_ended(self, sid: str) -> bool:
        return bool(self.client.exists(f"{self.namespace}:signin:ended:{sid}"))


class SharedSignInStore:
    """Redis and this process's memory together, so a Redis outage never locks people out.

    Everything is recorded in both; a refusal from either counts. While Redis does not answer
    (it is also the broker, and the page is where people look when the broker is down) the page
    keeps working on this process's own counts and sign-outs, and says so in the log.
    """

    def __init__(self, shared: RedisSignInStore, local: LocalSignInStore) -> None:
        self.shared = shared
        self.local = local

    def _try(self, what: str, call: Callable[[], _T], default: _T) -> _T:
        try:
            return call()
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("sign-in store: Redis did not answer (%s); %s from this process only", type(exc).__name__, what)
            return default

    def retry_after(self, address: str) -> float:
        shared = self._try("counting", lambda: self.shared.retry_after(address), 0.0)
        return max(shared, self.local.retry_after(address))

    def failed(self, address: str) -> None:
        self.local.failed(address)
        self._try("counting", lambda: self.shared.failed(address), None)

    def end_session(self, sid: str, *, expires_at: float) -> None:
        self.local.end_session(sid, expires_at=expires_at)
        self._try("signing out", lambda: self.shared.end_session(sid, expires_at=expires_at), None)

    def is_ended(self, sid: str) -> bool:
        return self.local.is_ended(sid) or self._try("signing out", lambda: self.shared.is_ended(sid), False)


def store_for(services: Runtime) -> SignInStore:
    """Redis when the service has one for coordination (shared by every web process, backed by
    this process's memory), else this process's memory alone (the embedded ``run``)."""
    if services.settings.coordination_redis_url:
        return SharedSignInStore(
            RedisSignInStore(services.redis, services.settings.redis_namespace), LocalSignInStore()
        )
    return LocalSignInStore()
