"""The ``token_version`` fence on a refresh's write: a refresh that lost the race writes nothing
and reloads what the winner stored.

The lock keeps two refreshes apart, but not every writer of an account's tokens takes it (a
reconnect does not, and a lock can expire under a very slow platform). Here another writer lands
between the platform's answer and the refresh's save: real PostgreSQL, Redis, worker and fake
platform, as in ``tests.test_lifecycle``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models.repository import save_refreshed_tokens
from social_accounts.metrics import REFRESHES
from social_accounts.values import TokenSet
from tests.lifecycle_support import connect, events, load, make_due, refresh_calls
from tests.pipeline_support import Pipeline
from workers import runtime
from workers.adapters import adapter_for
from workers.refresh import refresh_now


def lost_races() -> float:
    return REFRESHES.labels("twitter", "lost_race")._value.get()


def test_a_refresh_that_loses_the_race_writes_nothing_and_returns_the_winners_token(
    life: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    [account_id] = connect(life, "twitter")
    make_due(life, account_id)
    before = load(life, account_id)
    rt = runtime.current()
    winner = TokenSet("winner-access", "winner-refresh", expires_at=datetime.now(UTC) + timedelta(hours=2))
    adapter = adapter_for(rt, "twitter")
    platform_refresh = adapter.refresh
    answered: list[TokenSet] = []

    def answered_but_overtaken(tokens: TokenSet) -> TokenSet:
        fresh = platform_refresh(tokens)  # the platform answers (and rotates) ...
        answered.append(fresh)
        with life.engine.begin() as conn:  # ... and another writer's tokens land first
            assert save_refreshed_tokens(
                conn,
                life.ring,
                account_id,
                expected_version=before.token_version,
                tokens=winner,
                next_refresh_at=None,
                now=datetime.now(UTC),
            )
        return fresh

    monkeypatch.setattr(adapter, "refresh", answered_but_overtaken)
    lost_before = lost_races()

    result = refresh_now(rt, account_id)

    # the loser hands out what is stored: the winner's token, not the one it was answered
    [fresh] = answered
    assert fresh.access_token != winner.access_token
    assert (result.outcome, result.status) == ("fresh", "active")
    assert result.tokens is not None
    assert (result.tokens.access_token, result.tokens.refresh_token) == ("winner-access", "winner-refresh")
    assert lost_races() == lost_before + 1
    # and wrote nothing: the winner's tokens stand, one version up (the winner's write only)
    after = load(life, account_id)
    assert (after.tokens.access_token, after.tokens.refresh_token) == ("winner-access", "winner-refresh")
    assert after.token_version == before.token_version + 1
    assert after.status == "active"
    assert not events(life, account_id, "refreshed")
    assert refresh_calls(life, "twitter") == 1
