"""The connect flow end to end on RabbitMQ: ``BROKER_URL=amqp://…`` with Redis for locks and cooldowns.

A real Dramatiq Worker consumes from a real RabbitmqBroker built by ``workers.broker.build_broker``;
the fake platform issues the code; PostgreSQL stores the account. RabbitMQ has no namespace for
Dramatiq's queue names, so the queues are purged before and after the test. Locally the test
skips when RabbitMQ does not answer; in CI it fails (``tests.support.unavailable``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import httpx
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from models.engine import make_engine
from models.migrate import upgrade
from tests.lifecycle_support import events, make_due
from tests.pipeline_support import FAST_POLICY_KW, Pipeline
from tests.support import unavailable
from tests.waiting import wait_until
from workers.cooldowns import set_cooldown
from workers.messages import QUEUES
from workers.publish import request_refresh

RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _rabbitmq_answers() -> bool:
    import pika

    params = pika.URLParameters(RABBITMQ_URL)
    params.socket_timeout = 2
    params.connection_attempts = 1
    params.blocked_connection_timeout = 2
    try:
        pika.BlockingConnection(params).close()
    except Exception:  # any failure to connect means "not available here"
        return False
    return True


@pytest.fixture
def rabbit(pg_url: str, redis_url: str, settings_factory: Any, fake: Any) -> Iterator[Pipeline]:
    """The pipeline of ``tests.pipeline_support`` with RabbitMQ as the broker."""
    if not _rabbitmq_answers():
        unavailable("RabbitMQ")
    import workers.actors  # noqa: F401  (declares the actors, so the broker moves them)
    from workers import broker as broker_mod
    from workers import runtime
    from workers.retrying import RetryPolicy

    upgrade(pg_url)
    settings = settings_factory(database_url=pg_url, broker_url=RABBITMQ_URL, redis_url=redis_url)
    assert settings.coordination_redis_url == redis_url  # locks and cooldowns stay on Redis
    engine = make_engine(pg_url)
    http = httpx.Client(transport=httpx.HTTPTransport(retries=2))
    rt = runtime.configure(settings, engine=engine, http=http, retry_policy=RetryPolicy(**FAST_POLICY_KW))
    broker = broker_mod.setup(settings)
    assert isinstance(broker, RabbitmqBroker)
    broker.flush_all()  # what an earlier, interrupted run may have left
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        yield Pipeline(settings, engine, broker, rt.ring, fake)
    finally:
        worker.stop(timeout=10_000)
        broker.flush_all()
        broker.close()
        runtime.reset()
        http.close()
        engine.dispose()


def test_connect_and_refresh_through_rabbitmq(rabbit: Pipeline, redis_url: str) -> None:
    import redis

    from workers.gauges import queue_depths

    attempt_id, _ = rabbit.connect("twitter")
    row = rabbit.wait_for(attempt_id)

    assert (row.status, row.error_code) == ("connected", None), row.history
    (account_id,) = row.account_ids

    # a lifecycle message on the same broker, held back by a cooldown that only Redis knows
    store = redis.Redis.from_url(redis_url)
    try:
        set_cooldown(store, rabbit.settings.redis_namespace, "twitter", 1.5)
    finally:
        store.close()
    make_due(rabbit, account_id)
    started = time.monotonic()
    request_refresh(account_id, "manual", broker=rabbit.broker)
    wait_until(lambda: events(rabbit, account_id, "refreshed"), what="the refresh over RabbitMQ")
    assert time.monotonic() - started >= 1.4  # deferred behind the shared cooldown, then done

    # queue depth reads RabbitMQ's own counts: every queue drained
    depths = queue_depths(rabbit.broker)
    assert set(depths) >= set(QUEUES)
    assert all(depths[queue] == 0 for queue in QUEUES), depths
