"""The wire shape of every message: actor names, queues, and how a message is built.

This is the one module that knows what goes over the broker, so the web app, the scheduler,
other modules and the actors agree without importing one another. Messages carry ids only:
never a token, a password or an unencrypted authorization code (the code rides as ``code_enc``,
encrypted with the KeyRing under table ``message``, column ``code``, row id = the attempt id).

The raw format a non-Python producer writes to Redis (namespace = ``REDIS_NAMESPACE``)::

    HSET <ns>:<queue>.msgs <redis_message_id> <payload>
    RPUSH <ns>:<queue> <redis_message_id>

    payload = {"queue_name": "refresh", "actor_name": "refresh_account", "args": [],
               "kwargs": {"account_id": "...", "reason": "requested"},
               "options": {"redis_message_id": "<uuid4>"},
               "message_id": "<uuid4>", "message_timestamp": <epoch ms>}
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dramatiq

__all__ = [
    "ACTOR_QUEUES",
    "BLUESKY_LOGIN",
    "CODE_RECEIVED",
    "CODE_MAX_AGE_MS",
    "CONNECT_RETRY_EXHAUSTED",
    "DISCONNECT_ACCOUNT",
    "QUEUES",
    "QUEUE_CONNECT",
    "QUEUE_MAINTENANCE",
    "QUEUE_REFRESH",
    "QUEUE_SYNC",
    "REFRESH_ACCOUNT",
    "SYNC_ACCOUNT",
    "build_message",
]

QUEUE_CONNECT = "connect"
QUEUE_REFRESH = "refresh"
QUEUE_SYNC = "sync"
QUEUE_MAINTENANCE = "maintenance"
#: every queue a worker consumes (CONTRACT.md "Messages")
QUEUES = (QUEUE_CONNECT, QUEUE_REFRESH, QUEUE_SYNC, QUEUE_MAINTENANCE)

#: ``code_received(attempt_id, code_enc=None, error=None, error_description=None)``
CODE_RECEIVED = "code_received"
#: ``bluesky_login(attempt_id)``
BLUESKY_LOGIN = "bluesky_login"
#: internal: Dramatiq's ``on_retry_exhausted`` target for the connect actors
CONNECT_RETRY_EXHAUSTED = "connect_retry_exhausted"
#: public: ``refresh_account(account_id, reason="requested")``
REFRESH_ACCOUNT = "refresh_account"
#: public: ``sync_account(account_id)``
SYNC_ACCOUNT = "sync_account"
#: ``disconnect_account(account_id)``
DISCONNECT_ACCOUNT = "disconnect_account"

#: which queue each actor listens on
ACTOR_QUEUES: dict[str, str] = {
    CODE_RECEIVED: QUEUE_CONNECT,
    BLUESKY_LOGIN: QUEUE_CONNECT,
    CONNECT_RETRY_EXHAUSTED: QUEUE_CONNECT,
    REFRESH_ACCOUNT: QUEUE_REFRESH,
    SYNC_ACCOUNT: QUEUE_SYNC,
    DISCONNECT_ACCOUNT: QUEUE_MAINTENANCE,
}

#: authorization codes live minutes at most; a code_received message older than this is not tried
CODE_MAX_AGE_MS = 10 * 60 * 1000


def build_message(actor_name: str, **kwargs: Any) -> dramatiq.Message[Any]:
    """A message for ``actor_name`` with keyword arguments only (the documented wire shape).

    Parameters:
      actor_name(str): one of the names above; its queue comes from ``ACTOR_QUEUES``.
      **kwargs: JSON primitives (ids, reasons, ``code_enc``); never a secret in clear.
    Raises:
      KeyError: for an actor name this service does not know.
    """
    queue = ACTOR_QUEUES[actor_name]
    return dramatiq.Message(
        queue_name=queue,
        actor_name=actor_name,
        args=(),
        kwargs=dict(kwargs),
        options={},
        message_id=str(uuid.uuid4()),
        message_timestamp=int(time.time() * 1000),
    )
