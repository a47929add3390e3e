"""TikTokAdapter against the fake TikTok over real loopback HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from platforms.base import engagement_rate
from platforms.tiktok import TikTokAdapter
from social_accounts.errors import (
    AccessTokenExpired,
    NeedsReconnect,
    Permanent,
    RateLimited,
)
from social_accounts.values import TokenSet
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import tiktok as fake_tt
from tests.fakeplatform.core import unused_port_url
from tests.platform_support import (
    assert_no_secret,
    assert_rotating_refresh,
    assert_transient,
    connect,
    expire_then_refresh,
    split_url,
)

STATE = "state-tt"
ALICE = fake_tt.USERS["alice"]


pytestmark = [pytest.mark.unit, pytest.mark.adapter.with_args(TikTokAdapter)]


def test_authorization_url_uses_client_key_and_commas(adapter: TikTokAdapter, fake: FakePlatformServer) -> None:
    url = adapter.authorization_url(state=STATE, redirect_uri="https://app.example/oauth/callback", code_challenge="c")
    base, params = split_url(url)
    assert base == f"{fake.base_url}/tiktok/v2/auth/authorize/"
    assert params == {
        "response_type": "code",
        "client_key": fake_tt.CLIENT_KEY,
        "redirect_uri": "https://app.example/oauth/callback",
        "state": STATE,
        "scope": "user.info.basic,user.info.profile,user.info.stats",
    }


def test_default_endpoints(make: Any) -> None:
    adapter = make(tiktok_authorize_url=None, tiktok_api_url=None)
    url = adapter.authorization_url(state="s", redirect_uri="https://a/oauth/callback", code_challenge=None)
    assert url.startswith("https://www.tiktok.com/v2/auth/authorize/?")
    assert adapter.api("user/info/") == "https://open.tiktokapis.com/v2/user/info/"


def test_connect_uses_the_lifetimes_tiktok_returns(
    adapter: TikTokAdapter, fake: FakePlatformServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_tt, "ACCESS_LIFETIME", 1234)
    monkeypatch.setattr(fake_tt, "REFRESH_LIFETIME", 5678)
    now = datetime.now(UTC)
    tokens = connect(adapter)
    assert tokens.expires_at is not None and tokens.refresh_expires_at is not None
    assert abs(tokens.expires_at - (now + timedelta(seconds=1234))) < timedelta(seconds=5)
    assert abs(tokens.refresh_expires_at - (now + timedelta(seconds=5678))) < timedelta(seconds=5)
    assert tokens.metadata["open_id"] == ALICE["open_id"]
    call = next(r for r in fake.requests if r.path == "/tiktok/v2/oauth/token/")
    assert call.form["client_key"] == fake_tt.CLIENT_KEY and call.form["client_secret"] == fake_tt.CLIENT_SECRET
    assert "client_id" not in call.form and call.basic() is None


def test_profile_and_stats(adapter: TikTokAdapter) -> None:
    tokens = connect(adapter)
    [profile] = adapter.fetch_accounts(tokens)
    assert profile.platform_account_id == ALICE["open_id"]
    assert (profile.name, profile.handle, profile.avatar_url) == (
        "Alice on TikTok",
        "alice.tt",
        ALICE["avatar_url"],
    )
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (34000, 120, 210)
    # 880,000 likes over 210 videos, per follower of 34,000
    assert profile.stats.engagement_rate == pytest.approx(880000 / 210 / 34000, abs=1e-6)
    assert profile.tokens.metadata["union_id"] == ALICE["union_id"]
    assert profile.refresh_model == "rotate"
    stats = adapter.fetch_stats(ALICE["open_id"], tokens)
    assert (stats.followers, stats.following, stats.posts) == (34000, 120, 210)


def test_basic_only_consent_asks_only_for_basic_fields(adapter: TikTokAdapter) -> None:
    tokens = connect(adapter, scope="user.info.basic")
    assert tokens.scopes == ("user.info.basic",)
    [profile] = adapter.fetch_accounts(tokens)
    assert profile.platform_account_id == ALICE["open_id"]
    assert profile.handle is None
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (None, None, None)
    assert profile.stats.engagement_rate is None  # no counts granted: unknown, never 0
    with pytest.raises(NeedsReconnect) as info:  # asking beyond the grant: only a new consent helps
        adapter.fetch_accounts(tokens.replace(scopes=()))
    assert info.value.code == "scope_not_authorized"


def test_refresh_rotates_and_spent_token_revokes_the_grant(adapter: TikTokAdapter) -> None:
    first = connect(adapter)

    def works(second: TokenSet) -> None:
        assert adapter.fetch_stats(ALICE["open_id"], second).followers == 34000

    assert assert_rotating_refresh(adapter, first, works).code == "invalid_grant"


def test_token_error_sent_with_http_200_is_still_an_error(adapter: TikTokAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail(
        "/tiktok/v2/oauth/token/",
        FakeResponse(200, {"error": "invalid_grant", "error_description": "Refresh token is invalid", "log_id": "1"}),
    )
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_expired_access_token_asks_for_refresh(adapter: TikTokAdapter, fake: FakePlatformServer) -> None:
    _, fresh = expire_then_refresh(adapter, fake, connect(adapter))
    assert adapter.fetch_accounts(fresh)[0].name == "Alice on TikTok"


def test_revoke_sends_the_access_token_with_client_key(adapter: TikTokAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    assert adapter.revoke(tokens) == "revoked"
    call = next(r for r in fake.requests if r.path == "/tiktok/v2/oauth/revoke/")
    assert call.form == {
        "client_key": fake_tt.CLIENT_KEY,
        "client_secret": fake_tt.CLIENT_SECRET,
        "token": tokens.access_token,
    }
    with pytest.raises(AccessTokenExpired):
        adapter.fetch_accounts(tokens)
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_429_waits_the_window_or_retry_after(adapter: TikTokAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/tiktok/v2/user/info/", fake_tt.rate_limited())
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(tokens)
    assert info.value.retry_after == 60 and info.value.code == "rate_limit_exceeded"
    limited = fake_tt.rate_limited()
    fake.fail("/tiktok/v2/user/info/", FakeResponse(429, limited.body, {"retry-after": "17"}))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats(ALICE["open_id"], tokens)
    assert info.value.retry_after == 17


def test_internal_error_and_connection_refused_are_transient(make: Any, fake: FakePlatformServer) -> None:
    adapter = make()
    tokens = connect(adapter)
    fake.fail("/tiktok/v2/user/info/", fake_tt.api_error(500, "internal_error", "Something went wrong"))
    assert_transient(lambda: adapter.fetch_accounts(tokens), status=500)
    offline = make(tiktok_token_url=unused_port_url() + "/v2/oauth/token/")
    assert_transient(lambda: offline.refresh(tokens))


def test_invalid_params_and_bad_client_are_permanent(make: Any, fake: FakePlatformServer) -> None:
    adapter = make()
    tokens = connect(adapter)
    fake.fail("/tiktok/v2/user/info/", fake_tt.api_error(400, "invalid_params", "fields is invalid"))
    with pytest.raises(Permanent) as info:
        adapter.fetch_accounts(tokens)
    assert info.value.code == "invalid_params"
    with pytest.raises(Permanent) as bad_client:
        make(tiktok_client_secret="wrong").refresh(tokens)
    assert bad_client.value.code == "invalid_client"
    assert not isinstance(bad_client.value, NeedsReconnect)


def test_errors_never_carry_tokens(adapter: TikTokAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail(
        "/tiktok/v2/user/info/",
        fake_tt.api_error(401, "access_token_invalid", f"token {tokens.access_token} is invalid"),
    )
    with pytest.raises(AccessTokenExpired) as expired:
        adapter.fetch_accounts(tokens)
    fake.fail(
        "/tiktok/v2/oauth/token/",
        FakeResponse(400, {"error": "invalid_grant", "error_description": f"bad {tokens.refresh_token}"}),
    )
    with pytest.raises(NeedsReconnect) as reconnect:
        adapter.refresh(tokens)
    for exc in (expired.value, reconnect.value):
        assert_no_secret(exc, tokens.access_token, tokens.refresh_token, fake_tt.CLIENT_SECRET)


@pytest.mark.parametrize(
    ("likes", "videos", "followers", "rate"),
    [
        (880000, 210, 34000, 0.123249),
        (0, 10, 100, 0.0),  # videos nobody liked: a real 0
        (500, 0, 100, None),  # no videos: nothing to average
        (500, 10, 0, None),  # no followers: a share of nothing
        (None, 10, 100, None),  # likes not granted
        (500, None, 100, None),
        (-1, 10, 100, None),  # nonsense from the API is not a rate
    ],
)
def test_engagement_rate_is_unknown_rather_than_guessed(
    likes: int | None, videos: int | None, followers: int | None, rate: float | None
) -> None:
    assert engagement_rate(likes, videos, followers) == rate
