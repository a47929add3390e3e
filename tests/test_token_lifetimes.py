"""Tokens of any lifetime: every margin scales with the token's own lifetime (issue 14).

Pure tests of ``workers.lifetimes`` with an injected ``now`` (no sleeping), for tokens living
5 s, 20 s, 5 min and 60 days, and of when a forced refresh counts as asked for. The end-to-end
side is ``tests/test_short_tokens.py``; answers without ``expires_in``, ``test_token_expiry_fallback.py``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from dramatiq import Message
from dramatiq.middleware import CurrentMessage

from social_accounts.values import TokenSet
from workers import lifetimes, refresh

ISSUED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
#: the platforms' margins: the base class's 10 minutes, and Instagram's / Threads' 7 days
MARGINS = (timedelta(minutes=10), timedelta(days=7))
LIFETIMES = (timedelta(seconds=5), timedelta(seconds=20), timedelta(minutes=5), timedelta(days=60))


def issued(life: timedelta, at: datetime = ISSUED) -> TokenSet:
    """A token set issued at ``at`` that lives ``life``, stamped as the connect and refresh stamp it."""
    return TokenSet("at", "rt", expires_at=at + life, metadata={"issued_at": at.isoformat()})


@pytest.mark.parametrize("margin", MARGINS, ids=["10min", "7d"])
@pytest.mark.parametrize("life", LIFETIMES, ids=["5s", "20s", "5min", "60d"])
def test_every_margin_is_at_most_half_the_lifetime(life: timedelta, margin: timedelta) -> None:
    tokens = issued(life)
    assert lifetimes.lifetime(tokens) == life
    lead = lifetimes.lead_time(tokens, margin)
    valid_for = lifetimes.still_valid_for(tokens, margin)
    assert lead == min(margin, life / 2)
    assert timedelta(0) < valid_for <= lead / 2 <= life / 4
    assert valid_for == min(timedelta(seconds=30), lead / 2)
    for seed in range(20):
        at = lifetimes.next_refresh_at(tokens, margin, ISSUED, random.Random(seed))
        jitter = min(lead * 0.1, timedelta(minutes=5))
        assert at is not None and tokens.expires_at - lead - jitter <= at <= tokens.expires_at - lead


@pytest.mark.parametrize("life", LIFETIMES, ids=["5s", "20s", "5min", "60d"])
def test_a_token_refreshed_a_moment_ago_is_handed_out_and_not_due(life: timedelta) -> None:
    margin = timedelta(minutes=10)
    tokens = issued(life)
    for moment in (ISSUED, ISSUED + life / 100, ISSUED + life / 2 - timedelta(microseconds=1)):
        assert lifetimes.handed_out(tokens, margin, moment)
        assert not lifetimes.is_due(tokens, margin, moment)


@pytest.mark.parametrize("life", LIFETIMES, ids=["5s", "20s", "5min", "60d"])
def test_a_token_is_due_before_it_stops_being_handed_out(life: timedelta) -> None:
    """Due at the lead; refused only past it, when a refresh failed: a not-due token is always given."""
    margin = timedelta(minutes=10)
    tokens = issued(life)
    assert tokens.expires_at is not None
    lead = lifetimes.lead_time(tokens, margin)
    valid_for = lifetimes.still_valid_for(tokens, margin)
    due_at = tokens.expires_at - lead
    refused_at = tokens.expires_at - valid_for
    assert not lifetimes.is_due(tokens, margin, due_at - timedelta(microseconds=1))
    assert lifetimes.is_due(tokens, margin, due_at)
    assert due_at < refused_at
    assert lifetimes.handed_out(tokens, margin, refused_at - timedelta(microseconds=1))
    assert not lifetimes.handed_out(tokens, margin, refused_at)
    assert not lifetimes.handed_out(tokens, margin, tokens.expires_at + timedelta(seconds=1))


def test_the_numbers_for_each_lifetime() -> None:
    margin = timedelta(minutes=10)
    expected = {
        timedelta(seconds=5): (timedelta(seconds=2.5), timedelta(seconds=1.25)),
        timedelta(seconds=20): (timedelta(seconds=10), timedelta(seconds=5)),
        timedelta(minutes=5): (timedelta(minutes=2.5), timedelta(seconds=30)),
        timedelta(days=60): (timedelta(minutes=10), timedelta(seconds=30)),
    }
    for life, (lead, valid_for) in expected.items():
        tokens = issued(life)
        assert (lifetimes.lead_time(tokens, margin), lifetimes.still_valid_for(tokens, margin)) == (lead, valid_for)


def test_a_token_without_known_lifetime_keeps_the_platform_margin() -> None:
    margin = timedelta(minutes=10)
    legacy = TokenSet("at", expires_at=ISSUED + timedelta(hours=2))  # stored before issued_at existed
    assert lifetimes.lifetime(legacy) is None
    assert lifetimes.lead_time(legacy, margin) == margin
    assert lifetimes.still_valid_for(legacy, margin) == timedelta(seconds=30)
    never = TokenSet("at")
    assert not lifetimes.is_due(never, margin, ISSUED + timedelta(days=3650))
    assert lifetimes.handed_out(never, margin, ISSUED + timedelta(days=3650))
    assert lifetimes.next_refresh_at(never, margin, ISSUED) is None
    naive = TokenSet("at", expires_at=ISSUED, metadata={"issued_at": "2026-12-01T11:00:00"})
    assert lifetimes.lifetime(naive) is None  # never compared with an aware time


def test_issued_since_says_whether_a_forced_refresh_is_already_done() -> None:
    tokens = issued(timedelta(seconds=5))
    assert lifetimes.issued_since(tokens, ISSUED - timedelta(milliseconds=1))
    assert lifetimes.issued_since(tokens, ISSUED)
    assert not lifetimes.issued_since(tokens, ISSUED + timedelta(milliseconds=1))
    assert not lifetimes.issued_since(tokens, None)
    assert not lifetimes.issued_since(TokenSet("at"), ISSUED)


def test_a_message_was_requested_its_age_ago_on_the_runtime_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced refresh's request time: the message's age (real ms) taken from the service clock."""
    rt: Any = SimpleNamespace(clock=lambda: ISSUED)
    assert refresh.message_requested_at(rt) is None  # the token API, the CLI: no message
    published = 1_800_000_000_000
    message = Message(
        queue_name="refresh",
        actor_name="refresh_account",
        args=(),
        kwargs={},
        options={},
        message_timestamp=published,
    )
    current = CurrentMessage()
    current.before_process_message(None, message)  # type: ignore[arg-type]
    try:
        monkeypatch.setattr(refresh, "current_millis", lambda: published + 4_250)
        assert refresh.message_requested_at(rt) == ISSUED - timedelta(milliseconds=4_250)
        monkeypatch.setattr(refresh, "current_millis", lambda: published - 1_000)  # another host's clock ahead
        assert refresh.message_requested_at(rt) == ISSUED
    finally:
        current.after_process_message(None, message)  # type: ignore[arg-type]
    assert refresh.message_requested_at(rt) is None
