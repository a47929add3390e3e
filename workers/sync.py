"""Stats sync: followers, following, posts through a token that is valid now.

A count the platform does not give stays unknown (``None``), never a guessed 0. An access token
the platform calls expired triggers one refresh and one retry; a second refusal takes the
needs-reconnect path, so a dead grant is reported once instead of retried forever.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from models.repository import load_account, record_event
from social_accounts.errors import AccessTokenExpired, NeedsReconnect, NotNow, PlatformError
from social_accounts.metrics import PLATFORM_ERRORS
from social_accounts.values import Stats, TokenSet
from workers import retrying
from workers.adapters import adapter_for
from workers.coordination import for_runtime
from workers.ratelimits import cool_down, wait_before_call
from workers.refresh import INACTIVE, refresh_now
from workers.runtime import Runtime
from workers.status import record_failure, record_success

__all__ = ["SYNC_STEP", "sync_now"]

log = logging.getLogger("social_accounts.sync")

#: fetching counts is a read: safe to repeat whatever happened to the last try
SYNC_STEP = retrying.Step("sync", fail_code="sync_failed")


def sync_now(rt: Runtime, account_id: str) -> str:
    """Sync one account's counts; returns the outcome (synced, skipped, missing, failed).

    Raises:
      NotNow: the platform is cooling down; nothing was sent.
      PlatformError: a retryable error after being recorded (named by its step), for the policy.
    """
    result = refresh_now(rt, account_id, reason="before sync", wait_seconds=15.0)
    if result.outcome in ("missing", "skipped"):
        return result.outcome
    with Session(rt.engine) as session:
        account = load_account(session, rt.ring, account_id)
    if account is None:
        return "missing"
    if account.status in INACTIVE:
        return "skipped"
    coordination = for_runtime(rt)
    wait = wait_before_call(rt, account.platform, account.id)  # a cooldown, or a budget used up
    if wait > 0:
        with retrying.step(SYNC_STEP.name):
            raise NotNow(wait, f"{account.platform} is cooling down or its budget is spent")
    adapter = adapter_for(rt, account.platform)
    try:
        try:
            with retrying.step(SYNC_STEP.name):
                stats = adapter.fetch_stats(account.platform_account_id, account.tokens)
        except AccessTokenExpired:
            stats = _retry_after_refresh(rt, account_id, account.platform_account_id)
    except PlatformError as error:
        PLATFORM_ERRORS.labels(account.platform, error.kind).inc()
        cool_down(coordination, error, platform=account.platform, account_id=account.id)
        if isinstance(error, AccessTokenExpired):  # refused twice: the grant is gone
            error = NeedsReconnect("the platform refused a freshly refreshed token", platform=error.platform)
        _fail(rt, account_id, error)
        if error.retryable:
            raise
        return "failed"
    _store(rt, account_id, stats)
    return "synced"


def _retry_after_refresh(rt: Runtime, account_id: str, platform_account_id: str) -> Stats:
    result = refresh_now(rt, account_id, reason="sync got 401", force=True, wait_seconds=15.0)
    with Session(rt.engine) as session:
        account = load_account(session, rt.ring, account_id)
    if account is None or account.status in INACTIVE or result.outcome == "failed":
        raise NeedsReconnect("the token could not be renewed", platform=account.platform if account else "")
    tokens: TokenSet = account.tokens
    with retrying.step(SYNC_STEP.name):
        return adapter_for(rt, account.platform).fetch_stats(platform_account_id, tokens)


def _store(rt: Runtime, account_id: str, stats: Stats) -> None:
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        account = load_account(session, rt.ring, account_id)
        if account is None:
            return
        row = account.row
        platform = row.platform  # read now: the row expires at commit
        row.followers_count = stats.followers
        row.following_count = stats.following
        row.posts_count = stats.posts
        row.engagement_rate = stats.engagement_rate
        row.last_synced_at = now
        record_success(session, row, reason="stats synced", now=now)
        record_event(
            session,
            kind="synced",
            account_id=row.id,
            site_id=row.site_id,
            platform=row.platform,
            data={"followers": stats.followers, "following": stats.following, "posts": stats.posts},
            now=now,
        )
    log.info("stats synced", extra={"account_id": account_id, "platform": platform, "outcome": "ok"})


def _fail(rt: Runtime, account_id: str, error: PlatformError) -> None:
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        account = load_account(session, rt.ring, account_id)
        if account is not None:
            record_failure(session, account.row, error, settings=rt.settings, step="sync", now=now)
    log.warning("sync failed", extra={"account_id": account_id, "platform": error.platform, "outcome": error.kind})
