"""Gauges read at scrape time: queue depth from the broker (and the in-process cooldowns of ``run``).

Why at scrape time rather than maintained by the workers: both numbers live outside any one
process (a Redis list, a key with a TTL). A value pushed by a worker would be stale the moment a
cooldown expires or another process enqueues; reading the source when Prometheus asks is always
right and costs a handful of Redis commands every scrape interval.

Queue depth, labelled by queue name as the broker stores it:

* Redis: ``LLEN <ns>:<queue>`` (ready), ``LLEN <ns>:<queue>.DQ`` (delayed: retries, deferrals)
  and ``ZCARD <ns>:<queue>.XQ`` (dead-lettered);
* RabbitMQ: ``get_queue_message_counts`` (a passive declare per queue: ready, delayed, dead);
* the in-memory broker of ``run``: the size of each queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name

from social_accounts.metrics import COOLDOWNS_ACTIVE, QUEUE_DEPTH
from workers import coordination
from workers.messages import QUEUES

__all__ = ["publish_local_cooldowns", "queue_depths", "update_queue_depth"]


def queue_depths(broker: Any, queues: Iterable[str] = QUEUES) -> dict[str, int]:
    """Messages waiting per queue name (``connect``, ``connect.DQ``, ``connect.XQ``...)."""
    depths: dict[str, int] = {}
    if isinstance(broker, RedisBroker):
        pipe = broker.client.pipeline(transaction=False)
        names: list[str] = []
        for queue in queues:
            for name, command in ((queue, pipe.llen), (dq_name(queue), pipe.llen), (xq_name(queue), pipe.zcard)):
                command(f"{broker.namespace}:{name}")
                names.append(name)
        depths.update(zip(names, (int(n) for n in pipe.execute()), strict=True))
    elif isinstance(broker, RabbitmqBroker):
        for queue in queues:
            ready, delayed, dead = broker.get_queue_message_counts(queue)
            depths.update({queue: ready, dq_name(queue): delayed, xq_name(queue): dead})
    elif isinstance(broker, StubBroker):
        for queue in queues:
            for name in (queue, dq_name(queue)):
                found = broker.queues.get(name)
                depths[name] = found.qsize() if found is not None else 0
    return depths


def update_queue_depth(broker: Any) -> dict[str, int]:
    """Set ``social_accounts_queue_depth{queue}`` from the broker; returns what it read."""
    depths = queue_depths(broker)
    for queue, depth in depths.items():
        QUEUE_DEPTH.labels(queue).set(depth)
    return depths


def publish_local_cooldowns() -> int:
    """``social_accounts_cooldowns_active`` from this process's cooldowns (the embedded ``run``:
    one process, no Redis; with Redis, ``workers.cooldowns.publish_gauge`` reads the shared ones).
    Returns how many are in force."""
    local = coordination._local  # the one in-process coordination every runtime shares
    now = time.monotonic()
    counts: dict[str, int] = {}
    with local._mutex:
        for (platform, _), until in local._cooldowns.items():
            if until > now:
                counts[platform] = counts.get(platform, 0) + 1
    COOLDOWNS_ACTIVE.clear()
    for platform, count in counts.items():
        COOLDOWNS_ACTIVE.labels(platform).set(count)
    return sum(counts.values())
