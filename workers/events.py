"""Events out: publish the outbox, sign and deliver webhooks, and put each event on the broker.

* :func:`dispatch` publishes outbox rows (``models.outbox.dispatch``: cursor and deliveries in one
  transaction) and, after that commits, enqueues one ``deliver_webhook`` per delivery on queue
  ``webhooks`` and one ``account_event`` per event on queue ``events``. It runs when a worker's
  message wrote an event (:class:`EventNudge`) and on the scheduler's sweep, which also re-sends
  deliveries whose message a crash lost (``models.outbox.lost_deliveries``).
* :func:`deliver` makes one attempt: Standard Webhooks headers and signature
  (https://www.standardwebhooks.com/, "Signature scheme"), the URL through the SSRF guard, the
  attempt recorded with its status and latency. A 2xx delivers, a 410 disables the endpoint,
  anything else raises ``Transient`` and the one retry policy (``WEBHOOK_POLICY``) backs off
  exponentially with jitter for up to 3 days. The same ``webhook-id`` on every try.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import httpx
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.engine import Engine

from models import outbox
from platforms.netguard import NetGuard
from social_accounts.clock import Clock
from social_accounts.errors import NotNow, Transient, UnsafeAddress
from social_accounts.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_ENDPOINTS_FAILING
from social_accounts.settings import parse_webhook_secrets
from workers import coordination, messages, runtime
from workers.bulk import enqueue_calls
from workers.retrying import RetryPolicy, Step
from workers.runtime import Runtime

__all__ = [
    "DELIVER_STEP",
    "EventNudge",
    "WEBHOOK_POLICY",
    "deliver",
    "dispatch",
    "encode_body",
    "enqueue_deliveries",
    "publish_failing_gauge",
    "sign",
    "signed_headers",
    "sweep",
]

log = logging.getLogger(__name__)

#: Standard Webhooks' retry guidance is "exponential backoff, for days": 5 s doubling with full
#: jitter in its upper half, capped at 6 h per wait; 21 retries wait 1.5 to 3 days in all
#: (tests/test_events_unit.py sums the bounds)
WEBHOOK_POLICY = RetryPolicy(
    max_transient=21,
    max_rate_limited=21,
    min_backoff_ms=5_000,
    max_backoff_ms=6 * 3600 * 1000,
    max_retry_after_ms=6 * 3600 * 1000,
)
DELIVER_STEP = Step("deliver", fail_code="delivery_failed")
#: how long a receiver may take to answer one attempt
DELIVERY_TIMEOUT_SECONDS = 15.0
#: how long a delivery waits for an earlier event of the same account to go first
ORDER_WAIT_SECONDS = 1.0


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes sent and signed: compact JSON, keys in the order built, UTF-8."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes, msg_id: str, timestamp: int, payload: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.payload">`` (Standard Webhooks)."""
    content = f"{msg_id}.{timestamp}.".encode() + payload
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signed_headers(keys: Sequence[bytes], msg_id: str, timestamp: int, payload: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; signed with the first key only (the others verify
    only on the receiver's side, during a rotation)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "content-type": "application/json"}
    if keys:
        headers["webhook-signature"] = sign(keys[0], msg_id, timestamp, payload)
    return headers


def _broker_events(broker: dramatiq.Broker, published: Sequence[outbox.Published], on_broker: bool) -> None:
    """Each event on queue ``events`` for modules that share the broker, when ``EVENTS_ON_BROKER``
    says one consumes it (a queue nobody reads would only grow) and never under ``run``'s
    in-process broker: nobody else could read it there."""
    if not on_broker or isinstance(broker, StubBroker) or not published:
        return
    calls = [{"id": p.event_id, "cursor": str(p.seq), **p.body} for p in published]
    enqueue_calls(broker, messages.QUEUE_EVENTS, messages.ACCOUNT_EVENT, calls)


def dispatch(
    engine: Engine, broker: dramatiq.Broker, *, urls: Sequence[str], clock: Clock, on_broker: bool = False
) -> int:
    """Publish everything in the outbox; returns how many events went out."""
    total = 0
    while True:
        published = outbox.dispatch(engine, urls=urls, now=clock())
        enqueue_deliveries(broker, [d for p in published for d in p.delivery_ids])
        _broker_events(broker, published, on_broker)
        total += len(published)
        if len(published) < outbox.DISPATCH_BATCH:
            return total


def enqueue_deliveries(broker: dramatiq.Broker, delivery_ids: Sequence[str]) -> int:
    """One ``deliver_webhook`` per delivery id (a redelivery, a sweep)."""
    calls = [{"delivery_id": d} for d in delivery_ids]
    return enqueue_calls(broker, messages.QUEUE_WEBHOOKS, messages.DELIVER_WEBHOOK, calls) if calls else 0


def sweep(
    engine: Engine, broker: dramatiq.Broker, *, urls: Sequence[str], clock: Clock, on_broker: bool = False
) -> dict[str, int]:
    """The scheduler's sweep: publish what a crash left in the outbox, re-send lost deliveries."""
    published = dispatch(engine, broker, urls=urls, clock=clock, on_broker=on_broker)
    lost = outbox.lost_deliveries(engine, now=clock())
    enqueue_deliveries(broker, lost)
    return {"published": published, "resent": len(lost)}


@functools.lru_cache(maxsize=4)
def _keys(secrets: str | None) -> list[bytes]:
    """``WEBHOOK_SECRETS`` decoded once per value, not per delivery."""
    return parse_webhook_secrets(secrets)


def deliver(rt: Runtime, client: httpx.Client, delivery_id: str) -> str:
    """One attempt at a delivery; returns its outcome.

    Raises:
      NotNow: an earlier event of the same account is still on its way to this endpoint.
      Transient: the receiver did not answer 2xx or 410; the policy retries.
    """
    with outbox.autocommit(rt.engine) as conn:
        job = outbox.load_delivery(conn, delivery_id)
        if job is None or job.status != "pending":
            return "already"
        if job.endpoint_disabled or job.url is None or job.body is None:
            return "dropped"
        if job.earlier_pending:
            raise NotNow(ORDER_WAIT_SECONDS, "an earlier event of this account goes first")
        payload = encode_body(job.body)
        headers = signed_headers(_keys(rt.settings.webhook_secrets), job.event_id, int(time.time()), payload)
        guard = NetGuard(allow_private=rt.settings.allow_private_network, platform="webhook")
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            guard.check_url(job.url)
            response = client.post(job.url, content=payload, headers=headers)
            status = response.status_code
        except UnsafeAddress as exc:
            error = f"refused by the SSRF guard: {exc}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        except Transient as exc:
            error = exc.message
        latency_ms = int((time.perf_counter() - started) * 1000)
        if status is not None and 200 <= status < 300:
            outcome = "delivered"
        elif status == 410:
            outcome = "gone"
        else:
            outcome = "retry"
        outbox.finish_delivery(
            conn, job, status_code=status, latency_ms=latency_ms, error=error, outcome=outcome, now=rt.clock()
        )
    WEBHOOK_ATTEMPTS.labels(outcome).inc()
    log.log(
        logging.DEBUG if outcome == "delivered" else logging.INFO,
        "webhook %s",
        outcome,
        extra={"outcome": outcome, "status": status, "event_id": job.event_id, "ms": latency_ms},
    )
    if outcome == "retry":
        raise Transient(error or f"the receiver answered {status}", platform="webhook", status=status)
    return outcome


def publish_failing_gauge(rt: Runtime) -> int:
    """``social_accounts_webhook_endpoints_failing``: 1 per endpoint (by host) failing for
    ``WEBHOOK_FAILING_AFTER_SECONDS``, read at scrape time; returns how many."""
    after = timedelta(seconds=rt.settings.webhook_failing_after_seconds)
    failing = outbox.failing_endpoints(rt.engine, now=rt.clock(), after=after)
    WEBHOOK_ENDPOINTS_FAILING.clear()
    for endpoint in failing:
        WEBHOOK_ENDPOINTS_FAILING.labels(urlsplit(endpoint.url).netloc).set(1)
    return len(failing)


#: the flag that says a ``dispatch_events`` is already on its way (``coordination.claim_flag``)
NUDGE_FLAG = "dispatch-events"
#: how long that flag holds at most: a dispatch lost in a crash costs no more than this (or the sweep)
NUDGE_FLAG_SECONDS = 2.0


def nudge_if_written(rt: Runtime, broker: dramatiq.Broker) -> None:
    """When this thread's work wrote a public event, make sure a ``dispatch_events`` is on its way
    (one serves every event written until it starts); a failure leaves it to the sweep."""
    if not outbox.take_written():
        return
    try:
        if not coordination.for_runtime(rt).claim_flag(NUDGE_FLAG, NUDGE_FLAG_SECONDS):
            return  # a dispatch is already on its way and will read this event too
        broker.enqueue(messages.build_message(messages.DISPATCH_EVENTS))
    except Exception as exc:  # the sweep publishes it all the same
        log.warning("could not nudge the event dispatcher: %s", type(exc).__name__)


class EventNudge(dramatiq.Middleware):
    """After a message whose work wrote a public event, enqueue ``dispatch_events``: the event
    goes out at once instead of at the next sweep. The message runs after the work committed.

    One nudge serves every event written until the dispatch starts: the dispatcher lowers the
    flag before it reads the outbox, so an event committed later raises it again. Without this a
    burst of connects sent one dispatch message each, a third of a connect's worker CPU.
    """

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        outbox.take_written()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        nudge_if_written(runtime.current(), broker)
