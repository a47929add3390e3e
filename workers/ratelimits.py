"""Proactive rate limits: hear a platform's "slow down" before it says 429, and keep budgets.

Three pieces, all on the shared cooldowns of :mod:`workers.coordination`:

* :func:`sink_for` is the ``rate_signals`` sink every worker adapter gets (``workers.adapters``):
  a :class:`~platforms.base.RateHint` becomes a cooldown per app (Meta usage near its limit) or
  per account (X, Bluesky, Mastodon ``remaining: 0``), so every worker stops calling until the
  platform's reset time instead of each discovering the 429 on its own;
* :func:`watching` installs, for the duration of one message, the observer that hands each
  successful response to its platform's ``rate_hint`` (``platforms.http.observe_success``);
* :func:`wait_before_call` is what a step asks right before calling out: seconds of cooldown
  still in force, or of a published budget used up (Mastodon 300 calls per 5 minutes per
  account). Zero means go; anything else means defer the message without spending a retry.
  :func:`login_budget_wait` is the Bluesky ``createSession`` budget (30 per 5 minutes per
  identifier), taken only by the connect path's login.

And the reactive half: :func:`cool_down` turns a ``RateLimited`` answer into the same cooldowns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from platforms.base import PlatformAdapter, RateSignalSink
from platforms.http import observe_success
from social_accounts.errors import PlatformError, RateLimited
from workers.coordination import Coordination, for_runtime
from workers.runtime import Runtime

__all__ = [
    "BLUESKY_LOGIN_BUDGET",
    "CALL_BUDGETS",
    "Budget",
    "cool_down",
    "login_budget_wait",
    "sink_for",
    "wait_before_call",
    "watching",
]

log = logging.getLogger("social_accounts.ratelimits")

#: ``(limit, window seconds)``
Budget = tuple[int, float]
#: per account, per call step (a sync or a revocation is one step, usually one call)
CALL_BUDGETS: dict[str, Budget] = {"mastodon": (300, 300.0)}
#: Bluesky ``com.atproto.server.createSession``: 30 per 5 minutes per identifier (and 300 a day)
BLUESKY_LOGIN_BUDGET: Budget = (30, 300.0)


def sink_for(rt: Runtime) -> RateSignalSink:
    """A ``rate_signals`` sink that turns hints into shared cooldowns."""

    def sink(platform: str, seconds: float, scope: str, account: str | None) -> None:
        if scope != "app" and not account:
            return  # an account's limit with no account known (a connect): never widen it to the app
        for_runtime(rt).set_cooldown(
            platform, seconds, account_id=None if scope == "app" else account, reason="near_limit"
        )
        log.info(
            "platform near its rate limit: pausing",
            extra={"platform": platform, "scope": scope, "account_id": account, "seconds": round(seconds, 1)},
        )

    return sink


def cool_down(coordination: Coordination, error: PlatformError | None, *, platform: str, account_id: str) -> None:
    """A ``RateLimited`` answer becomes the shared cooldown every worker honours: the whole app's
    when the platform limits the app, else this account's. Any other error changes nothing."""
    if isinstance(error, RateLimited):
        scope = None if error.scope == "app" else account_id
        coordination.set_cooldown(platform, error.retry_after, account_id=scope, reason="rate_limited")


@contextmanager
def watching(rt: Runtime, account_id: str | None) -> Iterator[None]:
    """Within the block, successful platform answers are read for rate hints about ``account_id``.

    The observer learns the platform from each response, so one message may call several
    (it never does today, but a sync that refreshes first calls the same platform twice).
    """
    from workers.adapters import adapter_for

    adapters: dict[str, PlatformAdapter] = {}

    def observe(platform: str, response: httpx.Response) -> None:
        adapter = adapters.get(platform)
        if adapter is None:
            adapter = adapters[platform] = adapter_for(rt, platform)
        adapter.report_rate_hint(response, account_id)

    with observe_success(observe):
        yield


def wait_before_call(rt: Runtime, platform: str, account_id: str | None, *, spend: bool = True) -> float:
    """Seconds to wait before calling ``platform`` for ``account_id`` (0: go, and a budget slot is spent)."""
    coordination = for_runtime(rt)
    wait = coordination.cooldown_remaining(platform, account_id)
    if wait > 0 or not spend or account_id is None:
        return wait
    budget = CALL_BUDGETS.get(platform)
    if budget is None:
        return 0.0
    return _take(coordination, f"{platform}:account:{account_id}", budget)


def login_budget_wait(rt: Runtime, identifier: str) -> float:
    """Spend one Bluesky createSession for ``identifier``; seconds to wait when the budget is used up."""
    coordination = for_runtime(rt)
    wait = coordination.cooldown_remaining("bluesky", None)
    if wait > 0:
        return wait
    return _take(coordination, f"bluesky:create_session:{identifier.strip().lower()}", BLUESKY_LOGIN_BUDGET)


def _take(coordination: Coordination, name: str, budget: Budget) -> float:
    limit, window = budget
    return coordination.take_budget(name, limit=limit, window_seconds=window)
