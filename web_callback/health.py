"""Liveness, readiness and Prometheus metrics.

``/healthz`` only says the process answers (a load balancer restarts it otherwise).
``/readyz`` says whether it can do its job right now: the database answers ``SELECT 1`` and the
broker answers a ping. Both checks run in worker threads with a time bound, so a hanging
dependency makes readiness fail instead of hanging the probe (and never blocks the event loop).
``/metrics`` is prometheus_client's text exposition of the default registry, which also holds the
callback counters defined here. Queue depth and active cooldowns are read from the broker and
Redis just before each exposition (``workers.gauges``), with the same time bound: a broker that
does not answer leaves those two gauges at their last values (and counts a scrape error) rather
than failing the whole scrape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = ["BROKER_ERRORS", "CALLBACKS", "SCRAPE_ERRORS", "broker_ping", "healthz", "metrics", "readyz"]

#: OAuth callbacks by outcome (enqueued, denied, bad_state, bad_request, broker_down)
CALLBACKS = Counter("social_accounts_callbacks_total", "OAuth callbacks received, by outcome", ["outcome"])

#: scrapes whose queue-depth or cooldown reading failed (the gauges then show their last values)
SCRAPE_ERRORS = Counter("social_accounts_scrape_errors_total", "Failed readings of the scrape-time gauges")

#: how long a readiness check may take before the dependency counts as down
READY_TIMEOUT_SECONDS = 3.0


def _broker_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the broker did not take the message" (whatever broker is used)."""
    import dramatiq.errors
    import redis.exceptions

    errors: list[type[BaseException]] = [dramatiq.errors.BrokerError, redis.exceptions.RedisError, OSError]
    try:
        import pika.exceptions

        errors.append(pika.exceptions.AMQPError)
    except ImportError:  # pragma: no cover - the rabbitmq extra is installed
        pass
    return tuple(errors)


BROKER_ERRORS = _broker_errors()


def broker_ping(broker: Any) -> None:
    """Raise when the broker does not answer. Redis: PING; RabbitMQ: open a channel; stub: ok."""
    client = getattr(broker, "client", None)
    if client is not None and hasattr(client, "ping"):
        client.ping()
    elif hasattr(type(broker), "channel"):
        broker.channel  # noqa: B018 - RabbitmqBroker opens (or reuses) its connection here


def _database_ping(services: Runtime) -> None:
    with services.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _check(fn: Callable[[], None]) -> str | None:
    """Run ``fn`` in a thread with a time bound; None when fine, else a short reason."""
    try:
        with anyio.fail_after(READY_TIMEOUT_SECONDS):
            await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except TimeoutError:
        return "timed out"
    except Exception as exc:  # any failure means "not ready"; the type is enough to diagnose
        return type(exc).__name__
    return None


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    services: Runtime = request.app.state.services
    database = await _check(lambda: _database_ping(services))
    broker = await _check(lambda: broker_ping(services.broker))
    checks = {"database": database or "ok", "broker": broker or "ok"}
    ready = database is None and broker is None
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def _publish_cooldowns(services: Runtime) -> None:
    """The cooldowns gauge from Redis, where every worker's cooldowns live (in-process without Redis)."""
    settings = services.settings
    if settings.coordination_redis_url is None:
        from workers.gauges import publish_local_cooldowns

        publish_local_cooldowns()
        return
    from workers.cooldowns import publish_gauge

    publish_gauge(services.redis, settings.redis_namespace)


def _publish_queue_depth(services: Runtime) -> None:
    from workers.gauges import update_queue_depth

    update_queue_depth(services.broker)


def _publish_failing_webhooks(services: Runtime) -> None:
    from workers.events import publish_failing_gauge

    publish_failing_gauge(services)


async def metrics(request: Request) -> Response:
    services: Runtime = request.app.state.services
    # best effort: metrics answer regardless; a failed reading is counted, its gauge keeps its last value
    for reading in (_publish_cooldowns, _publish_queue_depth, _publish_failing_webhooks):
        if await _check(functools.partial(reading, services)) is not None:
            SCRAPE_ERRORS.inc()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
