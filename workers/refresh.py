"""Refreshing an account's token: at most one refresh per account, anywhere, ever at once.

Where today's tools lose their users' connections, and what stops it here:

* two workers refresh the same rotating refresh token and the platform revokes the grant:
  a per-account lock with an owner token (``workers.coordination``), and the ``token_version``
  fence on the write, so a refresh that lost a race writes nothing and reloads;
* a refresh nobody needed: under the lock the account is reloaded and a token that is no
  longer due is used as it is, without calling the platform (this is what makes fifty
  concurrent requests cost one call);
* a refresh response without a refresh token wipes the stored one: ``TokenSet.merged_with`` in
  the adapters and the repository's never-overwrite-with-empty rule;
* a network blip taken for a dead token: ``workers.status`` only marks ``expired`` on
  ``NeedsReconnect``; transient failures must persist before an account turns ``error``.

The new token set is committed before anything else uses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from models.repository import LoadedAccount, load_account, record_event, save_refreshed_tokens
from platforms.base import TokenSet
from social_accounts.errors import PlatformError, RateLimited
from social_accounts.metrics import PLATFORM_ERRORS, REFRESHES
from workers.adapters import adapter_for
from workers.connect import next_refresh_at
from workers.coordination import for_runtime
from workers.runtime import Runtime
from workers.status import record_failure, record_success

__all__ = ["CooledDown", "RefreshResult", "is_due", "refresh_now"]

log = logging.getLogger("social_accounts.refresh")

#: statuses where a refresh is pointless: the user must act (or has left)
INACTIVE = ("expired", "disconnected")


class CooledDown(Exception):
    """The platform is in a rate-limit cooldown for this account: try again after ``seconds``.

    Raised before any request is made; the actor defers its message without spending a retry.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"cooldown for {seconds:.1f}s")
        self.seconds = seconds


@dataclass(frozen=True)
class RefreshResult:
    """``outcome`` is one of refreshed, fresh, busy, nothing_to_do, skipped, missing, failed."""

    outcome: str
    tokens: TokenSet | None = None
    status: str | None = None


def lead_time(tokens: TokenSet, margin: timedelta) -> timedelta:
    """How long before expiry to refresh: the margin, but at most half the token's lifetime."""
    issued = tokens.metadata.get("issued_at")
    if isinstance(issued, str) and tokens.expires_at is not None:
        try:
            lifetime = tokens.expires_at - datetime.fromisoformat(issued)
        except ValueError:
            return margin
        return min(margin, max(lifetime, timedelta(0)) / 2)
    return margin


def is_due(tokens: TokenSet, margin: timedelta, now: datetime) -> bool:
    """Whether this token set should be refreshed now."""
    if tokens.expires_at is None:
        return False
    return tokens.expires_at - lead_time(tokens, margin) <= now


def _load(rt: Runtime, account_id: str) -> LoadedAccount | None:
    with Session(rt.engine) as session:
        return load_account(session, rt.ring, account_id)


def _reschedule(rt: Runtime, account: LoadedAccount, margin: timedelta) -> None:
    """Put back a refresh time that no longer fits the token (a scheduler lease pushed it, or it is gone).

    Only a time outside the window ``next_refresh_at`` itself would pick (the lead time, minus at
    most its jitter) is rewritten, so the token API and other not-due calls write nothing.
    """
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        row = load_account(session, rt.ring, account.id)
        if row is None:
            return
        current = row.row.next_refresh_at
        if row.refresh_model == "none" or row.tokens.expires_at is None:
            if current is not None:
                row.row.next_refresh_at = None
            return
        lead = lead_time(row.tokens, margin)
        latest = row.tokens.expires_at - lead
        earliest = latest - timedelta(seconds=min(lead.total_seconds() * 0.1, 300.0)) - timedelta(seconds=1)
        if current is None or not earliest <= current <= latest:
            row.row.next_refresh_at = next_refresh_at(row.tokens, lead, now)


