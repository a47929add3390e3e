"""Actors that keep accounts alive: ``refresh_account``, ``sync_account``, ``disconnect_account``.

``refresh_account(account_id, reason="requested")`` and ``sync_account(account_id)`` are the public
messages of the contract; other modules publish them with ``workers.publish`` or, from another
language, in Dramatiq's raw wire format (README). Thin wrappers: the work is in
``workers.refresh``, ``workers.sync`` and ``workers.disconnect``; here only the retry decisions:

* a cooldown in force: the same message is put back with a delay, *without* spending a retry;
* RateLimited: retried after the platform's retry-after, not sooner, on its own budget;
* Transient: exponential backoff with jitter within a small budget; after that the scheduler's
  lease brings the account back, so a long outage never turns into a retry storm.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from social_accounts.errors import PlatformError, RateLimited
from workers import messages, ratelimits, retrying, runtime
from workers.broker import actor_broker
from workers.disconnect import disconnect_now
from workers.refresh import CooledDown, refresh_now
from workers.sync import sync_now

__all__ = ["disconnect_account", "refresh_account", "sync_account"]

log = logging.getLogger(__name__)

#: refreshes are not interactive: wait longer between tries, give up sooner (the scheduler returns)
LIFECYCLE_POLICY = retrying.RetryPolicy(
    max_transient=4,
    max_rate_limited=12,
    min_backoff_ms=5_000,
    max_backoff_ms=10 * 60 * 1000,
    max_retry_after_ms=24 * 3600 * 1000,
)
#: the reason ``scheduler.jobs.refresh_ahead`` gives its messages
SCHEDULED_REASON = "scheduled"
#: reasons that refresh even a token that is not due yet (an operator or the site owner asked)
FORCING_REASONS = frozenset({"manual", "force", "operator", "api"})


def _retry_when(retries: int, exception: BaseException) -> bool:
    if isinstance(exception, retrying.RateLimitRetry):
        return retries < LIFECYCLE_POLICY.max_rate_limited
    return retries < LIFECYCLE_POLICY.max_transient


def _defer(seconds: float) -> None:
    """Put the running message back after ``seconds``; its retry count is untouched."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return
    delay = int(seconds * 1000) + random.randint(50, 1000)
    dramatiq.get_broker().enqueue(message.copy(), delay=delay)


def _retry_for(error: PlatformError) -> dramatiq.Retry | None:
    """The retry for a failure the step re-raised, or None when the budget is spent."""
    retries = retrying.current_delivery().retries
    if isinstance(error, RateLimited):
        delay = int(error.retry_after * 1000) + random.randint(100, 2000)
        if retries >= LIFECYCLE_POLICY.max_rate_limited or delay > LIFECYCLE_POLICY.max_retry_after_ms:
            return None
        return retrying.RateLimitRetry(message="rate limited", delay=delay)
    if retries >= LIFECYCLE_POLICY.max_transient:
        return None
    return dramatiq.Retry(message=error.kind, delay=retrying.backoff_ms(retries, LIFECYCLE_POLICY))


def _run(step: str, account_id: str, fn: Any) -> None:
    try:
        with ratelimits.watching(runtime.current(), account_id):  # proactive rate-limit headers
            outcome = fn()
    except CooledDown as cooled:
        log.info("%s deferred by a cooldown", step, extra={"account_id": account_id, "outcome": "deferred"})
        _defer(cooled.seconds)
        return
    except PlatformError as error:
        retry = _retry_for(error)
        if retry is None:
            log.warning("%s gave up for now", step, extra={"account_id": account_id, "outcome": error.kind})
            return
        raise retry from None
    log.info("%s done", step, extra={"account_id": account_id, "outcome": outcome})


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.REFRESH_ACCOUNT,
    queue_name=messages.QUEUE_REFRESH,
    retry_when=_retry_when,
    time_limit=120_000,
)
def refresh_account(account_id: str, reason: str = "requested") -> None:
    """Make sure the account's token is fresh (refreshing it only when it is due, or when forced)."""
    rt = runtime.current()
    _run("refresh", account_id, lambda: _refresh_and_verify(rt, account_id, reason))


#: how long a refresh that found the account's lock taken waits before looking again
BUSY_RECHECK_SECONDS = 5.0
#: statuses a refresh that did not need the platform cannot clear by itself
UNPROVEN = ("error", "rate_limited")


def _refresh_and_verify(rt: runtime.Runtime, account_id: str, reason: str) -> str:
    """Refresh; an account left in ``error``/``rate_limited`` with a token that needed no refresh
    is verified with one stats sync, so it does not stay marked failing until its token is due."""
    # the scheduler's claim already found the account due: no look before the lock
    result = refresh_now(
        rt, account_id, reason=reason, force=reason in FORCING_REASONS, precheck=reason != SCHEDULED_REASON
    )
    if result.outcome == "busy":
        # another holder has the lock: a live worker doing this very refresh (the re-check then
        # finds the token fresh and calls nobody), or a dead one whose lock has yet to expire;
        # either way this message must not be dropped (workers/refresh.py's lock TTL bounds it)
        raise CooledDown(BUSY_RECHECK_SECONDS)
    if result.outcome in ("fresh", "nothing_to_do") and result.status in UNPROVEN:
        return f"{result.outcome}, verified by sync: {sync_now(rt, account_id)}"
    return result.outcome


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.SYNC_ACCOUNT,
    queue_name=messages.QUEUE_SYNC,
    retry_when=_retry_when,
    time_limit=180_000,
)
def sync_account(account_id: str) -> None:
    """Fetch the account's counts."""
    rt = runtime.current()
    _run("sync", account_id, lambda: sync_now(rt, account_id))


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.DISCONNECT_ACCOUNT,
    queue_name=messages.QUEUE_MAINTENANCE,
    retry_when=_retry_when,
    time_limit=120_000,
)
def disconnect_account(account_id: str) -> None:
    """Revoke (where the platform can) and erase the tokens; the account is disconnected at once."""
    rt = runtime.current()
    last = retrying.current_delivery().retries >= LIFECYCLE_POLICY.max_transient
    _run("disconnect", account_id, lambda: disconnect_now(rt, account_id, last_try=last))
