"""Dramatiq middleware that measures how long messages wait before a worker starts them.

Queue depth says how much work is waiting; latency says whether anyone is *late*: a connect
message that waits thirty seconds means a person staring at a spinner. It is measured when a
worker picks the message up, from the moment it became due: its ``eta`` for a delayed message
(a retry, a deferral behind a cooldown), else its ``message_timestamp`` (when it was enqueued).
A negative value (clocks of two hosts that disagree) counts as zero.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name

from social_accounts.metrics import MESSAGE_LATENCY

__all__ = ["MessageLatency", "due_at_ms"]


def due_at_ms(message: dramatiq.Message[Any] | MessageProxy) -> int:
    """When ``message`` became runnable, in epoch milliseconds."""
    eta = message.options.get("eta")
    if isinstance(eta, int | float) and not isinstance(eta, bool):
        return int(eta)
    return int(message.message_timestamp)


class MessageLatency(dramatiq.Middleware):
    """Observes ``social_accounts_message_latency_seconds{queue}`` before each message runs."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._children: dict[str, Any] = {}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        waited = self._clock() - due_at_ms(message) / 1000.0
        queue = message.queue_name
        child = self._children.get(queue)
        if child is None:  # ``labels()`` takes a lock and a lookup: once per queue
            child = self._children[queue] = MESSAGE_LATENCY.labels(q_name(queue))
        child.observe(max(0.0, waited))
