"""The two actors of events out, on queue ``webhooks``: ``dispatch_events`` and ``deliver_webhook``.

Thin wrappers over ``workers.events``. The delivery's backoff is the one retry policy
(``workers.policy_middleware``) with ``WEBHOOK_POLICY``; its decision hook keeps the delivery
row in step: when its next try is due (so the sweep can tell a lost message from a waiting one),
and ``failed`` once the retries are spent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import dramatiq
from dramatiq.broker import MessageProxy

from models import outbox
from social_accounts.errors import SocialAccountsError
from workers import coordination, events, messages, retrying, runtime
from workers.broker import actor_broker

__all__ = ["deliver_webhook", "dispatch_events", "record_delivery_decision"]

log = logging.getLogger(__name__)


def _policy() -> retrying.RetryPolicy:
    """Read at decision time, so tests can shorten it."""
    return events.WEBHOOK_POLICY


def record_delivery_decision(message: MessageProxy, decision: retrying.Decision) -> None:
    delivery_id = (message.kwargs or {}).get("delivery_id")
    if not isinstance(delivery_id, str):
        return
    rt = runtime.current()
    if decision.action == "give_up":
        log.warning("webhook delivery gave up: %s", decision.reason, extra={"outcome": "failed"})
        outbox.mark_failed(rt.engine, delivery_id, now=rt.clock())
    else:
        due = rt.clock() + timedelta(milliseconds=decision.delay_ms or 0)
        outbox.set_next_attempt(rt.engine, delivery_id, at=due)


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.DISPATCH_EVENTS,
    queue_name=messages.QUEUE_WEBHOOKS,
    time_limit=120_000,
)
def dispatch_events() -> None:
    """Publish what the outbox holds (cursor, deliveries, broker events)."""
    rt = runtime.current()
    coordination.for_runtime(rt).clear_flag(events.NUDGE_FLAG)  # before the read: later events nudge again
    events.dispatch(
        rt.engine,
        dramatiq.get_broker(),
        urls=rt.settings.webhook_url_list,
        clock=rt.clock,
        on_broker=rt.settings.events_on_broker,
    )


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.DELIVER_WEBHOOK,
    queue_name=messages.QUEUE_WEBHOOKS,
    time_limit=60_000,
    retry_policy=_policy,
    step=events.DELIVER_STEP,
    on_decision=record_delivery_decision,
    throws=SocialAccountsError,
)
def deliver_webhook(delivery_id: str) -> None:
    """One try at sending one event to one endpoint."""
    rt = runtime.current()
    events.deliver(rt, rt.http, delivery_id)
