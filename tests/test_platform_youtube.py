"""YouTubeAdapter against the fake Google/YouTube over real loopback HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from platforms.youtube import YouTubeAdapter
from social_accounts.errors import (
    NeedsReconnect,
    Permanent,
    RateLimited,
)
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import youtube as fake_yt
from tests.fakeplatform.core import unused_port_url
from tests.platform_support import (
    assert_no_secret,
    assert_transient,
    authorize,
    connect,
    expire_then_refresh,
    split_url,
)

STATE = "state-yt"
ALICE_CHANNEL = fake_yt.USERS["alice"][0]["id"]


pytestmark = [pytest.mark.unit, pytest.mark.adapter.with_args(YouTubeAdapter)]


def test_authorization_url_asks_for_offline_access_consent_and_pkce(
    adapter: YouTubeAdapter, fake: FakePlatformServer
) -> None:
    url = adapter.authorization_url(state=STATE, redirect_uri="https://app.example/oauth/callback", code_challenge="ch")
    base, params = split_url(url)
    assert base == f"{fake.base_url}/youtube/o/oauth2/v2/auth"
    assert params == {
        "response_type": "code",
        "client_id": fake_yt.CLIENT_ID,
        "redirect_uri": "https://app.example/oauth/callback",
        "state": STATE,
        "scope": "https://www.googleapis.com/auth/youtube.readonly",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent",
    }


def test_default_endpoints(make: Any) -> None:
    adapter = make(youtube_authorize_url=None, youtube_api_url=None)
    url = adapter.authorization_url(state="s", redirect_uri="https://a/oauth/callback", code_challenge="c")
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    assert adapter.api("channels") == "https://www.googleapis.com/youtube/v3/channels"
    assert YouTubeAdapter.required_env == ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET")


def test_connect_reads_the_channel_with_string_counts(adapter: YouTubeAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    call = next(r for r in fake.requests if r.path == "/youtube/token")
    assert call.form["client_secret"] == fake_yt.CLIENT_SECRET and call.form["code_verifier"]
    assert tokens.refresh_token and tokens.expires_at is not None
    assert tokens.expires_at <= datetime.now(UTC) + timedelta(seconds=3599)

    [profile] = adapter.fetch_accounts(tokens)
    assert profile.platform_account_id == ALICE_CHANNEL
    assert (profile.name, profile.handle) == ("Alice Makes Things", "@alicemakes")
    assert profile.avatar_url == f"https://yt3.ggpht.com/{ALICE_CHANNEL}-high.jpg"
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (15300, None, 87)
    assert profile.refresh_model == "reuse"


def test_one_identity_with_several_channels_and_a_hidden_count(adapter: YouTubeAdapter) -> None:
    tokens = connect(adapter, user="brand")
    main, secret = adapter.fetch_accounts(tokens)
    assert main.platform_account_id == "UCbrandMain000000000001"
    assert main.stats.followers == 1_000_000_000_000
    assert secret.platform_account_id == "UCbrandHidden0000000002"
    assert secret.stats.followers is None  # hidden: never the "0" the API shows
    assert secret.stats.posts == 12
    assert main.tokens == secret.tokens == tokens
    assert adapter.fetch_stats(secret.platform_account_id, tokens).followers is None
    assert adapter.fetch_stats(main.platform_account_id, tokens).posts == 4200


def test_identity_without_channel_fails_clearly(adapter: YouTubeAdapter) -> None:
    tokens = connect(adapter, user="empty")
    with pytest.raises(Permanent, match="no YouTube channel"):
        adapter.fetch_accounts(tokens)


def test_wrong_pkce_verifier_is_invalid_grant(adapter: YouTubeAdapter) -> None:
    code = authorize(adapter)["code"]  # the verifier of its challenge is lost
    with pytest.raises(NeedsReconnect) as info:
        adapter.exchange_code(code=code, redirect_uri=adapter.settings.redirect_uri, code_verifier="z" * 43)
    assert info.value.code == "invalid_grant"
    assert_no_secret(info.value, code)


def test_refresh_keeps_the_refresh_token_google_does_not_resend(adapter: YouTubeAdapter) -> None:
    first = connect(adapter)
    second = adapter.refresh(first)
    assert second.refresh_token == first.refresh_token
    assert second.access_token != first.access_token
    assert adapter.fetch_stats(ALICE_CHANNEL, second).followers == 15300
    third = adapter.refresh(second)  # the same refresh token keeps working
    assert third.refresh_token == first.refresh_token


def test_expired_access_token_asks_for_refresh(adapter: YouTubeAdapter, fake: FakePlatformServer) -> None:
    expired, fresh = expire_then_refresh(adapter, fake, connect(adapter))
    assert expired.code == "UNAUTHENTICATED"
    assert adapter.fetch_stats(ALICE_CHANNEL, fresh).posts == 87


def test_revoke_posts_only_the_token_and_ends_the_grant(adapter: YouTubeAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    assert adapter.revoke(tokens) == "revoked"
    call = next(r for r in fake.requests if r.path == "/youtube/revoke")
    assert call.form == {"token": tokens.refresh_token}
    with pytest.raises(NeedsReconnect) as info:
        adapter.refresh(tokens)
    assert info.value.code == "invalid_grant"
    assert adapter.revoke(tokens) == "revoked"  # already gone: nothing left to revoke


def test_quota_exceeded_waits_until_midnight_pacific(make: Any, fake: FakePlatformServer) -> None:
    # 20:00 UTC on 26 Nov 2026 is 12:00 PST: the quota resets in 12 hours
    adapter = make(clock=lambda: datetime(2026, 11, 26, 20, 0, tzinfo=UTC))
    tokens = connect(adapter)
    fake.fail("/youtube/v3/channels", fake_yt.quota_exceeded())
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(tokens)
    assert info.value.retry_after == 12 * 3600
    assert info.value.scope == "app" and info.value.code == "quotaExceeded"


def test_quota_reset_follows_daylight_saving(make: Any, fake: FakePlatformServer) -> None:
    # 20:00 UTC on 1 Jul 2026 is 13:00 PDT: 11 hours to midnight
    adapter = make(clock=lambda: datetime(2026, 7, 1, 20, 0, tzinfo=UTC))
    tokens = connect(adapter)
    fake.fail("/youtube/v3/channels", fake_yt.quota_exceeded())
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats(ALICE_CHANNEL, tokens)
    assert info.value.retry_after == 11 * 3600


@pytest.mark.parametrize("reason", ["rateLimitExceeded", "userRateLimitExceeded"])
def test_short_rate_limits_back_off_briefly(adapter: YouTubeAdapter, fake: FakePlatformServer, reason: str) -> None:
    tokens = connect(adapter)
    fake.fail("/youtube/v3/channels", fake_yt.rate_limit_exceeded(reason))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(tokens)
    assert info.value.retry_after == 60 and info.value.scope == "account" and info.value.code == reason


def test_backend_error_and_connection_refused_are_transient(make: Any, fake: FakePlatformServer) -> None:
    adapter = make()
    tokens = connect(adapter)
    fake.fail("/youtube/v3/channels", fake_yt.google_error(503, "backendError", "Backend Error"))
    assert_transient(lambda: adapter.fetch_accounts(tokens), status=503)
    offline = make(youtube_api_url=unused_port_url() + "/youtube/v3")
    assert_transient(lambda: offline.fetch_accounts(tokens))


def test_other_403_is_permanent(adapter: YouTubeAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/youtube/v3/channels", fake_yt.google_error(403, "forbidden", "Access forbidden."))
    with pytest.raises(Permanent) as info:
        adapter.fetch_accounts(tokens)
    assert info.value.code == "forbidden"


def test_errors_never_carry_tokens(adapter: YouTubeAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/youtube/v3/channels", fake_yt.google_error(400, "badRequest", f"token {tokens.access_token}"))
    with pytest.raises(Permanent) as permanent:
        adapter.fetch_accounts(tokens)
    fake.fail(
        "/youtube/token", FakeResponse(400, {"error": "invalid_grant", "error_description": tokens.refresh_token})
    )
    with pytest.raises(NeedsReconnect) as reconnect:
        adapter.refresh(tokens)
    for exc in (permanent.value, reconnect.value):
        assert_no_secret(exc, tokens.access_token, tokens.refresh_token, fake_yt.CLIENT_SECRET)
