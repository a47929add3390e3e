"""Enqueue many messages at once.

``actor.send()`` is one blocking round trip per message: about 3 seconds for 10,000, which is
the whole budget of a scheduler tick. On Redis a whole chunk goes in one call of the wire
module's write script (``workers.messages.REDIS_WRITE_SCRIPT``: the ``HSET`` + ``RPUSH`` that
Dramatiq's own enqueue runs, so workers consume the messages unchanged). Other brokers fall back
to one ``enqueue`` per message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from redis.commands.core import Script

from workers import messages as wire

__all__ = ["WRITE_CHUNK", "enqueue_calls", "enqueue_many"]

#: messages per Redis round trip (one write script call)
WRITE_CHUNK = wire.REDIS_WRITE_MAX


def enqueue_many(broker: dramatiq.Broker, messages: Iterable[dramatiq.Message[Any]]) -> int:
    """Enqueue every message (no delay); returns how many were sent."""
    if not isinstance(broker, RedisBroker):
        count = 0
        for message in messages:
            broker.enqueue(message)
            count += 1
        return count
    return _write_all(broker, (wire.encode_for_redis(message) for message in messages))


def enqueue_calls(broker: dramatiq.Broker, queue_name: str, actor_name: str, calls: list[dict[str, Any]]) -> int:
    """Enqueue one message per keyword-argument dict in ``calls``, all for one actor."""
    if not isinstance(broker, RedisBroker):
        return enqueue_many(
            broker,
            (
                dramatiq.Message(queue_name=queue_name, actor_name=actor_name, args=(), kwargs=kwargs, options={})
                for kwargs in calls
            ),
        )
    return _write_all(broker, (wire.encode_call(actor_name, kwargs, queue_name=queue_name) for kwargs in calls))


def _write_all(broker: RedisBroker, items: Iterable[wire.Encoded]) -> int:
    """Write ``items`` ``WRITE_CHUNK`` at a time, one write script call each; returns the count."""
    write = broker.client.register_script(wire.REDIS_WRITE_SCRIPT)
    count = 0
    chunk: list[wire.Encoded] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= WRITE_CHUNK:
            count += _write(write, broker.namespace, chunk)
    return count + _write(write, broker.namespace, chunk)


def _write(write: Script, namespace: str, chunk: list[wire.Encoded]) -> int:
    """One script call for ``chunk``, which it then empties; returns how many it wrote."""
    if not chunk:
        return 0
    keys, args = wire.redis_write_args(namespace, chunk)
    write(keys=keys, args=args)
    written = len(chunk)
    chunk.clear()
    return written
