"""Enqueue many messages at once.

``actor.send()`` is one blocking round trip per message: about 3 seconds for 10,000 here, which
is the whole budget of a scheduler tick. On Redis we write the documented wire format
(``HSET <ns>:<queue>.msgs`` + ``RPUSH <ns>:<queue>``) for a whole batch in one pipeline — the same
two commands Dramatiq's own enqueue runs, so workers consume them unchanged. Other brokers fall
back to one ``enqueue`` per message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

__all__ = ["enqueue_many"]

#: messages per Redis pipeline round trip
PIPELINE_CHUNK = 2000


def enqueue_many(broker: dramatiq.Broker, messages: Iterable[dramatiq.Message[Any]]) -> int:
    """Enqueue every message (no delay); returns how many were sent."""
    if not isinstance(broker, RedisBroker):
        count = 0
        for message in messages:
            broker.enqueue(message)
            count += 1
        return count
    count = 0
    pipe = broker.client.pipeline(transaction=False)
    for message in messages:
        redis_id = str(uuid.uuid4())
        message = message.copy(options={**message.options, "redis_message_id": redis_id})
        queue = f"{broker.namespace}:{message.queue_name}"
        pipe.hset(f"{queue}.msgs", redis_id, message.encode())
        pipe.rpush(queue, redis_id)
        count += 1
        if count % PIPELINE_CHUNK == 0:
            pipe.execute()
    pipe.execute()
    return count
