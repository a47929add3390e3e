"""The composition root: one ``Runtime`` per process builds everything the code paths share.

Every entry point takes its settings, engine, key ring, HTTP client, Redis client and broker from
a ``Runtime``: the worker processes (``service.cli.boot_worker_process``), the scheduler
(``scheduler.main.run``), the web app (``web_callback.app.create_app``) and ``social-accounts
run`` (``service.embedded``), which hands one runtime to its worker threads, its scheduler and its
web app alike, so the token API refreshes through the very client the workers use.

Nothing is built at import or construction: each resource is built on first use, and
:func:`current` rebuilds them when the process id changes (a pool inherited across ``fork`` must
never be shared). Any resource may be injected instead (tests: settings, engine, clock, HTTP
client, broker); the runtime closes what it holds on :meth:`Runtime.close`, except what it was
lent (``lent``: the web app's injected engine and broker belong to the test that made them).
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
    import dramatiq
    import redis
    from sqlalchemy.engine import Engine

    from models.crypto import KeyRing

__all__ = ["Runtime", "configure", "current", "platform_client", "reset"]

#: a pooled database connection unused this long is pinged before use; busier ones are not (a
#: connection that died under load fails one statement and the step is retried)
PING_AFTER_IDLE_SECONDS = 5.0


@dataclass(eq=False)
class Runtime:
    """Settings plus lazily built resources; every resource may be injected instead.

    Build one with :func:`configure` (the process's own) or ``Runtime(settings, ...)`` (a web app
    in a test). The ``_x`` fields hold what was injected or built; read the properties.
    """

    settings: Settings
    clock: Clock = utcnow
    #: backoff and budgets of the connect actors (tests shorten the delays)
    retry_policy: RetryPolicy = CONNECT_POLICY
    _engine: Engine | None = None
    _ring: KeyRing | None = None
    _http: httpx.Client | None = None
    _redis: redis.Redis | None = None
    _broker: dramatiq.Broker | None = None
    #: names of injected resources that belong to someone else: never closed here
    lent: frozenset[str] = frozenset()
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

                self._engine = make_engine(
                    self.settings.database_url,
                    ping_after_idle=PING_AFTER_IDLE_SECONDS,
                    prepare_threshold=self.settings.database_prepare_threshold,
                )
            return self._engine

    @property
    def ring(self) -> KeyRing:
        """TOKEN_KEYS parsed (``ConfigError`` when it is missing or malformed)."""
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
        """A Redis client for locks, cooldowns and the scheduler leader (``coordination_redis_url``).

        Raises:
          RuntimeError: no Redis is configured (the embedded ``run`` keeps those in memory).
        """
        with self._lock:
            if self._redis is None:
                import redis as redis_lib

                url = self.settings.coordination_redis_url
                if url is None:
                    raise RuntimeError("no Redis configured for locks and cooldowns (set REDIS_URL)")
                self._redis = redis_lib.Redis.from_url(url)
            return self._redis

    @property
    def broker(self) -> dramatiq.Broker:
        """The broker for ``BROKER_URL`` (``workers.broker.build_broker``, which also installs the
        process's message encoder, ``workers.encoding``); built, not installed.

        Sending needs only this. Consuming needs it installed as well (:meth:`install_broker`),
        which the worker, the scheduler and ``run`` do; the web app only sends.
        """
        with self._lock:
            if self._broker is None:
                from workers.broker import build_broker

                self._broker = build_broker(self.settings)
            return self._broker

    def install_broker(self) -> dramatiq.Broker:
        """Make :attr:`broker` the process's broker: every actor moves onto it, and
        ``dramatiq.get_broker()`` returns it (``workers.broker.install_broker``)."""
        from workers.broker import install_broker

        return install_broker(self.broker)

    def close(self) -> None:
        """Release what this runtime holds and does not borrow (worker shutdown, app shutdown, tests).

        Each resource is built again on its next use.
        """
        with self._lock:
            redis_client = None if "redis" in self.lent else self._redis
            http = None if "http" in self.lent else self._http
            engine = None if "engine" in self.lent else self._engine
            broker = None if "broker" in self.lent else self._broker
            if redis_client is not None:
                self._redis = None
            if http is not None:
                self._http = None
            if engine is not None:
                self._engine = None
            if broker is not None:
                self._broker = None
        if redis_client is not None:
            redis_client.close()
        if http is not None:
            http.close()
        if engine is not None:
            engine.dispose()
        if broker is not None:
            broker.close()

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


def configure(
    settings: Settings,
    *,
    clock: Clock = utcnow,
    retry_policy: RetryPolicy = CONNECT_POLICY,
    engine: Engine | None = None,
    ring: KeyRing | None = None,
    http: httpx.Client | None = None,
    redis: redis.Redis | None = None,
    broker: dramatiq.Broker | None = None,
) -> Runtime:
    """Build this process's runtime from ``settings`` and make it :func:`current`.

    Every entry point calls this once at start; tests call it to inject resources. What is
    injected here is handed over: :func:`reset` closes it with the rest.
    """
    global _current
    runtime = Runtime(
        settings=settings,
        clock=clock,
        retry_policy=retry_policy,
        _engine=engine,
        _ring=ring,
        _http=http,
        _redis=redis,
        _broker=broker,
    )
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
    """Close and forget the runtime (tests, and the end of ``run``)."""
    global _current
    with _current_lock:
        runtime, _current = _current, None
    if runtime is not None:
        runtime.close()
