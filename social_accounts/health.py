"""The health score: one number and a sentence, from the account's own facts.

An account that needs reconnecting (``expired``) or is disconnected scores 0. Otherwise, from
100: an access token past its expiry -50, last sync older than 24 h -10, an error in the last 24 h -20,
rate limited -30, never below 0. Recomputed on every outcome and set-wise by the scheduler, so the
dashboard's green/yellow/red always matches what the account is going through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Health", "compute_health", "health_colour"]

DAY = timedelta(hours=24)


@dataclass(frozen=True)
class Health:
    score: int
    reason: str


def compute_health(
    *,
    status: str,
    token_expires_at: datetime | None,
    last_synced_at: datetime | None,
    last_error_at: datetime | None,
    now: datetime,
) -> Health:
    """Score and reason in words for one account."""
    if status == "disconnected":
        return Health(0, "Disconnected.")
    if status == "expired":
        return Health(0, "The platform no longer accepts this connection: reconnect the account.")
    score = 100
    reasons: list[str] = []
    if token_expires_at is not None and token_expires_at <= now:
        score -= 50
        reasons.append("its access token has expired and has not been renewed yet")
    if status == "rate_limited":
        score -= 30
        reasons.append("the platform is rate limiting us; we wait and try again")
    if last_error_at is not None and now - last_error_at < DAY:
        score -= 20
        reasons.append("an error occurred in the last 24 hours")
    if last_synced_at is None or now - last_synced_at > DAY:
        score -= 10
        reasons.append("stats have not been synced in the last 24 hours")
    if not reasons:
        return Health(100, "Healthy.")
    text = "; ".join(reasons)
    return Health(max(0, score), text[0].upper() + text[1:] + ".")


def health_colour(score: int) -> str:
    """green (80+), yellow (50-79), red (below 50) for the accounts page."""
    if score >= 80:
        return "green"
    return "yellow" if score >= 50 else "red"
