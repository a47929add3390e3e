"""The HTTP app: ``create_app(settings=None, *, runtime=None, broker=None, engine=None) -> Starlette``.

``social-accounts web`` and ``run`` hand in their process's ``workers.runtime.Runtime``; ``uvicorn
--factory web_callback.app:create_app`` and tests let the app build its own. Everything the routes
need comes from that one container on ``app.state.services`` (settings, engine, key ring, broker,
and the HTTP client the token API refreshes through: the workers' own under ``run``).

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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route

from social_accounts.settings import Settings, get_settings
from web_callback import bluesky_client, health
from web_callback.api import routes as api_routes
from web_callback.auth import BearerAuth
from web_callback.callback import close_batchers, oauth_callback
from web_callback.errors import EXCEPTION_HANDLERS
from web_callback.openapi import openapi_json
from web_callback.pages import routes as page_routes
from workers.runtime import Runtime

if TYPE_CHECKING:
    import dramatiq
    from sqlalchemy.engine import Engine

__all__ = ["DropQueryString", "create_app", "freeze_startup_heap"]


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
    hundreds of thousands from its imports alone, and each such pass stops the event loop, which
    every waiting callback feels as latency. Objects created later are collected as
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
        Route("/oauth/bluesky/client-metadata.json", bluesky_client.client_metadata, methods=["GET"]),
        Route("/oauth/bluesky/jwks.json", bluesky_client.jwks, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Mount("/v1", routes=api_routes(), middleware=[Middleware(BearerAuth, token=settings.api_token)]),
        *page_routes(),  # the accounts page (web_callback.pages), its own cookie auth
    ]


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    broker: dramatiq.Broker | None = None,
    engine: Engine | None = None,
) -> Starlette:
    """Build the app. Missing API_TOKEN / STATE_SECRET / TOKEN_KEYS fail here with one clear line.

    Parameters:
      settings(Settings | None): defaults to ``get_settings()`` (environment, ``.env`` and the
        secrets file ``run`` generates); only without ``runtime``.
      runtime(Runtime | None): the process's container (``web``, ``run``); its owner closes it.
        Without one the app builds its own from ``settings`` and closes it at shutdown.
      broker(dramatiq.Broker | None), engine(Engine | None): lent to the app's own container
        (tests); built from ``settings`` when needed otherwise, and never closed by the app.
    """
    if runtime is None:
        lent = frozenset(name for name, value in (("broker", broker), ("engine", engine)) if value is not None)
        services = Runtime(settings or get_settings(), _broker=broker, _engine=engine, lent=lent)
    elif settings is None and broker is None and engine is None:
        services = runtime
    else:
        raise TypeError("create_app takes either a runtime or settings, broker and engine")
    services.settings.require("API_TOKEN", "STATE_SECRET", "TOKEN_KEYS")
    services.ring  # noqa: B018 - a malformed TOKEN_KEYS fails here, at start, not on the first request
    install_access_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await close_batchers(app)  # the callback's Redis connection (web_callback.batching)
        if runtime is None:
            services.close()

    app = Starlette(routes=_routes(services.settings), lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.services = services
    return app
