"""TwitterAdapter against the fake X over real loopback HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from platforms.twitter import TwitterAdapter, remaining_zero
from social_accounts.errors import (
    AccessTokenExpired,
    NeedsReconnect,
    Permanent,
    PlatformError,
    RateLimited,
    RequestMaybeSent,
)
from social_accounts.values import TokenSet
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import twitter as fake_x
from tests.fakeplatform.core import unused_port_url
from tests.platform_support import (
    assert_no_secret,
    assert_rotating_refresh,
    assert_transient,
    authorize,
    connect,
    expire_then_refresh,
    split_url,
)

STATE = "state-123"

pytestmark = [pytest.mark.unit, pytest.mark.adapter.with_args(TwitterAdapter)]


# ---- authorization URL ------------------------------------------------------------------------


def test_authorization_url_asks_for_pkce_and_offline_access(adapter: TwitterAdapter, fake: FakePlatformServer) -> None:
    url = adapter.authorization_url(state=STATE, redirect_uri="https://app.example/oauth/callback", code_challenge="ch")
    base, params = split_url(url)
    assert base == f"{fake.base_url}/twitter/i/oauth2/authorize"
    assert params == {
        "response_type": "code",
        "client_id": fake_x.CLIENT_ID,
        "redirect_uri": "https://app.example/oauth/callback",
        "state": STATE,
        "scope": "tweet.read users.read offline.access",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }


def test_default_endpoints_are_x_com(make: Any) -> None:
    adapter = make(twitter_authorize_url=None, twitter_api_url=None)
    assert adapter.authorization_url(state="s", redirect_uri="https://a/oauth/callback", code_challenge="c").startswith(
        "https://x.com/i/oauth2/authorize?"
    )
    assert adapter.api("users/me") == "https://api.x.com/2/users/me"
    assert TwitterAdapter.required_env == ("TWITTER_CLIENT_ID", "TWITTER_CLIENT_SECRET")


def test_user_denying_consent_comes_back_as_access_denied(adapter: TwitterAdapter) -> None:
    back = authorize(adapter, fake_deny="1")  # checks that the state comes back
    assert back["error"] == "access_denied"
    assert "code" not in back


# ---- exchange, profile, stats -----------------------------------------------------------------


def test_connect_exchanges_with_basic_auth_and_reads_the_profile(
    adapter: TwitterAdapter, fake: FakePlatformServer
) -> None:
    before = datetime.now(UTC)
    tokens = connect(adapter)
    assert tokens.access_token.startswith("tw_at_")
    assert tokens.refresh_token and tokens.refresh_token.startswith("tw_rt_")
    assert tokens.expires_at is not None
    assert before + timedelta(seconds=7190) <= tokens.expires_at <= datetime.now(UTC) + timedelta(seconds=7200)
    assert "offline.access" in tokens.scopes

    token_call = next(r for r in fake.requests if r.path == "/twitter/2/oauth2/token")
    assert token_call.basic() == (fake_x.CLIENT_ID, fake_x.CLIENT_SECRET)
    assert "client_secret" not in token_call.form
    assert token_call.form["code_verifier"]

    [profile] = adapter.fetch_accounts(tokens)
    alice = fake_x.USERS["alice"]
    assert profile.platform_account_id == alice["id"]
    assert (profile.name, profile.handle, profile.avatar_url) == ("Alice Example", "alice", alice["profile_image_url"])
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (1200, 180, 5321)
    assert profile.refresh_model == "rotate"
    assert profile.tokens == tokens


def test_fetch_stats_reads_public_metrics(adapter: TwitterAdapter) -> None:
    tokens = connect(adapter, user="bob")
    stats = adapter.fetch_stats(fake_x.USERS["bob"]["id"], tokens)
    assert (stats.followers, stats.following, stats.posts) == (0, 7, 1)


def test_fetch_stats_for_another_account_is_refused(adapter: TwitterAdapter) -> None:
    tokens = connect(adapter, user="bob")
    with pytest.raises(Permanent):
        adapter.fetch_stats(fake_x.USERS["alice"]["id"], tokens)


def test_wrong_code_verifier_fails_the_exchange(adapter: TwitterAdapter) -> None:
    code = authorize(adapter)["code"]  # the verifier of its challenge is lost
    with pytest.raises(Permanent) as info:
        adapter.exchange_code(code=code, redirect_uri=adapter.settings.redirect_uri, code_verifier="x" * 50)
    assert info.value.code == "invalid_request"
    assert_no_secret(info.value, code)


def test_wrong_client_secret_is_permanent_not_reconnect(make: Any) -> None:
    adapter = make(twitter_client_secret="wrong-secret")
    with pytest.raises(Permanent) as info:
        connect(adapter)
    assert info.value.code == "unauthorized_client"
    assert not isinstance(info.value, NeedsReconnect)
    assert_no_secret(info.value, "wrong-secret")


def test_fake_refuses_client_credentials_in_the_body_only(fake: FakePlatformServer, http: httpx.Client) -> None:
    response = http.post(
        f"{fake.base_url}/twitter/2/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": fake_x.CLIENT_ID,
            "client_secret": fake_x.CLIENT_SECRET,
        },
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized_client"


def test_exchange_timeout_is_request_maybe_sent(make: Any, fake: FakePlatformServer) -> None:
    adapter = make(http_timeout_seconds=0.3)
    code = authorize(adapter)["code"]
    fake.fail("/twitter/2/oauth2/token", FakeResponse(200, {}), delay=0.8)
    with pytest.raises(RequestMaybeSent):
        adapter.exchange_code(code=code, redirect_uri=adapter.settings.redirect_uri, code_verifier="v" * 43)


# ---- refresh ----------------------------------------------------------------------------------


def test_refresh_rotates_and_replaying_the_spent_token_revokes_the_grant(adapter: TwitterAdapter) -> None:
    first = connect(adapter)

    def works(second: TokenSet) -> None:
        assert adapter.fetch_stats(fake_x.USERS["alice"]["id"], second).followers == 1200

    replay = assert_rotating_refresh(adapter, first, works)  # spent: X revokes the whole family
    assert_no_secret(replay, first.refresh_token, first.access_token)


def test_expired_access_token_asks_for_a_refresh_first(adapter: TwitterAdapter, fake: FakePlatformServer) -> None:
    expired, fresh = expire_then_refresh(adapter, fake, connect(adapter))
    assert expired.status == 401
    assert adapter.fetch_accounts(fresh)[0].handle == "alice"


def test_refresh_without_refresh_token_needs_reconnect(adapter: TwitterAdapter) -> None:
    with pytest.raises(NeedsReconnect):
        adapter.refresh(TokenSet(access_token="only-access"))


# ---- revoke -----------------------------------------------------------------------------------


def test_revoke_ends_the_refresh_and_the_access_token_with_hints(
    adapter: TwitterAdapter, fake: FakePlatformServer
) -> None:
    tokens = connect(adapter)
    fake.reset_log()
    assert adapter.revoke(tokens) == "revoked"
    calls = [r for r in fake.requests if r.path == "/twitter/2/oauth2/revoke"]
    assert [c.form for c in calls] == [
        {"token": tokens.refresh_token, "token_type_hint": "refresh_token"},
        {"token": tokens.access_token, "token_type_hint": "access_token"},
    ]
    assert all(c.basic() == (fake_x.CLIENT_ID, fake_x.CLIENT_SECRET) for c in calls)
    with pytest.raises(AccessTokenExpired):
        adapter.fetch_accounts(tokens)
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_revoke_without_a_refresh_token_revokes_the_access_token(
    adapter: TwitterAdapter, fake: FakePlatformServer
) -> None:
    tokens = connect(adapter).replace(refresh_token=None)
    fake.reset_log()
    assert adapter.revoke(tokens) == "revoked"
    assert [r.form.get("token_type_hint") for r in fake.requests] == ["access_token"]
    with pytest.raises(AccessTokenExpired):
        adapter.fetch_accounts(tokens)


# ---- failures ---------------------------------------------------------------------------------


def test_429_waits_until_x_rate_limit_reset(adapter: TwitterAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/twitter/2/users/me", fake_x.rate_limited(reset_in=300))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(tokens)
    assert 290 <= info.value.retry_after <= 300


def test_429_without_headers_waits_one_window(adapter: TwitterAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/twitter/2/users/me", fake_x.rate_limited(with_headers=False))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats("2244994945", tokens)
    assert info.value.retry_after == 900


def test_remaining_zero_reads_the_header() -> None:
    assert remaining_zero(httpx.Response(200, headers={"x-rate-limit-remaining": "0"}))
    assert not remaining_zero(httpx.Response(200, headers={"x-rate-limit-remaining": "3"}))
    assert not remaining_zero(httpx.Response(200))


def test_5xx_is_transient(adapter: TwitterAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/twitter/2/users/me", FakeResponse(503, {"title": "Service Unavailable"}))
    assert_transient(lambda: adapter.fetch_accounts(tokens), status=503)


def test_connection_refused_is_transient(make: Any) -> None:
    adapter = make(twitter_token_url=unused_port_url() + "/2/oauth2/token")
    assert_transient(lambda: adapter.refresh(TokenSet(access_token="a", refresh_token="r")))


def test_other_4xx_is_permanent(adapter: TwitterAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/twitter/2/users/me", FakeResponse(403, {"title": "Forbidden", "status": 403, "detail": "nope"}))
    with pytest.raises(Permanent):
        adapter.fetch_accounts(tokens)


def test_errors_never_carry_tokens_even_when_the_platform_echoes_them(
    adapter: TwitterAdapter, fake: FakePlatformServer
) -> None:
    tokens = connect(adapter)
    assert tokens.refresh_token
    caught: list[PlatformError] = []
    fake.fail(
        "/twitter/2/oauth2/token",
        FakeResponse(400, {"error": "invalid_request", "error_description": f"bad token {tokens.refresh_token}"}),
    )
    with pytest.raises(NeedsReconnect) as reconnect:
        adapter.refresh(tokens)
    caught.append(reconnect.value)
    fake.fail("/twitter/2/users/me", FakeResponse(400, {"error": "x", "message": f"token {tokens.access_token}"}))
    with pytest.raises(Permanent) as permanent:
        adapter.fetch_accounts(tokens)
    caught.append(permanent.value)
    for exc in caught:
        assert_no_secret(exc, tokens.access_token, tokens.refresh_token, fake_x.CLIENT_SECRET)
    assert "<redacted>" in str(caught[0])
