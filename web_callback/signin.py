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
process sees the same counts and the same ended sessions; this process's memory stands in while
Redis does not answer), in memory alone under the embedded ``run`` (one process). The clock is
injected so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
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
    def try_sign_in(self, address: str, ticket: str) -> float:
        """Count a sign-in from ``address`` as a wrong token until :meth:`forgive` says otherwise.

        Returns 0 when it may go ahead (counted under ``ticket``), else the seconds until the
        address may try again (nothing counted). Counting before the token is compared makes the
        limit hold for concurrent tries too: a burst cannot all see "9 so far" and go ahead.
        """

    def forgive(self, address: str, ticket: str) -> None:
        """The sign-in counted under ``ticket`` had the right token: it does not count."""

    def end_session(self, sid: str, *, expires_at: float) -> None:
        """Refuse session ``sid`` from now until ``expires_at`` (epoch seconds)."""

    def is_ended(self, sid: str) -> bool:
        """True when session ``sid`` was signed out."""


#: a refusal always waits a little, even when the oldest try leaves the window this instant
_MIN_WAIT = 0.001


class LocalSignInStore:
    """The store in this process's memory (the embedded ``run``), bounded."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._mutex = threading.Lock()
        #: per address, the times of its counted sign-ins by ticket, oldest first
        self._counted: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self._ended: OrderedDict[str, float] = OrderedDict()

    def try_sign_in(self, address: str, ticket: str) -> float:
        now = self.clock()
        with self._mutex:
            counted = self._counted.setdefault(address, OrderedDict())
            while counted and next(iter(counted.values())) <= now - FAILURE_WINDOW:
                counted.popitem(last=False)
            if len(counted) >= FAILURE_LIMIT:
                return max(_MIN_WAIT, next(iter(counted.values())) + FAILURE_WINDOW - now)
            counted[ticket] = now
            self._counted.move_to_end(address)
            while len(self._counted) > MAX_LOCAL_ENTRIES:
                self._counted.popitem(last=False)
            return 0.0

    def forgive(self, address: str, ticket: str) -> None:
        with self._mutex:
            counted = self._counted.get(address)
            if counted is not None:
                counted.pop(ticket, None)

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


#: count one sign-in unless FAILURE_LIMIT are counted in the window, else answer the ms to wait
#: (the sliding window of ``workers.cooldowns``' budgets)
_TRY_SIGN_IN = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class RedisSignInStore:
    """The store in Redis, shared by every web process.

    Counted sign-ins are a sorted set per address (member: the ticket, score: the time in ms),
    trimmed and counted in one script, so concurrent tries cannot overshoot the limit; it expires
    with the window. An ended session is a key that expires when the session would have.
    """

    def __init__(self, client: redis.Redis, namespace: str, *, clock: Clock = time.time) -> None:
        self.client = client
        self.namespace = namespace
        self.clock = clock
        self._try_sign_in = client.register_script(_TRY_SIGN_IN)

    def _counted_key(self, address: str) -> str:
        return f"{self.namespace}:signin:counted:{address}"

    def try_sign_in(self, address: str, ticket: str) -> float:
        args: list[int | str] = [int(self.clock() * 1000), int(FAILURE_WINDOW * 1000), FAILURE_LIMIT, ticket]
        wait_ms = self._try_sign_in(keys=[self._counted_key(address)], args=args)
        return int(str(wait_ms)) / 1000.0

    def forgive(self, address: str, ticket: str) -> None:
        self.client.zrem(self._counted_key(address), ticket)

    def end_session(self, sid: str, *, expires_at: float) -> None:
        seconds = math.ceil(expires_at - self.clock())
        if seconds > 0:
            self.client.set(f"{self.namespace}:signin:ended:{sid}", b"1", ex=seconds)

    def is_ended(self, sid: str) -> bool:
        return bool(self.client.exists(f"{self.namespace}:signin:ended:{sid}"))


class SharedSignInStore:
    """Redis, with this process's memory standing in while Redis does not answer.

    Redis is also the broker, and the page is where people look when the broker is down: an
    outage must neither lock them out nor lift the limit. So tries are counted in Redis, or in
    memory (this process's own limit) when Redis fails; sign-outs are recorded in both, and a
    session ended in either is refused. Every fallback is logged.
    """

    def __init__(self, shared: RedisSignInStore, local: LocalSignInStore) -> None:
        self.shared = shared
        self.local = local

    def _try(self, what: str, call: Callable[[], _T]) -> _T | None:
        try:
            return call()
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("sign-in store: Redis did not answer (%s); %s in this process only", type(exc).__name__, what)
            return None

    def try_sign_in(self, address: str, ticket: str) -> float:
        wait = self._try("counting", lambda: self.shared.try_sign_in(address, ticket))
        return wait if wait is not None else self.local.try_sign_in(address, ticket)

    def forgive(self, address: str, ticket: str) -> None:
        self.local.forgive(address, ticket)
        self._try("counting", lambda: self.shared.forgive(address, ticket))

    def end_session(self, sid: str, *, expires_at: float) -> None:
        self.local.end_session(sid, expires_at=expires_at)
        self._try("signing out", lambda: self.shared.end_session(sid, expires_at=expires_at))

    def is_ended(self, sid: str) -> bool:
        return self.local.is_ended(sid) or bool(self._try("signing out", lambda: self.shared.is_ended(sid)))


def store_for(services: Runtime) -> SignInStore:
    """Redis when the service has one for coordination (shared by every web process, backed by
    this process's memory), else this process's memory alone (the embedded ``run``)."""
    if services.settings.coordination_redis_url:
        return SharedSignInStore(
            RedisSignInStore(services.redis, services.settings.redis_namespace), LocalSignInStore()
        )
    return LocalSignInStore()
