"""How far ahead of a token's expiry to act, scaled to the token's own lifetime.

A fixed margin breaks short tokens: a 10-minute refresh-ahead makes a 5-second token due the
moment it is issued, and a fixed 30-second "still valid for" refuses every 5-second token, even
one refreshed a moment ago. So every margin here is capped by the token's lifetime
(``expires_at`` minus the ``issued_at`` that the connect and every refresh stamp):

* refresh ahead (:func:`lead_time`): the platform's margin, at most half the lifetime;
* still valid for (:func:`still_valid_for`): 30 s, at most half the lead (so at most a quarter
  of the lifetime). Below the lead, so a token that is not due is always handed out, and a due
  one whose refresh failed still is while it has that much left.

Pure functions of the tokens and an injected ``now``; docs/design.md "Refresh decisions".
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from social_accounts.values import TokenSet

__all__ = [
    "STILL_VALID_FOR",
    "handed_out",
    "is_due",
    "issued_since",
    "lead_time",
    "lifetime",
    "next_refresh_at",
    "still_valid_for",
]

#: the most a token must still have left to be handed out (a caller needs time to use it)
STILL_VALID_FOR = timedelta(seconds=30)


def issued_at(tokens: TokenSet) -> datetime | None:
    """When this token set was issued (stamped by the connect and every refresh), if known."""
    return tokens.issued_at


def lifetime(tokens: TokenSet) -> timedelta | None:
    """The token's whole lifetime (``expires_at - issued_at``); None when either is unknown."""
    issued = issued_at(tokens)
    if issued is None or tokens.expires_at is None:
        return None
    return max(tokens.expires_at - issued, timedelta(0))


def lead_time(tokens: TokenSet, margin: timedelta) -> timedelta:
    """How long before expiry to refresh: ``margin``, but at most half the token's lifetime."""
    whole = lifetime(tokens)
    return margin if whole is None else min(margin, whole / 2)


def is_due(tokens: TokenSet, margin: timedelta, now: datetime) -> bool:
    """Whether this token set should be refreshed at ``now`` (never, when it does not expire)."""
    if tokens.expires_at is None:
        return False
    return tokens.expires_at - lead_time(tokens, margin) <= now


def still_valid_for(tokens: TokenSet, margin: timedelta) -> timedelta:
    """How long a token must still be valid to be handed out: 30 s, at most half the lead."""
    return min(STILL_VALID_FOR, lead_time(tokens, margin) / 2)


def handed_out(tokens: TokenSet, margin: timedelta, now: datetime) -> bool:
    """Whether the token may be given to a caller at ``now`` (a token that never expires may)."""
    if tokens.expires_at is None:
        return True
    return tokens.expires_at - still_valid_for(tokens, margin) > now


def issued_since(tokens: TokenSet, moment: datetime | None) -> bool:
    """Whether the token was issued at or after ``moment`` (a refresh asked for then is done)."""
    issued = issued_at(tokens)
    return moment is not None and issued is not None and issued >= moment


def next_refresh_at(
    tokens: TokenSet, margin: timedelta, now: datetime, rng: random.Random | None = None
) -> datetime | None:
    """When to refresh: :func:`lead_time` before expiry, never more than half the time left, minus jitter.

    The jitter (up to 10 % of the lead, at most 5 minutes) spreads accounts connected together.
    None when the token never expires.
    """
    if tokens.expires_at is None:
        return None
    remaining = tokens.expires_at - now
    if remaining <= timedelta(0):
        return now
    lead = min(lead_time(tokens, margin), remaining / 2)
    jitter = (rng or random.Random()).uniform(0, min(lead.total_seconds() * 0.1, 300.0))
    return tokens.expires_at - lead - timedelta(seconds=jitter)
