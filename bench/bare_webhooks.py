"""A bare Dramatiq worker making the same webhook POSTs as ours: the reference of ``bench/events.py``.

What anyone would write with the same libraries: a stock ``RedisBroker``, one actor, one plain
``httpx.Client`` per process, the body signed the Standard Webhooks way with ``hmac``. No
database, no outbox, no delivery rows, no SSRF guard, no retry policy: the distance between ours
and this is what those cost. Bench-only; the stock CLI loads it in each worker process
(``dramatiq bare_webhooks --path bench``). Environment: ``BROKER_URL``, ``BARE_NAMESPACE``,
``RECEIVER_URL``, ``WEBHOOK_KEY`` (base64).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

import dramatiq
import httpx
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bare_webhooks"
broker = RedisBroker(url=os.environ["BROKER_URL"], namespace=os.environ["BARE_NAMESPACE"])
dramatiq.set_broker(broker)
http = httpx.Client(timeout=15.0)
URL = os.environ["RECEIVER_URL"]
KEY = base64.b64decode(os.environ["WEBHOOK_KEY"])


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def bare_webhook(event_id: str, body: dict) -> None:  # type: ignore[type-arg]
    payload = json.dumps(body, separators=(",", ":")).encode()
    now = str(int(time.time()))
    mac = hmac.new(KEY, f"{event_id}.{now}.".encode() + payload, hashlib.sha256).digest()
    headers = {
        "webhook-id": event_id,
        "webhook-timestamp": now,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }
    http.post(URL, content=payload, headers=headers).raise_for_status()
