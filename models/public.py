"""The outward JSON shape of an account, and its health explained in words.

The HTTP API (README, "HTTP API"): accounts in JSON carry the column names of ``social_accounts`` — never
``access_token``, ``refresh_token`` or ``token_metadata`` — plus ``health_reason``. Building the
dict from an explicit allow-list (rather than dumping the row and deleting secrets) means a
column added later stays private until someone decides it is public.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from models.tables import SocialAccount

__all__ = ["PUBLIC_COLUMNS", "account_public_dict", "health_reason"]

PUBLIC_COLUMNS = (
    "id",
    "site_id",
    "platform",
    "platform_account_id",
    "account_name",
    "account_handle",
    "account_avatar",
    "token_expires_at",
    "refresh_token_expires_at",
    "scopes",
    "followers_count",
    "following_count",
    "posts_count",
    "engagement_rate",
    "status",
    "health_score",
    "last_synced_at",
    "last_error",
    "last_error_at",
    "created_at",
    "updated_at",
)


def _when(value: datetime | None) -> str:
    return value.isoformat() if value else "later"


def health_reason(row: SocialAccount) -> str:
    """One sentence saying why the account has its status (from stored fields only, no I/O)."""
    problem = f": {row.last_error}" if row.last_error else ""
    if row.status == "disconnected":
        return "Disconnected; connect the account again to use it."
    if row.status == "expired":
        return f"Access was revoked or has expired; the user must reconnect the account{problem}."
    if row.status == "rate_limited":
        return f"The platform is rate limiting requests; retrying after {_when(row.rate_limited_until)}."
    if row.status == "error":
        failures = row.consecutive_failures
        return f"Temporary problem, {failures} failed attempt{'s' if failures != 1 else ''} in a row{problem}."
    if row.last_error:
        return f"Connected; the last problem was{problem}."
    return "Connected and working."


def account_public_dict(row: SocialAccount) -> dict[str, Any]:
    """The account as JSON-ready values: contract columns only, times as ISO 8601, plus ``health_reason``."""
    out: dict[str, Any] = {}
    for name in PUBLIC_COLUMNS:
        value = getattr(row, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif name == "scopes":
            value = list(value or [])
        out[name] = value
    out["health_reason"] = health_reason(row)
    return out