def refresh_now(
    rt: Runtime, account_id: str, *, reason: str = "requested", force: bool = False, wait_seconds: float = 0.0
) -> RefreshResult:
    """Refresh ``account_id`` if it is due (or ``force``), under its lock.

    Parameters:
      wait_seconds(float): wait this long for another holder of the lock (the token API does;
        messages do not: the holder is doing the same work).
    Raises:
      CooledDown: a rate-limit cooldown is in force; nothing was sent.
      PlatformError: RateLimited and Transient propagate after being recorded, so the caller
        can retry; NeedsReconnect and Permanent are recorded and end here.
    """
    account = _load(rt, account_id)
    if account is None:
        return RefreshResult("missing")
    if account.status in INACTIVE:
        return RefreshResult("skipped", status=account.status)
    adapter = adapter_for(rt, account.platform)
    margin = adapter.refresh_margin
    if account.refresh_model == "none":
        _reschedule(rt, account, margin)
        return RefreshResult("nothing_to_do", account.tokens, account.status)
    if not force and not is_due(account.tokens, margin, rt.clock()):
        _reschedule(rt, account, margin)
        return RefreshResult("fresh", account.tokens, account.status)
    coordination = for_runtime(rt)
    wait = coordination.cooldown_remaining(account.platform, account.id)
    if wait > 0:
        raise CooledDown(wait)
    with coordination.account_lock(account.id, wait_seconds=wait_seconds) as acquired:
        if not acquired:
            return RefreshResult("busy", status=account.status)
        current = _load(rt, account_id)
        if current is None:
            return RefreshResult("missing")
        if current.status in INACTIVE:
            return RefreshResult("skipped", status=current.status)
        moved = current.token_version != account.token_version
        if moved or (not force and not is_due(current.tokens, margin, rt.clock())):
            # someone refreshed while we waited: use their token, do not call the platform
            return RefreshResult("fresh", current.tokens, current.status)
        return _refresh_locked(rt, current, adapter_margin=margin, reason=reason)


def _refresh_locked(rt: Runtime, account: LoadedAccount, *, adapter_margin: timedelta, reason: str) -> RefreshResult:
    adapter = adapter_for(rt, account.platform)
    try:
        fresh = adapter.refresh(account.tokens)
    except PlatformError as error:
        PLATFORM_ERRORS.labels(account.platform, error.kind).inc()
        REFRESHES.labels(account.platform, error.kind).inc()
        if isinstance(error, RateLimited):
            for_runtime(rt).set_cooldown(
                account.platform,
                error.retry_after,
                account_id=None if error.scope == "app" else account.id,
                reason="rate_limited",
            )
        status = _record_failure(rt, account, error)
        log.warning(
            "refresh failed",
            extra={"account_id": account.id, "platform": account.platform, "outcome": error.kind, "status": status},
        )
        if error.kind in ("rate_limited", "transient", "request_maybe_sent", "access_token_expired"):
            raise
        return RefreshResult("failed", status=status)
    now = rt.clock()
    fresh = fresh.replace(metadata={**fresh.metadata, "issued_at": now.isoformat()})
    with Session(rt.engine) as session, session.begin():
        saved = save_refreshed_tokens(
            session,
            rt.ring,
            account.id,
            expected_version=account.token_version,
            tokens=fresh,
            next_refresh_at=next_refresh_at(fresh, lead_time(fresh, adapter_margin), now),
            now=now,
        )
        if not saved:  # fenced: another writer got there first; theirs stands
            log.info("refresh lost the race", extra={"account_id": account.id, "platform": account.platform})
            REFRESHES.labels(account.platform, "lost_race").inc()
        else:
            row = load_account(session, rt.ring, account.id)
            assert row is not None
            record_success(session, row.row, reason="token refreshed", now=now)
            record_event(
                session,
                kind="refreshed",
                account_id=account.id,
                site_id=account.site_id,
                platform=account.platform,
                reason=reason,
                data={"expires_at": fresh.expires_at.isoformat() if fresh.expires_at else None},
                now=now,
            )
    if not saved:
        reloaded = _load(rt, account.id)
        return RefreshResult("fresh", reloaded.tokens if reloaded else None)
    REFRESHES.labels(account.platform, "refreshed").inc()
    log.info("token refreshed", extra={"account_id": account.id, "platform": account.platform, "outcome": "ok"})
    return RefreshResult("refreshed", fresh, "active")


def _record_failure(rt: Runtime, account: LoadedAccount, error: PlatformError) -> str:
    now = rt.clock()
    with Session(rt.engine) as session, session.begin():
        row = load_account(session, rt.ring, account.id)
        if row is None:
            return "missing"
        return record_failure(session, row.row, error, settings=rt.settings, step="refresh", now=now)
