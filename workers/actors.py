"""Every actor, declared on ``workers.broker.actor_broker()`` (the installed broker, or the holder
it moves from when an entry point installs one), never on Dramatiq's implicit default.

Actors stay thin: read which message is running, call one plain function of
:mod:`workers.connect`, and turn what nobody foresaw into a bounded, secret-free retry.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from workers import connect, messages, ratelimits, retrying, runtime
from workers.broker import actor_broker

__all__ = ["bluesky_login", "code_received", "connect_retry_exhausted"]

log = logging.getLogger(__name__)

#: connect messages are small and interactive: a person is waiting for the attempt to finish
CONNECT_OPTIONS: dict[str, Any] = {
    "queue_name": messages.QUEUE_CONNECT,
    "retry_when": retrying.retry_when,
    "on_retry_exhausted": messages.CONNECT_RETRY_EXHAUSTED,
    "time_limit": 2 * 60 * 1000,
}


def _defer(attempt_id: str, step: str, deferred: retrying.Deferred, max_age_ms: int | None) -> None:
    """Put the running message back after a cooldown or budget wait, without spending a retry.

    The copy keeps its message id (so it may resume the consumed state) and its timestamp, so
    Dramatiq's age limit still applies: a pause that would outlast ``max_age_ms`` fails the
    attempt now instead of leaving it pending until the message is silently dropped.
    """
    rt = runtime.current()
    message = CurrentMessage.get_current_message()
    delay = int(deferred.seconds * 1000) + random.randint(50, 1000)
    if message is None:  # called outside a worker: nothing to put back
        return
    age_ms = int(time.time() * 1000) - int(message.message_timestamp)
    if max_age_ms is not None and age_ms + delay >= max_age_ms:
        connect.fail_deferred(rt, attempt_id, step=step, reason=deferred.reason)
        return
    connect.note_deferral(rt, attempt_id, step=step, reason=deferred.reason, delay_ms=delay)
    dramatiq.get_broker().enqueue(message.copy(), delay=delay)
    log.info("%s for attempt %s deferred %d ms: %s", step, attempt_id, delay, deferred.reason)


@contextmanager
def _bounded(attempt_id: str, step: str, max_age_ms: int | None = None) -> Iterator[retrying.Delivery]:
    """Record unforeseen failures in the attempt's history and re-raise them without their text.

    Dramatiq stores the traceback of a failed message in Redis; an exception from a driver or a
    library could quote a value we would rather not keep there, so only its type travels on.
    Successful platform answers are watched for proactive rate-limit signals meanwhile, and a
    step that must wait for a cooldown or a budget (``Deferred``) puts its message back.
    """
    delivery = retrying.current_delivery()
    try:
        with ratelimits.watching(runtime.current(), None):
            yield delivery
    except dramatiq.Retry:
        raise
    except retrying.Deferred as deferred:
        _defer(attempt_id, step, deferred, max_age_ms)
    except Exception as exc:
        kind = "timeout" if isinstance(exc, TimeLimitExceeded) else type(exc).__name__
        log.warning("%s for attempt %s failed unexpectedly: %s", step, attempt_id, kind)
        rt = runtime.current()
        delay = retrying.backoff_ms(delivery.retries, rt.retry_policy)
        try:
            connect.note_retry(rt, attempt_id, step=step, reason=kind, delay_ms=delay, retry=delivery.retries + 1)
        except Exception:  # the database may be what failed; the retry still happens
            log.warning("could not record the retry of attempt %s", attempt_id)
        raise dramatiq.Retry(message=f"{step} failed: {kind}", delay=delay) from None


@dramatiq.actor(
    broker=actor_broker(), actor_name=messages.CODE_RECEIVED, max_age=messages.CODE_MAX_AGE_MS, **CONNECT_OPTIONS
)
def code_received(
    attempt_id: str, code_enc: str | None = None, error: str | None = None, error_description: str | None = None
) -> None:
    """An OAuth callback arrived: consume the state, exchange the code, save the accounts."""
    outcome = "deferred"  # stays so when the step waits for a cooldown or a budget
    with _bounded(attempt_id, messages.CODE_RECEIVED, messages.CODE_MAX_AGE_MS) as delivery:
        outcome = connect.handle_code_received(
            runtime.current(),
            attempt_id=attempt_id,
            code_enc=code_enc,
            error=error,
            error_description=error_description,
            delivery=delivery,
        )
    log.info("code_received for attempt %s: %s", attempt_id, outcome)


@dramatiq.actor(broker=actor_broker(), actor_name=messages.BLUESKY_LOGIN, **CONNECT_OPTIONS)
def bluesky_login(attempt_id: str) -> None:
    """Log in to Bluesky with the attempt's app password and save the account."""
    outcome = "deferred"  # stays so when the step waits for a cooldown or a budget
    with _bounded(attempt_id, messages.BLUESKY_LOGIN) as delivery:
        outcome = connect.handle_bluesky_login(runtime.current(), attempt_id=attempt_id, delivery=delivery)
    log.info("bluesky_login for attempt %s: %s", attempt_id, outcome)


@dramatiq.actor(
    broker=actor_broker(), actor_name=messages.CONNECT_RETRY_EXHAUSTED, queue_name=messages.QUEUE_CONNECT, max_retries=3
)
def connect_retry_exhausted(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
    """Dramatiq gave up on a connect message: the attempt must not stay pending forever."""
    kwargs = message_data.get("kwargs") or {}
    attempt_id = kwargs.get("attempt_id")
    if not isinstance(attempt_id, str):
        return
    reason = str(message_data.get("options", {}).get("traceback", "")).strip().rsplit("\n", 1)[-1]
    connect.fail_exhausted(runtime.current(), attempt_id, str(message_data.get("actor_name")), reason[:200])


ACTORS: tuple[Callable[..., Any], ...] = (code_received, bluesky_login, connect_retry_exhausted)
import workers.lifecycle_actors  # noqa: E402,F401  (declares refresh_account, sync_account, disconnect_account)
