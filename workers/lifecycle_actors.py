"""Actors that keep accounts alive: ``refresh_account``, ``sync_account``, ``disconnect_account``.

``refresh_account(account_id, reason="requested")`` and ``sync_account(account_id)`` are the public
messages of the contract; other modules publish them with ``workers.publish`` or, from another
language, in Dramatiq's raw wire format (README). Thin wrappers: the work is in
``workers.refresh``, ``workers.sync`` and ``workers.disconnect``. What a failure does next is
``workers.policy_middleware``'s decision, from the options here: a cooldown puts the message back
without spending a retry, a rate limit waits its Retry-After (giving up beyond a day), a blip backs
off within a small budget, after which the scheduler's lease brings the account back, so a long
outage never turns into a retry storm. A rotating refresh or a revocation that may have reached
the platform is never repeated (``*_uncertain``).
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from sqlalchemy.orm import Session

from models.repository import load_account, record_event
from social_accounts.errors import NotNow, SocialAccountsError
from workers import disconnect, messages, ratelimits, retrying, runtime
from workers.broker import actor_broker
from workers.disconnect import disconnect_now
from workers.refresh import REFRESH_STEP, message_requested_at, refresh_now
from workers.sync import SYNC_STEP, sync_now

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


def _lifecycle_policy() -> retrying.RetryPolicy:
    """Read at decision time, so tests (and operators) can shorten it."""
    return LIFECYCLE_POLICY


def _account_of(message: MessageProxy) -> str | None:
    account_id = (message.kwargs or {}).get("account_id")
    if account_id is None and message.args:
        account_id = message.args[0]
    return account_id if isinstance(account_id, str) else None


def record_lifecycle_decision(message: MessageProxy, decision: retrying.Decision) -> None:
    """Log the decision; an uncertain single-use step also leaves an event on the account, and a
    disconnect that gives up erases the tokens all the same (the account is disconnected already),
    or with ``purge`` the whole account."""
    account_id = _account_of(message)
    extra = {"account_id": account_id, "outcome": decision.code or decision.action}
    if decision.action != "give_up":
        log.info("%s %s in %s ms: %s", decision.step, decision.action, decision.delay_ms, decision.reason, extra=extra)
        return
    log.warning("%s gave up for now: %s", decision.step, decision.reason, extra=extra)
    if account_id is None:
        return
    rt = runtime.current()
    if message.actor_name == messages.DISCONNECT_ACCOUNT:
        outcome = "revoke_uncertain" if decision.uncertain else "revoke_failed"
        disconnect.erase_after_failure(rt, account_id, outcome, purge=(message.kwargs or {}).get("purge") is True)
    elif decision.uncertain:
        _uncertain_event(rt, account_id, decision)


def _uncertain_event(rt: runtime.Runtime, account_id: str, decision: retrying.Decision) -> None:
    assert decision.code is not None
    with Session(rt.engine) as session, session.begin():
        account = load_account(session, rt.ring, account_id)
        if account is None:
            return
        record_event(
            session,
            kind=decision.code,
            account_id=account_id,
            site_id=account.row.site_id,
            platform=account.row.platform,
            reason=f"{decision.step}: {decision.reason}; not repeated (it may have reached the platform)",
            now=rt.clock(),
        )


#: shared by the three actors
LIFECYCLE_OPTIONS: dict[str, Any] = {
    "retry_policy": _lifecycle_policy,
    "on_decision": record_lifecycle_decision,
    "throws": SocialAccountsError,  # expected: logged in one line; the policy decides
}


def _run(step: str, account_id: str, fn: Any) -> None:
    with ratelimits.watching(runtime.current(), account_id):  # proactive rate-limit headers
        outcome = fn()
    log.info("%s done", step, extra={"account_id": account_id, "outcome": outcome})


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.REFRESH_ACCOUNT,
    queue_name=messages.QUEUE_REFRESH,
    time_limit=120_000,
    step=REFRESH_STEP,
    steps=(SYNC_STEP,),
    **LIFECYCLE_OPTIONS,
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
    forced = reason in FORCING_REASONS
    result = refresh_now(
        rt,
        account_id,
        reason=reason,
        force=forced,
        precheck=reason != SCHEDULED_REASON,
        requested_at=message_requested_at(rt) if forced else None,  # a burst of requests: one refresh
    )
    if result.outcome == "busy":
        # another holder has the lock: a live worker doing this very refresh (the re-check then
        # finds the token fresh and calls nobody), or a dead one whose lock has yet to expire;
        # either way this message must not be dropped (workers/refresh.py's lock TTL bounds it)
        raise NotNow(BUSY_RECHECK_SECONDS, "another refresh holds the account's lock")
    if result.outcome in ("fresh", "nothing_to_do") and result.status in UNPROVEN:
        return f"{result.outcome}, verified by sync: {sync_now(rt, account_id)}"
    return result.outcome


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.SYNC_ACCOUNT,
    queue_name=messages.QUEUE_SYNC,
    time_limit=180_000,
    step=SYNC_STEP,
    steps=(REFRESH_STEP,),
    **LIFECYCLE_OPTIONS,
)
def sync_account(account_id: str) -> None:
    """Fetch the account's counts."""
    rt = runtime.current()
    _run("sync", account_id, lambda: sync_now(rt, account_id))


@dramatiq.actor(
    broker=actor_broker(),
    actor_name=messages.DISCONNECT_ACCOUNT,
    queue_name=messages.QUEUE_MAINTENANCE,
    time_limit=120_000,
    step=disconnect.REVOKE_STEP,
    **LIFECYCLE_OPTIONS,
)
def disconnect_account(account_id: str, purge: bool = False) -> None:
    """Revoke (where the platform can) and erase the tokens; the account is disconnected at once.

    ``purge``: then erase the account itself and every trace of it (``DELETE ...?purge=true``).
    """
    rt = runtime.current()
    _run("disconnect", account_id, lambda: disconnect_now(rt, account_id, purge=purge is True))
