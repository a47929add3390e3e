"""The process-wide things actors need, created lazily after the worker process forks.

Dramatiq imports ``workers.actors`` in every worker process after forking, so nothing here opens
a connection at import time: the engine, the HTTP client and the Redis client are built on first
use, and rebuilt when the process id changes (a pool inherited across ``fork`` must never be
shared). Tests and ``social-accounts run`` call :func:`configure` to inject their own settings,
engine, clock or HTTP client; everything else calls :func:`current`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from platforms.deadline import DeadlineTransport
from platforms.http import cookieless_jar, default_timeout
from social_accounts.clock import Clock, utcnow
from social_accounts.settings import Settings, get_settings
from workers.retrying import CONNECT_POLICY, RetryPolicy

if TYPE_CHECKING:
    import redis
    from sqlalchemy.engine import Engine

    from models.crypto import KeyRing

__all__ = ["Runtime", "configure", "current", "platform_client", "reset"]

#: a pooled database connection unused this long is pinged before use; busier ones are not (a
#: connection that died under load fails one statement and the step is retried)
PING_AFTER_IDLE_SECONDS = 5.0


@dataclass
class Runtime:
    """Settings plus lazily built resources; every attribute may be injected instead."""

    settings: Settings
    clock: Clock = utcnow
    #: backoff and budgets of the connect actors (tests shorten the delays)
    retry_policy: RetryPolicy = CONNECT_POLICY
    _engine: Engine | None = None
    _ring: KeyRing | None = None
    _http: httpx.Client | None = None
    _redis: redis.Redis | None = None
    _pid: int = field(default_factory=os.getpid)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: adapters built on this runtime's client, by platform (``workers.adapters.adapter_for``)
    adapters: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def engine(self) -> Engine:
        """One SQLAlchemy engine per process (its pool is sized for the worker threads)."""
        with self._lock:
            if self._engine is None:
                from models.engine import make_engine

                self._engine = make_engine(self.settings.database_url, ping_after_idle=PING_AFTER_IDLE_SECONDS)
            return self._engine

    @property
    def ring(self) -> KeyRing:
        with self._lock:
            if self._ring is None:
                from models.crypto import KeyRing

                self._ring = KeyRing.from_settings(self.settings)
            return self._ring

    @property
    def http(self) -> httpx.Client:
        """One shared client (thread-safe): :func:`platform_client`."""
        with self._lock:
            if self._http is None:
                self._http = platform_client(self.settings)
            return self._http

    @property
    def redis(self) -> redis.Redis:
        """A Redis client on the broker's server (locks, cooldowns); only for ``redis://`` brokers."""
        with self._lock:
            if self._redis is None:
                import redis as redis_lib

                url = self.settings.coordination_redis_url
                if url is None:
                    raise RuntimeError("no Redis configured for locks and cooldowns (set REDIS_URL)")
                self._redis = redis_lib.Redis.from_url(url)
            return self._redis

    def close_redis(self) -> None:
        """Close the Redis client alone: the web app's runtime borrows the app's engine and HTTP
        client, which the app closes itself."""
        with self._lock:
            client, self._redis = self._redis, None
        if client is not None:
            client.close()

    def close(self) -> None:
        """Release what this process built (called at worker shutdown and by tests)."""
        self.close_redis()
        with self._lock:
            if self._http is not None:
                self._http.close()
            if self._engine is not None:
                self._engine.dispose()
            self._http = self._engine = None

    def forget_inherited(self) -> None:
        """After a fork: drop the parent's pools without closing the parent's sockets."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose(close=False)
            self._engine = self._http = self._redis = None
            self._pid = os.getpid()


def platform_client(settings: Settings, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The HTTP client platform calls go through: the settings' timeouts, no redirects followed,
    no cookies kept from one account's call to the next, and httpx's own transport under one
    deadline per exchange (``platforms.deadline``; ``retries=2`` repeats only failures to connect,
    which never reached the platform, so it is safe even for single-use code exchanges). Tests
    pass a transport that wraps it."""
    return httpx.Client(
        timeout=default_timeout(settings.http_timeout_seconds),
        transport=transport or DeadlineTransport(retries=2),
        follow_redirects=False,
        cookies=cookieless_jar(),
    )


_current: Runtime | None = None
_current_lock = threading.Lock()


def configure(settings: Settings, **resources: Any) -> Runtime:
    """Install this process's runtime (tests, ``run``).

    Parameters:
      settings(Settings): replaces ``get_settings()``.
      **resources: optional ``clock`` and ``retry_policy``, and ``engine``, ``ring``, ``http``,
        ``redis`` to inject instead of building them (the runtime closes them on ``reset``).
    """
    global _current
    runtime = Runtime(
        settings=settings,
        clock=resources.pop("clock", utcnow),
        retry_policy=resources.pop("retry_policy", CONNECT_POLICY),
    )
    for name in ("engine", "ring", "http", "redis"):
        if name in resources:
            setattr(runtime, f"_{name}", resources.pop(name))
    if resources:
        raise TypeError(f"unknown runtime resources: {', '.join(sorted(resources))}")
    with _current_lock:
        _current = runtime
    return runtime


def current() -> Runtime:
    """The runtime of this process, built from ``get_settings()`` unless one was configured."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Runtime(settings=get_settings())
        runtime = _current
    if runtime._pid != os.getpid():
        runtime.forget_inherited()
    return runtime


def reset() -> None:
    """Close and forget the runtime (tests)."""
    global _current
    with _current_lock:
        runtime, _current = _current, None
    if runtime is not None:
        runtime.close()
