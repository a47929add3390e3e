"""Refreshing an account's token: at most one refresh per account, anywhere, ever at once.

Where today's tools lose their users' connections, and what stops it here:

* two workers refresh the same rotating refresh token and the platform revokes the grant:
  a per-account lock with an owner token (``workers.coordination``), and the ``token_version``
  fence on the write, so a refresh that lost a race writes nothing and reloads;
* a refresh nobody needed: under the lock the account is reloaded and a token that is no
  longer due is used as it is, without calling the platform (this is what makes fifty
  concurrent requests cost one call); a forced refresh ("refresh now") is one too when a token was
  issued since it was asked for (``message_requested_at``);
* a token of a few seconds refused or refreshed in a loop: every margin scales with the token's
  lifetime (``workers.lifetimes``);
* a refresh response without a refresh token wipes the stored one: ``TokenSet.merged_with`` in
  the adapters and the repository's never-overwrite-with-empty rule;
* a network blip taken for a dead token: ``workers.status`` only marks ``expired`` on
  ``NeedsReconnect``; transient failures must persist before an account turns ``error``.

The new token set is committed before anything else uses it.

The database work of one refresh: it reads the account with one Core ``SELECT`` under the
lock (plus one before it, to skip what is not due without touching Redis, except for scheduler
messages whose claim already found the account due) and writes once: ``SELECT … FOR UPDATE``
fenced on ``token_version``, one ``UPDATE`` carrying tokens, status, counters and health, and
the events, in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from dramatiq.common import current_millis
from dramatiq.middleware import CurrentMessage
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from models import oneshot, patience
from models.repository import (
    AccountSnapshot,
    fetch_account,
    load_account,
    lock_account_version,
    record_events,
    save_refresh_if_unchanged,
    save_refreshed_tokens,
)
from models.repository import event_values as event
from social_accounts.errors import NotNow, PlatformError
from social_accounts.metrics import PLATFORM_ERRORS, REFRESHES
from social_accounts.values import TokenSet
from workers import retrying
from workers.adapters import adapter_for
from workers.coordination import Coordination, for_runtime
from workers.lifetimes import is_due, issued_since, lead_time, next_refresh_at
from workers.locks import Hold
from workers.ratelimits import cool_down
from workers.runtime import Runtime
from workers.status import record_failure, success_changes

__all__ = ["REFRESH_STEP", "RefreshResult", "is_due", "message_requested_at", "refresh_now"]

log = logging.getLogger("social_accounts.refresh")
T = TypeVar("T")

#: statuses where a refresh is pointless: the user must act (or has left)
INACTIVE = ("expired", "disconnected")


#: a refresh spends the refresh token where the platform rotates it: never repeated once it may
#: have reached the platform (``workers.retrying``)
REFRESH_STEP = retrying.Step("refresh", fail_code="refresh_failed", single_use=True)


@dataclass(frozen=True)
class RefreshResult:
    """``outcome`` is one of refreshed, fresh, busy, nothing_to_do, skipped, missing, failed."""

    outcome: str
    tokens: TokenSet | None = None
    status: str | None = None
    #: set when the outcome was decided from one read (fresh, nothing_to_do): lets the token API
    #: hand the token out without reading the account again
    platform: str | None = None


def _load(rt: Runtime, account_id: str) -> AccountSnapshot | None:
    """One ``SELECT`` in autocommit: no ``BEGIN``/``ROLLBACK`` round trips around a single read."""
    return fetch_account(rt.engine, rt.ring, account_id)


#: how long fresh tokens wait for the database to come back before they are given up
SAVE_PATIENCE_SECONDS = 15.0


def _write_patiently(rt: Runtime, account_id: str, body: Callable[[Connection], T]) -> T:
    """Run ``body`` in one transaction, again on a fresh connection if the connection was lost."""

    def attempt() -> T:
        with oneshot.connect(rt.engine) as conn, conn.begin():  # cannot connect: retried as lost
            return body(conn)

    return _patiently(account_id, attempt)


def _patiently(account_id: str, attempt: Callable[[], T]) -> T:
    """``attempt()`` (a database write), again if the connection was lost or could not be made.

    Once the platform has answered, the old refresh token may be spent (rotation): losing the new
    one to a database restart would disconnect the user. Retried within
    :data:`SAVE_PATIENCE_SECONDS`, well inside the lock's TTL. A commit whose answer was lost is
    safe to retry: the ``token_version`` fence then refuses the second write and the caller
    reloads what the first one stored.
    """
    return patience.retry_while_unreachable(
        attempt,
        patience=SAVE_PATIENCE_SECONDS,
        max_pause=2.0,
        warning="database connection lost while saving refreshed tokens; trying again",
        extra={"account_id": account_id},
    )


def _misplaced(refresh_model: str, tokens: TokenSet, current: datetime | None, margin: timedelta) -> bool:
    """Whether ``current`` (``next_refresh_at``) lies outside the window it would be picked from
    (the lead time, minus at most its jitter), or is set for a token that never needs a refresh."""
    if refresh_model == "none" or tokens.expires_at is None:
        return current is not None
    lead = lead_time(tokens, margin)
    latest = tokens.expires_at - lead
    earliest = latest - timedelta(seconds=min(lead.total_seconds() * 0.1, 300.0)) - timedelta(seconds=1)
    return current is None or not earliest <= current <= latest


def _reschedule(rt: Runtime, account: AccountSnapshot, margin: timedelta) -> None:
    """Put back a refresh time that no longer fits the token (a scheduler lease pushed it, or it is gone).

    Only a time outside the window ``next_refresh_at`` itself would pick is rewritten, and the
    snapshot already read decides whether to look at all: the token API and other not-due calls
    open no transaction and write nothing.
    """
    if not _misplaced(account.refresh_model, account.tokens, account.next_refresh_at, margin):
        return
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        row = load_account(session, rt.ring, account.id)
        if row is None or not _misplaced(row.refresh_model, row.tokens, row.row.next_refresh_at, margin):
            return
        if row.refresh_model == "none" or row.tokens.expires_at is None:
            row.row.next_refresh_at = None
        else:
            row.row.next_refresh_at = next_refresh_at(row.tokens, lead_time(row.tokens, margin), now)


def refresh_now(
    rt: Runtime,
    account_id: str,
    *,
    reason: str = "requested",
    force: bool = False,
    wait_seconds: float = 0.0,
    precheck: bool = True,
    requested_at: datetime | None = None,
) -> RefreshResult:
    """Refresh ``account_id`` if it is due (or ``force``), under its lock.

    Parameters:
      requested_at(datetime): when a forced refresh was asked for (on the runtime's clock). A
        token issued since then already is that refresh: it is used, not renewed again, so a
        burst of "refresh now" requests costs one platform call (:func:`message_requested_at`).
      wait_seconds(float): wait this long for another holder of the lock (the token API does;
        messages do not: the holder is doing the same work).
      precheck(bool): read the account before taking the lock, so a token that is not due costs
        no Redis round trips. The scheduler's messages pass False: its claim picked the account
        because it was due, so that read would only repeat the one made under the lock (which
        decides everything either way).
    Raises:
      NotNow: a rate-limit cooldown is in force; nothing was sent.
      PlatformError: a retryable error (RateLimited, Transient) propagates after being recorded,
        named by :data:`REFRESH_STEP`, so the caller's policy decides; NeedsReconnect and
        Permanent are recorded and end here.
    """
    coordination = for_runtime(rt)
    seen: AccountSnapshot | None = None
    if precheck:
        seen = _load(rt, account_id)
        settled = _settled(rt, seen, force, requested_at)
        if settled is not None:
            return settled
        assert seen is not None
        _check_cooldown(coordination, seen)
    with coordination.account_lock(account_id, wait_seconds=wait_seconds) as hold:
        if not hold:
            return RefreshResult("busy", status=seen.status if seen is not None else None)
        current = _load(rt, account_id)
        if seen is None:  # this read is the first: it decides what the pre-check would have
            settled = _settled(rt, current, force, requested_at)
            if settled is not None:
                return settled
            assert current is not None
            _check_cooldown(coordination, current, hold)
        else:
            if current is None:
                return RefreshResult("missing")
            if current.status in INACTIVE:
                return RefreshResult("skipped", status=current.status)
            moved = current.token_version != seen.token_version
            margin = adapter_for(rt, current.platform).refresh_margin
            forced = force and not issued_since(current.tokens, requested_at)
            if moved or (not forced and not is_due(current.tokens, margin, rt.clock())):
                # someone refreshed while we waited: use their token, do not call the platform
                return RefreshResult("fresh", current.tokens, current.status)
        return _refresh_locked(rt, current, reason=reason)


def message_requested_at(rt: Runtime) -> datetime | None:
    """When the message being processed was first published, on the runtime's clock.

    Dramatiq stamps ``message_timestamp`` (epoch ms) at the first enqueue and keeps it on
    retries; its age is taken from the runtime's clock, so a test's clock and the platform's
    ``issued_at`` stamps stay comparable. None outside a message (the token API, the CLI).
    """
    message = CurrentMessage.get_current_message()
    if message is None:
        return None
    age_ms = max(0, current_millis() - int(message.message_timestamp))
    return rt.clock() - timedelta(milliseconds=age_ms)


def _settled(
    rt: Runtime, account: AccountSnapshot | None, force: bool, requested_at: datetime | None
) -> RefreshResult | None:
    """The outcome when no refresh is needed (missing, inactive, never expires, not due, or
    already refreshed since it was asked for), else None."""
    if account is None:
        return RefreshResult("missing")
    if account.status in INACTIVE:
        return RefreshResult("skipped", status=account.status)
    margin = adapter_for(rt, account.platform).refresh_margin
    if account.refresh_model == "none":
        _reschedule(rt, account, margin)
        return RefreshResult("nothing_to_do", account.tokens, account.status, account.platform)
    forced = force and not issued_since(account.tokens, requested_at)
    if not forced and not is_due(account.tokens, margin, rt.clock()):
        _reschedule(rt, account, margin)
        return RefreshResult("fresh", account.tokens, account.status, account.platform)
    return None


def _check_cooldown(coordination: Coordination, account: AccountSnapshot, hold: Hold | None = None) -> None:
    """``NotNow`` when the platform may not be called for this account yet (read with the
    lock when ``hold`` peeked at this platform's cooldowns, else one more round trip)."""
    wait = hold.waits.get(account.platform) if hold is not None else None
    if wait is None:
        wait = coordination.cooldown_remaining(account.platform, account.id)
    if wait > 0:
        with retrying.step(REFRESH_STEP.name):
            raise NotNow(wait, f"{account.platform} is cooling down for this account")


def _refresh_locked(rt: Runtime, account: AccountSnapshot, *, reason: str) -> RefreshResult:
    adapter = adapter_for(rt, account.platform)
    adapter_margin = adapter.refresh_margin
    try:
        with retrying.step(REFRESH_STEP.name):
            fresh = adapter.refresh(account.tokens)
    except PlatformError as error:
        PLATFORM_ERRORS.labels(account.platform, error.kind).inc()
        REFRESHES.labels(account.platform, error.kind).inc()
        cool_down(for_runtime(rt), error, platform=account.platform, account_id=account.id)
        status = _record_failure(rt, account, error)
        log.warning(
            "refresh failed",
            extra={"account_id": account.id, "platform": account.platform, "outcome": error.kind, "status": status},
        )
        if error.retryable:
            raise
        return RefreshResult("failed", status=status)
    now = rt.clock()
    fresh = fresh.replace(metadata={**fresh.metadata, "issued_at": now.isoformat()})
    lead = lead_time(fresh, adapter_margin)
    refreshed_event = event(
        kind="refreshed",
        account_id=account.id,
        site_id=account.site_id,
        platform=account.platform,
        reason=reason,
        data={"expires_at": fresh.expires_at.isoformat() if fresh.expires_at else None},
        now=now,
    )

    def outcome(row: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Status, health and events of this success, from ``row``'s status and health inputs."""
        return success_changes(
            account_id=account.id,
            site_id=row.site_id,
            platform=row.platform,
            status=row.status,
            token_expires_at=fresh.expires_at,
            last_synced_at=row.last_synced_at,
            last_error_at=row.last_error_at,
            reason="token refreshed",
            now=now,
        )

    def save_unchanged() -> bool:
        # the common case: nobody touched the row since it was read under the refresh lock, so
        # the outcome computed from that read is exact; one fenced statement, no row lock
        values, events = outcome(account)
        return save_refresh_if_unchanged(
            rt.engine,
            rt.ring,
            account,
            tokens=fresh,
            next_refresh_at=next_refresh_at(fresh, lead, now),
            now=now,
            also=values,
            events=[*events, refreshed_event],
        )

    def save(conn: Connection) -> bool:
        # the row lock keeps status and the health inputs still while the outcome is computed;
        # a disconnect in progress (status already ``disconnected``) is not undone by a refresh
        current = lock_account_version(conn, account.id, account.token_version)
        if current is None or current.status == "disconnected":
            return False
        values, events = outcome(current)
        if not save_refreshed_tokens(
            conn,
            rt.ring,
            account.id,
            expected_version=account.token_version,
            tokens=fresh,
            next_refresh_at=next_refresh_at(fresh, lead, now),
            now=now,
            also=values,
        ):
            return False
        record_events(conn, [*events, refreshed_event])
        return True

    saved = _patiently(account.id, save_unchanged)
    if not saved:  # the row moved since the read: lock it, recompute the outcome, or lose the race
        saved = _write_patiently(rt, account.id, save)
    if not saved:  # fenced: another writer got there first; theirs stands
        log.info("refresh lost the race", extra={"account_id": account.id, "platform": account.platform})
        REFRESHES.labels(account.platform, "lost_race").inc()
        reloaded = _load(rt, account.id)
        return RefreshResult("fresh", reloaded.tokens if reloaded else None, reloaded.status if reloaded else None)
    REFRESHES.labels(account.platform, "refreshed").inc()
    log.info("token refreshed", extra={"account_id": account.id, "platform": account.platform, "outcome": "ok"})
    return RefreshResult("refreshed", fresh, "active")


def _record_failure(rt: Runtime, account: AccountSnapshot, error: PlatformError) -> str:
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        row = load_account(session, rt.ring, account.id)
        if row is None:
            return "missing"
        return record_failure(session, row.row, error, settings=rt.settings, step="refresh", now=now)
