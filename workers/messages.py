"""The wire shape of every message: actor names, queues, payload encoding and ids.

This is the one module that knows what goes over the broker, so the web app, the scheduler,
other modules and the actors agree without importing one another. Messages carry ids only:
never a token, a password or an unencrypted authorization code (the code rides as ``code_enc``,
encrypted with the KeyRing under table ``message``, column ``code``, row id = the attempt id).

A payload is always what ``dramatiq.Message.encode()`` writes: JSON, through the process's encoder
(``workers.encoding``: orjson, the same JSON values as Dramatiq's stock ``JSONEncoder``). On
Redis a message is the two keys Dramatiq's own ``RedisBroker.enqueue`` writes, which is also the
raw format a non-Python producer may write (docs/publishing.md; namespace = ``REDIS_NAMESPACE``)::

    HSET <ns>:<queue>.msgs <redis_message_id> <payload>
    RPUSH <ns>:<queue> <redis_message_id>

    payload = {"queue_name": "refresh", "actor_name": "refresh_account", "args": [],
               "kwargs": {"account_id": "...", "reason": "requested"},
               "options": {"redis_message_id": "<uuid4>"},
               "message_id": "<uuid4>", "message_timestamp": <epoch ms>}

Many messages at once (the callback's group commit, the scheduler's bulk enqueue) go in one
``EVALSHA`` of ``REDIS_WRITE_SCRIPT`` (redis-py's ``register_script``): those same two commands
per queue, run atomically, so no id is ever pushed without its payload.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import dramatiq

__all__ = [
    "ACTOR_QUEUES",
    "ACCOUNT_EVENT",
    "BLUESKY_LOGIN",
    "DELIVER_WEBHOOK",
    "DISPATCH_EVENTS",
    "QUEUE_EVENTS",
    "QUEUE_WEBHOOKS",
    "CODE_RECEIVED",
    "CODE_MAX_AGE_MS",
    "DISCONNECT_ACCOUNT",
    "QUEUES",
    "QUEUE_CONNECT",
    "QUEUE_MAINTENANCE",
    "QUEUE_REFRESH",
    "QUEUE_SYNC",
    "REDIS_WRITE_MAX",
    "REDIS_WRITE_SCRIPT",
    "REFRESH_ACCOUNT",
    "SYNC_ACCOUNT",
    "Encoded",
    "build_message",
    "encode_call",
    "encode_for_redis",
    "new_id",
    "redis_keys",
    "redis_write_args",
]

QUEUE_CONNECT = "connect"
QUEUE_REFRESH = "refresh"
QUEUE_SYNC = "sync"
QUEUE_MAINTENANCE = "maintenance"
#: webhook dispatch and delivery (README "Events")
QUEUE_WEBHOOKS = "webhooks"
#: public events for other modules on the broker; published here, consumed by them, never by us
QUEUE_EVENTS = "events"
#: every queue a worker consumes (README, "For other modules: tokens and messages")
QUEUES = (QUEUE_CONNECT, QUEUE_REFRESH, QUEUE_SYNC, QUEUE_MAINTENANCE, QUEUE_WEBHOOKS)

#: ``code_received(attempt_id, code_enc=None, error=None, error_description=None)``
CODE_RECEIVED = "code_received"
#: ``bluesky_login(attempt_id)``
BLUESKY_LOGIN = "bluesky_login"
#: public: ``refresh_account(account_id, reason="requested")``
REFRESH_ACCOUNT = "refresh_account"
#: public: ``sync_account(account_id)``
SYNC_ACCOUNT = "sync_account"
#: ``disconnect_account(account_id)``
DISCONNECT_ACCOUNT = "disconnect_account"

#: ``dispatch_events()``: publish what the outbox holds
DISPATCH_EVENTS = "dispatch_events"
#: ``deliver_webhook(delivery_id)``: one event to one endpoint
DELIVER_WEBHOOK = "deliver_webhook"
#: public, on queue ``events``: ``account_event(id, cursor, type, timestamp, data)``, the body
#: of ``GET /v1/events`` items as keyword arguments (README "Events")
ACCOUNT_EVENT = "account_event"

#: which queue each actor listens on
ACTOR_QUEUES: dict[str, str] = {
    CODE_RECEIVED: QUEUE_CONNECT,
    BLUESKY_LOGIN: QUEUE_CONNECT,
    REFRESH_ACCOUNT: QUEUE_REFRESH,
    SYNC_ACCOUNT: QUEUE_SYNC,
    DISCONNECT_ACCOUNT: QUEUE_MAINTENANCE,
    DISPATCH_EVENTS: QUEUE_WEBHOOKS,
    DELIVER_WEBHOOK: QUEUE_WEBHOOKS,
    ACCOUNT_EVENT: QUEUE_EVENTS,
}

#: authorization codes live minutes at most; a code_received message older than this is not tried
CODE_MAX_AGE_MS = 10 * 60 * 1000


def new_id() -> str:
    """A fresh message or Redis id: a random UUID4 string, as Dramatiq makes its own."""
    return str(uuid.uuid4())


def build_message(actor_name: str, **kwargs: Any) -> dramatiq.Message[Any]:
    """A message for ``actor_name`` with keyword arguments only (the documented wire shape); its
    ``message_id`` and ``message_timestamp`` are Dramatiq's defaults (a UUID4, now in ms).

    Parameters:
      actor_name(str): one of the names above; its queue comes from ``ACTOR_QUEUES``.
      **kwargs: JSON primitives (ids, reasons, ``code_enc``); never a secret in clear.
    Raises:
      KeyError: for an actor name this service does not know.
    """
    return dramatiq.Message(
        queue_name=ACTOR_QUEUES[actor_name], actor_name=actor_name, args=(), kwargs=dict(kwargs), options={}
    )


class Encoded(NamedTuple):
    """One message as Redis holds it: its queue, its Redis id and its payload."""

    queue_name: str
    redis_id: str
    payload: bytes


def encode_for_redis(message: dramatiq.Message[Any]) -> Encoded:
    """``message`` with a fresh ``redis_message_id`` in its options, encoded: what
    ``RedisBroker.enqueue`` stores (every enqueue gets its own Redis id, a retry included)."""
    redis_id = new_id()
    return Encoded(message.queue_name, redis_id, message.copy(options={"redis_message_id": redis_id}).encode())


def encode_call(actor_name: str, kwargs: dict[str, Any], *, queue_name: str | None = None) -> Encoded:
    """What ``encode_for_redis(build_message(actor_name, **kwargs))`` gives, for a new message.

    This runs once per callback, on the web's event loop, so it writes the fields
    ``dramatiq.Message.asdict()`` would give (same names, same order) straight to Dramatiq's
    encoder (``dramatiq.get_encoder()``): the bytes ``Message(...).encode()`` writes, without
    building the frozen dataclass and its copy (``tests/test_callback_fast_paths.py`` holds it to
    Dramatiq's own, field list included).

    One UUID serves as both the new message's ``message_id`` and its first ``redis_message_id``.
    ``RedisBroker.enqueue`` draws a separate Redis id because a message is enqueued again under
    the same ``message_id`` (a retry, a delayed message moved to its queue), and each enqueue needs
    its own hash field; those enqueues go through Dramatiq and draw fresh UUID4s. A new message's
    first enqueue is the only one that uses its ``message_id`` as a Redis id, so the id is as
    unique as any UUID4 Dramatiq draws. ``encode_for_redis`` takes messages that may have been
    enqueued before and always draws a new id.

    ``queue_name`` defaults to the actor's (``ACTOR_QUEUES``); raises ``KeyError`` for an actor
    name this service does not know.
    """
    message_id = new_id()
    queue = queue_name or ACTOR_QUEUES[actor_name]
    fields = {
        "queue_name": queue,
        "actor_name": actor_name,
        "args": (),
        "kwargs": kwargs,
        "options": {"redis_message_id": message_id},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),  # Dramatiq's default, epoch ms
    }
    return Encoded(queue, message_id, dramatiq.get_encoder().encode(fields))


def redis_keys(namespace: str, queue_name: str) -> tuple[str, str]:
    """The list of ids and the hash of payloads of ``queue_name`` (``RedisBroker``'s key names)."""
    queue = f"{namespace}:{queue_name}"
    return queue, f"{queue}.msgs"


#: messages one ``REDIS_WRITE_SCRIPT`` call takes at most: its ``unpack`` of two values per
#: message must stay below Lua's C stack limit (8,000 values in Redis's Lua)
REDIS_WRITE_MAX = 1000

#: KEYS = per queue ``<q>.msgs, <q>``; ARGV = per queue its message count n, the n redis ids, then
#: the n pairs ``redis id, payload``. Payloads are stored before their ids are pushed; a script
#: stops at its first failing command, so no id is ever pushed without its payload.
REDIS_WRITE_SCRIPT = """
local a = 1
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  redis.call("HSET", KEYS[k], unpack(ARGV, a + n + 1, a + 3 * n))
  redis.call("RPUSH", KEYS[k + 1], unpack(ARGV, a + 1, a + n))
  a = a + 3 * n + 1
end
return a - 1
"""


def redis_write_args(namespace: str, items: Iterable[Encoded]) -> tuple[list[str], list[str | bytes]]:
    """The ``keys`` and ``args`` of one ``REDIS_WRITE_SCRIPT`` call for ``items`` (at most
    ``REDIS_WRITE_MAX``), grouped by queue, each queue's messages in their given order."""
    by_queue: dict[str, tuple[list[str], list[str | bytes]]] = {}
    for item in items:
        ids, pairs = by_queue.setdefault(item.queue_name, ([], []))
        ids.append(item.redis_id)
        pairs += (item.redis_id, item.payload)
    keys: list[str] = []
    args: list[str | bytes] = []
    for queue_name, (ids, pairs) in by_queue.items():
        queue, payloads = redis_keys(namespace, queue_name)
        keys += (payloads, queue)
        args.append(str(len(ids)))
        args += ids
        args += pairs
    return keys, args
