"""Every actor, declared on the broker ``workers.broker`` installs (``dramatiq workers.actors``).

Actors stay thin: read which message is running, call one plain function of
:mod:`workers.connect`, and turn what nobody foresaw into a bounded, secret-free retry. The
broker module is imported first, before any ``@dramatiq.actor``: otherwise Dramatiq would bind
the actors to an implicit default broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import workers.broker  # noqa: F401  (installs the broker before any actor is declared)

import dramatiq  # isort: skip
from dramatiq.middleware import TimeLimitExceeded  # isort: skip

from workers import connect, messages, retrying, runtime  # isort: skip

__all__ = ["bluesky_login", "code_received", "connect_retry_exhausted"]

log = logging.getLogger(__name__)

#: connect messages are small and interactive: a person is waiting for the attempt to finish
CONNECT_OPTIONS: dict[str, Any] = {
    "queue_name": messages.QUEUE_CONNECT,
    "retry_when": retrying.retry_when,
    "on_retry_exhausted": messages.CONNECT_RETRY_EXHAUSTED,
    "time_limit": 2 * 60 * 1000,
}


@contextmanager
def _bounded(attempt_id: str, step: str) -> Iterator[retrying.Delivery]:
    """Record unforeseen failures in the attempt's history and re-raise them without their text.

    Dramatiq stores the traceback of a failed message in Redis; an exception from a driver or a
    library could quote a value we would rather not keep there, so only its type travels on.
    """
    delivery = retrying.current_delivery()
    try:
        yield delivery
    except dramatiq.Retry:
        raise
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


@dramatiq.actor(actor_name=messages.CODE_RECEIVED, max_age=messages.CODE_MAX_AGE_MS, **CONNECT_OPTIONS)
def code_received(
    attempt_id: str, code_enc: str | None = None, error: str | None = None, error_description: str | None = None
) -> None:
    """An OAuth callback arrived: consume the state, exchange the code, save the accounts."""
    with _bounded(attempt_id, messages.CODE_RECEIVED) as delivery:
        outcome = connect.handle_code_received(
            runtime.current(),
            attempt_id=attempt_id,
            code_enc=code_enc,
            error=error,
            error_description=error_description,
            delivery=delivery,
        )
    log.info("code_received for attempt %s: %s", attempt_id, outcome)


@dramatiq.actor(actor_name=messages.BLUESKY_LOGIN, **CONNECT_OPTIONS)
def bluesky_login(attempt_id: str) -> None:
    """Log in to Bluesky with the attempt's app password and save the account."""
    with _bounded(attempt_id, messages.BLUESKY_LOGIN) as delivery:
        outcome = connect.handle_bluesky_login(runtime.current(), attempt_id=attempt_id, delivery=delivery)
    log.info("bluesky_login for attempt %s: %s", attempt_id, outcome)


@dramatiq.actor(actor_name=messages.CONNECT_RETRY_EXHAUSTED, queue_name=messages.QUEUE_CONNECT, max_retries=3)
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
