"""A token answer without ``expires_in`` never makes a token that expires one that never does.

Before: ``TokenSet.merged_with`` took the newer answer's ``expires_at=None``, so an account whose
refresh answer left out ``expires_in`` was never refreshed again and died silently. Now each
adapter assumes its platform's documented lifetime (``default_lifetime``, docs/platforms.md)
and logs that the answer lacked it, and the merge keeps a stored expiry. Every adapter family
is checked: the OAuth 2.0 refresh grant, Meta's long-lived exchanges, and the ones that never expire.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from platforms.base import PlatformAdapter
from platforms.demo import DemoAdapter
from platforms.instagram import InstagramAdapter
from platforms.instagram_login import InstagramLoginAdapter
from platforms.linkedin import LinkedInAdapter
from platforms.mastodon import MastodonAdapter
from platforms.pinterest import PinterestAdapter
from platforms.threads import ThreadsAdapter
from platforms.tiktok import TikTokAdapter
from platforms.twitter import TwitterAdapter
from platforms.youtube import YouTubeAdapter
from social_accounts.values import TokenSet

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NEW_ACCESS = "new-access-8f3b2c1d9e"
NEW_REFRESH = "new-refresh-7a6b5c4d3e"

#: every adapter whose refresh reads a token answer, and its platform's documented lifetime
DOCUMENTED: dict[type[PlatformAdapter], timedelta] = {
    TwitterAdapter: timedelta(hours=2),
    YouTubeAdapter: timedelta(hours=1),
    TikTokAdapter: timedelta(hours=2),
    LinkedInAdapter: timedelta(days=60),
    PinterestAdapter: timedelta(days=30),
    ThreadsAdapter: timedelta(days=60),
    InstagramLoginAdapter: timedelta(days=60),
    DemoAdapter: timedelta(minutes=5),
}


@pytest.fixture
def answering() -> Iterator[Callable[[dict[str, Any]], httpx.Client]]:
    """A client whose every request gets ``body`` (a token endpoint that leaves out ``expires_in``)."""
    clients: list[httpx.Client] = []

    def build(body: dict[str, Any]) -> httpx.Client:
        client = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=body)))
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def stored(expires_at: datetime | None = NOW + timedelta(minutes=1)) -> TokenSet:
    """A due token set as the database holds it."""
    return TokenSet(
        "old-access-1a2b3c4d5e",
        "old-refresh-9z8y7x6w5v",
        expires_at=expires_at,
        metadata={"issued_at": (NOW - timedelta(days=59)).isoformat(), "long_lived": True},
    )


@pytest.mark.parametrize("adapter_class", list(DOCUMENTED), ids=lambda c: c.platform)
def test_a_refresh_answer_without_expires_in_gets_the_documented_lifetime(
    adapter_class: type[PlatformAdapter],
    settings_factory: Any,
    answering: Callable[[dict[str, Any]], httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = {"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "token_type": "bearer"}
    adapter = adapter_class(settings_factory(), answering(body), lambda: NOW)
    with caplog.at_level(logging.WARNING):
        fresh = adapter.refresh(stored())
    assert fresh.access_token == NEW_ACCESS
    assert fresh.expires_at == NOW + DOCUMENTED[adapter_class]
    [warning] = [r for r in caplog.records if "expires_in" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert getattr(warning, "platform", None) == adapter_class.platform
    logged = warning.getMessage() + json.dumps({k: str(v) for k, v in vars(warning).items()})
    assert NEW_ACCESS not in logged and NEW_REFRESH not in logged and "old-access" not in logged


@pytest.mark.parametrize("adapter_class", list(DOCUMENTED), ids=lambda c: c.platform)
def test_the_server_lifetime_still_wins_without_a_warning(
    adapter_class: type[PlatformAdapter],
    settings_factory: Any,
    answering: Callable[[dict[str, Any]], httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = {"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "token_type": "bearer", "expires_in": 5}
    adapter = adapter_class(settings_factory(), answering(body), lambda: NOW)
    with caplog.at_level(logging.WARNING):
        fresh = adapter.refresh(stored())
    assert fresh.expires_at == NOW + timedelta(seconds=5)
    assert not [r for r in caplog.records if "expires_in" in r.getMessage()]


def test_platforms_whose_tokens_never_expire_assume_no_lifetime() -> None:
    # Mastodon's tokens never expire; Facebook stores Page tokens, which do not expire either
    assert MastodonAdapter.default_lifetime is None
    assert PlatformAdapter.default_lifetime is None


def test_meta_long_lived_exchange_without_expires_in_lasts_60_days(
    settings_factory: Any, answering: Callable[[dict[str, Any]], httpx.Client]
) -> None:
    """The code exchange's follow-up (``fb_exchange_token``), which Meta answers without ``expires_in`` at times."""
    adapter = InstagramAdapter(settings_factory(), answering({"access_token": NEW_ACCESS}), lambda: NOW)
    long_lived = adapter.exchange_long_lived(TokenSet("short-lived-token"))
    assert long_lived.expires_at == NOW + timedelta(days=60)


def test_merge_keeps_the_stored_expiry_when_the_answer_has_none() -> None:
    old = stored()
    merged = old.merged_with(TokenSet(NEW_ACCESS))
    assert merged.access_token == NEW_ACCESS and merged.refresh_token == old.refresh_token
    assert merged.expires_at == old.expires_at  # was None: "never expires"
    later = NOW + timedelta(hours=2)
    assert old.merged_with(TokenSet(NEW_ACCESS, expires_at=later)).expires_at == later
    assert stored(expires_at=None).merged_with(TokenSet(NEW_ACCESS)).expires_at is None
