"""What an outcome does to an account: status, counters, health and the events that say so.

One policy for refresh, sync and disconnect alike (the error tree drives it):

* success            -> ``active``; failure counters cleared
* NeedsReconnect     -> ``expired``, health 0, no more retries, ``refresh_failed`` with the reason
* RateLimited        -> ``rate_limited`` until the platform's retry-after
* Transient          -> counted; the account turns ``error`` only when failures persist
                        (``ERROR_AFTER_FAILURES`` in a row spanning ``ERROR_AFTER_SECONDS``): a network
                        blip never tells a site owner to reconnect
* Permanent          -> ``error`` at once (retrying would not help; the user sees the reason)

Every status change writes a ``status_changed`` event. Functions take the caller's session and
do not commit, so the outcome is stored in the same transaction as whatever caused it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from models.repository import event_values, record_event
from models.tables import SocialAccount
from social_accounts.errors import NeedsReconnect, PlatformError, RateLimited, Transient
from social_accounts.health import Health, compute_health
from social_accounts.settings import Settings

__all__ = ["record_failure", "record_success", "set_status", "success_changes"]


def set_status(
    session: Session,
    row: SocialAccount,
    status: str,
    *,
    reason: str,
    now: datetime,
    error_code: str | None = None,
) -> None:
    """Change the status (with an event when it really changes) and recompute the health score.

    The ``status_changed`` event is also the public event (``models.outbox``): it carries the
    new health and the error code, never more.
    """
    previous = row.status
    row.status = status
    health = refresh_health(row, now)
    row.updated_at = now
    if previous != status:
        data: dict[str, Any] = {"from": previous, "to": status, "health_score": health.score}
        data["health_reason"] = health.reason
        if error_code:
            data["error_code"] = error_code
        record_event(
            session,
            kind="status_changed",
            account_id=row.id,
            site_id=row.site_id,
            platform=row.platform,
            reason=reason,
            data=data,
            now=now,
        )


def refresh_health(row: SocialAccount, now: datetime) -> Health:
    health = compute_health(
        status=row.status,
        token_expires_at=row.token_expires_at,
        last_synced_at=row.last_synced_at,
        last_error_at=row.last_error_at,
        now=now,
    )
    row.health_score = health.score
    return health


#: what a success clears, whichever way it is written
SUCCESS_CLEARS: dict[str, Any] = {"consecutive_failures": 0, "first_failure_at": None, "rate_limited_until": None}


def record_success(session: Session, row: SocialAccount, *, reason: str, now: datetime) -> None:
    for name, value in SUCCESS_CLEARS.items():
        setattr(row, name, value)
    set_status(session, row, "active", reason=reason, now=now)


def success_changes(
    *,
    account_id: str,
    site_id: str,
    platform: str,
    status: str,
    token_expires_at: datetime | None,
    last_synced_at: datetime | None,
    last_error_at: datetime | None,
    reason: str,
    now: datetime,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``record_success`` for a Core write: the column values and the events, nothing executed.

    ``status``, ``last_synced_at`` and ``last_error_at`` are the row's current values (read under
    a row lock), ``token_expires_at`` the new one; the caller folds the values into its single
    ``UPDATE`` and writes the events in the same transaction. Same policy, same events.
    """
    health = compute_health(
        status="active",
        token_expires_at=token_expires_at,
        last_synced_at=last_synced_at,
        last_error_at=last_error_at,
        now=now,
    )
    values = {**SUCCESS_CLEARS, "status": "active", "health_score": health.score, "updated_at": now}
    events = []
    if status != "active":
        events.append(
            event_values(
                kind="status_changed",
                account_id=account_id,
                site_id=site_id,
                platform=platform,
                reason=reason,
                data={"from": status, "to": "active", "health_score": health.score, "health_reason": health.reason},
                now=now,
            )
        )
    return values, events


def record_failure(
    session: Session, row: SocialAccount, error: PlatformError, *, settings: Settings, step: str, now: datetime
) -> str:
    """Apply ``error`` to the account; returns the new status."""
    reason = f"{step}: {error}"[:500]
    row.last_error = reason
    row.last_error_at = now
    if isinstance(error, NeedsReconnect):
        row.next_refresh_at = None
        record_event(
            session,
            kind="refresh_failed" if step == "refresh" else f"{step}_failed",
            account_id=row.id,
            site_id=row.site_id,
            platform=row.platform,
            reason=reason,
            data={"error": error.kind, "code": error.code},
            now=now,
        )
        set_status(session, row, "expired", reason=reason, now=now, error_code=_code(error))
        row.health_score = 0
        return row.status
    if isinstance(error, RateLimited):
        row.rate_limited_until = now + timedelta(seconds=error.retry_after)
        set_status(session, row, "rate_limited", reason=reason, now=now, error_code=_code(error))
        return row.status
    row.consecutive_failures = (row.consecutive_failures or 0) + 1
    row.first_failure_at = row.first_failure_at or now
    persistent = row.consecutive_failures >= settings.error_after_failures and (
        now - row.first_failure_at >= timedelta(seconds=settings.error_after_seconds)
    )
    if not isinstance(error, Transient) or persistent:
        set_status(session, row, "error", reason=reason, now=now, error_code=_code(error))
    else:
        refresh_health(row, now)
        row.updated_at = now
    return row.status


def _code(error: PlatformError) -> str:
    """The error code of a public event: the platform's own code, else the error's class."""
    return str(error.code)[:64] if error.code else error.kind
