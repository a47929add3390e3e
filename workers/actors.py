"""Every actor, declared on ``workers.broker.actor_broker()`` (the installed broker, or the holder
it moves from when an entry point installs one), never on Dramatiq's implicit default.

Actors stay thin: read which message is running and call one plain function of
:mod:`workers.connect`. Whether a failure is retried, deferred or ends the attempt is decided by
``workers.policy_middleware`` from the options below; :func:`record_connect_decision` writes
that outcome into the attempt's history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from social_accounts.errors import SocialAccountsError
from workers import connect, messages, ratelimits, retrying, runtime
from workers.broker import actor_broker

__all__ = ["bluesky_login", "code_received", "record_connect_decision"]

log = logging.getLogger(__name__)


def _connect_policy() -> retrying.RetryPolicy:
    """The runtime's connect budgets, read at decision time (tests shorten the delays)."""
    return runtime.current().retry_policy


def record_connect_decision(message: MessageProxy, decision: retrying.Decision) -> None:
    """Write the policy's decision into the attempt: a retry or a deferral in its history, or its end.

    An unforeseen failure that ran out of retries ends with the code of the stage it stopped in
    (``connect.fail_exhausted``); every other end with the code the policy chose.
    """
    attempt_id = (message.kwargs or {}).get("attempt_id")
    if not isinstance(attempt_id, str):
        return
    rt = runtime.current()
    if decision.action == "retry":
        if decision.unforeseen:
            log.warning("%s for attempt %s failed unexpectedly: %s", decision.step, attempt_id, decision.reason)
        connect.note_retry(
            rt,
            attempt_id,
            step=decision.step,
            reason=decision.reason,
            delay_ms=decision.delay_ms,
            retry=decision.retries + 1,
        )
    elif decision.action == "defer":
        assert decision.delay_ms is not None
        connect.note_deferral(rt, attempt_id, step=decision.step, reason=decision.reason, delay_ms=decision.delay_ms)
        log.info("%s for attempt %s deferred %d ms: %s", decision.step, attempt_id, decision.delay_ms, decision.reason)
    elif decision.unforeseen:
        connect.fail_exhausted(rt, attempt_id, message.actor_name, decision.reason)
    else:
        assert decision.code is not None
        connect.fail_attempt(rt, attempt_id, decision.code, f"{decision.step}: {decision.reason}")


#: connect messages are small and interactive: a person is waiting for the attempt to finish
CONNECT_OPTIONS: dict[str, Any] = {
    "queue_name": messages.QUEUE_CONNECT,
    "retry_policy": _connect_policy,
    "on_decision": record_connect_decision,
    "throws": SocialAccountsError,  # expected: logged in one line; the policy decides
    "time_limit": 2 * 60 * 1000,
}


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.CODE_RECEIVED,
    max_age=messages.CODE_MAX_AGE_MS,
    step=retrying.Step(messages.CODE_RECEIVED, fail_code="token_exchange_failed"),
    steps=(connect.EXCHANGE, connect.FETCH_ACCOUNTS),
    **CONNECT_OPTIONS,
)
def code_received(
    attempt_id: str, code_enc: str | None = None, error: str | None = None, error_description: str | None = None
) -> None:
    """An OAuth callback arrived: consume the state, exchange the code, save the accounts."""
    with ratelimits.watching(runtime.current(), None):  # proactive rate-limit headers
        outcome = connect.handle_code_received(
            runtime.current(),
            attempt_id=attempt_id,
            code_enc=code_enc,
            error=error,
            error_description=error_description,
            delivery=retrying.current_delivery(),
        )
    log.info("code_received for attempt %s: %s", attempt_id, outcome)


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.BLUESKY_LOGIN,
    step=retrying.Step(messages.BLUESKY_LOGIN, fail_code="login_failed"),
    steps=(connect.LOGIN, connect.FETCH_ACCOUNTS),
    **CONNECT_OPTIONS,
)
def bluesky_login(attempt_id: str) -> None:
    """Log in to Bluesky with the attempt's app password and save the account."""
    with ratelimits.watching(runtime.current(), None):
        outcome = connect.handle_bluesky_login(
            runtime.current(), attempt_id=attempt_id, delivery=retrying.current_delivery()
        )
    log.info("bluesky_login for attempt %s: %s", attempt_id, outcome)


ACTORS: tuple[Callable[..., Any], ...] = (code_received, bluesky_login)
import workers.lifecycle_actors  # noqa: E402,F401  (declares refresh_account, sync_account, disconnect_account)
import workers.webhook_actors  # noqa: E402,F401  (declares dispatch_events, deliver_webhook)
