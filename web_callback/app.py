"""The HTTP app: ``create_app(settings=None, *, broker=None, engine=None) -> Starlette``.

Run it with ``uvicorn --factory web_callback.app:create_app`` (what ``social-accounts web``
does). Everything the routes need lives in one ``Services`` object on ``app.state`` and is
injectable, so tests hand in their own broker and engine.

Routes: ``/oauth/callback`` (browser-facing, no DB: ``web_callback.callback``), ``/healthz``,
``/readyz``, ``/metrics`` (``web_callback.health``) and the bearer-guarded ``/v1`` API
(``web_callback.api``).

Never logging the query string: the callback URL carries the authorization code. This app logs
no request lines itself, and ``create_app`` installs ``DropQueryString`` on uvicorn's
``uvicorn.access`` logger, which rewrites each access-log record to its path without the query
(uvicorn configures logging before it calls the factory, and logger filters survive that). To
drop access lines entirely, run uvicorn with ``--no-access-log``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route

from models.crypto import KeyRing
from platforms.http import default_timeout
from social_accounts.settings import Settings, get_settings
from web_callback import health
from web_callback.api import routes as api_routes
from web_callback.auth import BearerAuth
from web_callback.callback import close_batchers, oauth_callback
from web_callback.errors import EXCEPTION_HANDLERS
from web_callback.pages import routes as page_routes

__all__ = ["DropQueryString", "Services", "create_app", "freeze_startup_heap"]


@dataclass
class Services:
    """The process-wide things the routes use. The broker is built on first use."""

    settings: Settings
    engine: Engine
    ring: KeyRing
    http: httpx.Client
    broker: Any = None
    _runtime: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state_secret(self) -> str:
        return self.settings.state_secret or ""

    @property
    def runtime(self) -> Any:
        """A worker runtime sharing this app's engine, key ring and HTTP client (token API)."""
        with self._lock:
            if self._runtime is None:
                from workers.runtime import Runtime

                self._runtime = Runtime(settings=self.settings, _engine=self.engine, _ring=self.ring, _http=self.http)
            return self._runtime

    def close(self) -> None:
        """Close what the routes opened on first use and own alone (the token API's and the
        metrics' Redis client); the engine, HTTP client and broker belong to whoever made them."""
        with self._lock:
            rt = self._runtime
        if rt is not None:
            rt.close_redis()

    def get_broker(self) -> Any:
        """The injected broker, or one built from ``BROKER_URL`` the first time it is needed."""
        with self._lock:
            if self.broker is None:
                from workers.broker import build_broker

                self.broker = build_broker(self.settings)
            return self.broker


class DropQueryString(logging.Filter):
    """Rewrite uvicorn access-log records so the logged path has no query string.

    uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with args ``(client, method, path_with_query,
    http_version, status)``; the third argument is cut at ``?``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def freeze_startup_heap() -> None:
    """Take everything alive after start-up (imported modules, the app) out of the cyclic GC's scans.

    Why: a full (generation 2) collection walks every tracked object, and a served process has
    hundreds of thousands from its imports alone; each such pass stopped the event loop for tens
    of milliseconds, which was the callback's p99 under load (``bench/callback.py``: p99 about 170
    ms without, 40-75 ms with, bare endpoint 15-40 ms). Objects created later are collected as
    usual. Call once per process right before serving (``social-accounts web`` does); not in tests.
    """
    gc.collect()
    gc.freeze()


def install_access_log_filter() -> None:
    """Attach ``DropQueryString`` to ``uvicorn.access`` once per process."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQueryString) for f in logger.filters):
        logger.addFilter(DropQueryString())


def _routes(settings: Settings) -> list[BaseRoute]:
    assert settings.api_token is not None  # required in create_app
    return [
        Route("/oauth/callback", oauth_callback, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Mount("/v1", routes=api_routes(), middleware=[Middleware(BearerAuth, token=settings.api_token)]),
        *page_routes(),  # the accounts page (web_callback.pages), its own cookie auth
    ]


def create_app(settings: Settings | None = None, *, broker: Any = None, engine: Engine | None = None) -> Starlette:
    """Build the app. Missing API_TOKEN / STATE_SECRET / TOKEN_KEYS fail here with one clear line.

    Parameters:
      settings(Settings | None): defaults to ``get_settings()`` (environment and ``.env``).
      broker(dramatiq.Broker | None): defaults to ``workers.broker.build_broker(settings)``, built lazily.
      engine(Engine | None): defaults to ``models.engine.make_engine(settings.database_url)``.
    """
    settings = settings or get_settings()
    settings.require("API_TOKEN", "STATE_SECRET", "TOKEN_KEYS")
    ring = KeyRing.from_settings(settings)
    if engine is None:
        from models.engine import make_engine

        engine = make_engine(settings.database_url)
    http = httpx.Client(timeout=default_timeout(settings.http_timeout_seconds), follow_redirects=False)
    services = Services(settings=settings, engine=engine, ring=ring, http=http, broker=broker)
    install_access_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await close_batchers(app)  # the callback's Redis connection (web_callback.batching)
        services.close()
        http.close()

    app = Starlette(routes=_routes(settings), lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.services = services
    return app
