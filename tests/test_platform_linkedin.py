"""LinkedInAdapter against the fake LinkedIn over real loopback HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from platforms.linkedin import LinkedInAdapter
from social_accounts.errors import (
    NeedsReconnect,
    Permanent,
    RateLimited,
    Transient,
)
from social_accounts.values import TokenSet
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import linkedin as fake_li
from tests.fakeplatform.core import unused_port_url
from tests.platform_support import (
    assert_no_revocation,
    assert_no_secret,
    assert_transient,
    connect,
    expire_then_refresh,
    split_url,
)

STATE = "state-li"
#: LINKEDIN_SCOPES of an app that has the Community Management product (member follower counts)
ANALYTICS_SCOPES = "openid profile email w_member_social r_member_profileAnalytics"


pytestmark = [pytest.mark.unit, pytest.mark.adapter.with_args(LinkedInAdapter)]


@pytest.fixture
def analytics(make: Any) -> LinkedInAdapter:
    """An adapter whose LINKEDIN_SCOPES ask for r_member_profileAnalytics."""
    built: LinkedInAdapter = make(linkedin_scopes=ANALYTICS_SCOPES)
    return built


def test_follower_scope_is_requested_only_when_linkedin_scopes_names_it(
    adapter: LinkedInAdapter, analytics: LinkedInAdapter
) -> None:
    plain = split_url(
        adapter.authorization_url(state=STATE, redirect_uri="https://a.example/oauth/callback", code_challenge=None)
    )
    assert "r_member_profileAnalytics" not in plain[1]["scope"].split(" ")
    wanted = split_url(
        analytics.authorization_url(state=STATE, redirect_uri="https://a.example/oauth/callback", code_challenge=None)
    )
    assert wanted[1]["scope"] == ANALYTICS_SCOPES


def test_without_the_granted_scope_followers_are_null_and_never_requested(
    adapter: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    tokens = connect(adapter, user="partner")  # the member's app has the product, the scope was not asked
    assert "r_member_profileAnalytics" not in tokens.scopes
    [profile] = adapter.fetch_accounts(tokens)
    assert profile.stats.followers is None
    assert adapter.fetch_stats(profile.platform_account_id, tokens).followers is None
    assert fake.count("/linkedin/rest/*") == 0  # no request at all, not a refused one


def test_authorization_url_has_no_pkce_and_space_separated_scopes(
    adapter: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    url = adapter.authorization_url(state=STATE, redirect_uri="https://app.example/oauth/callback", code_challenge="c")
    base, params = split_url(url)
    assert base == f"{fake.base_url}/linkedin/oauth/v2/authorization"
    assert params == {
        "response_type": "code",
        "client_id": fake_li.CLIENT_ID,
        "redirect_uri": "https://app.example/oauth/callback",
        "state": STATE,
        "scope": "openid profile email w_member_social",
    }


def test_rest_base_is_derived_from_the_api_url(make: Any) -> None:
    default = make(linkedin_api_url=None)
    assert default.api("userinfo") == "https://api.linkedin.com/v2/userinfo"
    assert default.rest("memberFollowersCount") == "https://api.linkedin.com/rest/memberFollowersCount"
    proxied = make(linkedin_api_url="https://proxy.example/li/")
    assert proxied.rest("/memberFollowersCount") == "https://proxy.example/li/rest/memberFollowersCount"


def test_member_without_refresh_token_connects_with_refresh_model_none(
    adapter: LinkedInAdapter, analytics: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    [granted] = analytics.fetch_accounts(connect(analytics))
    assert granted.stats.followers is None  # scope granted, but 403 from /rest (no product): not a failure
    assert fake.count("/linkedin/rest/memberFollowersCount") == 1
    tokens = connect(adapter)
    token_call = next(r for r in fake.requests if r.path == "/linkedin/oauth/v2/accessToken")
    assert token_call.form["client_secret"] == fake_li.CLIENT_SECRET
    assert token_call.basic() is None and "code_verifier" not in token_call.form
    assert tokens.refresh_token is None
    assert tokens.expires_at is not None
    assert abs((tokens.expires_at - datetime.now(UTC)) - timedelta(days=60)) < timedelta(seconds=30)
    assert tokens.metadata["refresh_model"] == "none"

    [profile] = adapter.fetch_accounts(tokens)
    assert profile.platform_account_id == "782bbtaQ"
    assert (profile.name, profile.handle, profile.avatar_url) == (
        "Alice Example",
        None,
        fake_li.USERS["alice"]["picture"],
    )
    assert profile.stats.followers is None  # the scope was not asked: no /rest call
    assert (profile.stats.following, profile.stats.posts) == (None, None)
    assert profile.refresh_model == "none"
    assert adapter.fetch_stats(profile.platform_account_id, tokens).followers is None
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_partner_member_gets_refresh_token_and_follower_count(
    analytics: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    adapter = analytics
    tokens = connect(adapter, user="partner")
    assert "r_member_profileAnalytics" in tokens.scopes
    assert tokens.refresh_token and tokens.refresh_expires_at is not None
    [profile] = adapter.fetch_accounts(tokens)
    assert profile.refresh_model == "reuse"
    assert profile.stats.followers == 5400
    rest_call = next(r for r in fake.requests if r.path == "/linkedin/rest/memberFollowersCount")
    assert rest_call.headers["linkedin-version"] == adapter.settings.linkedin_api_version
    assert rest_call.headers["x-restli-protocol-version"] == "2.0.0"
    assert adapter.fetch_stats(profile.platform_account_id, tokens).followers == 5400


def test_refresh_keeps_the_fixed_refresh_token(analytics: LinkedInAdapter) -> None:
    adapter = analytics
    first = connect(adapter, user="partner")
    second = adapter.refresh(first)
    assert second.refresh_token == first.refresh_token
    assert second.access_token != first.access_token
    assert second.metadata["refresh_model"] == "reuse"
    assert second.refresh_expires_at is not None and first.refresh_expires_at is not None
    assert second.refresh_expires_at <= first.refresh_expires_at + timedelta(seconds=2)
    assert adapter.fetch_stats("Zx9PartnerQ", second).followers == 5400


def test_refresh_answer_without_refresh_token_keeps_the_old_one(
    adapter: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    first = connect(adapter, user="partner")
    fake.fail("/linkedin/oauth/v2/accessToken", FakeResponse(200, {"access_token": "li_new_access", "expires_in": 99}))
    second = adapter.refresh(first)
    assert second.access_token == "li_new_access"
    assert second.refresh_token == first.refresh_token
    assert second.expires_at is not None and second.expires_at < datetime.now(UTC) + timedelta(seconds=100)


def test_revoked_grant_needs_reconnect_but_is_retried_during_connect(
    analytics: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    adapter = analytics
    tokens = connect(adapter, user="partner")
    fake.grants.revoke_token(tokens.access_token)
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_stats("Zx9PartnerQ", tokens)
    assert info.value.code == "REVOKED_ACCESS_TOKEN"
    with pytest.raises(Transient) as during_connect:
        adapter.fetch_accounts(tokens)
    assert during_connect.value.code == "REVOKED_ACCESS_TOKEN"
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_unknown_token_needs_reconnect(adapter: LinkedInAdapter) -> None:
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_accounts(TokenSet(access_token="li_at_never_issued_by_anyone"))
    assert info.value.code == "INVALID_ACCESS_TOKEN"
    assert_no_secret(info.value, "li_at_never_issued_by_anyone")


def test_expired_token_asks_for_refresh(adapter: LinkedInAdapter, fake: FakePlatformServer) -> None:
    _, fresh = expire_then_refresh(adapter, fake, connect(adapter, user="partner"))
    assert adapter.fetch_accounts(fresh)[0].platform_account_id == "Zx9PartnerQ"


def test_429_waits_until_midnight_utc(make: Any, fake: FakePlatformServer) -> None:
    adapter = make(clock=lambda: datetime(2026, 11, 26, 22, 30, tzinfo=UTC))
    tokens = connect(adapter)
    fake.fail("/linkedin/v2/userinfo", fake_li.rate_limited())
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(tokens)
    assert info.value.retry_after == 90 * 60


def test_429_on_followers_does_not_fail_connect_but_does_fail_sync(
    analytics: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    adapter = analytics
    tokens = connect(adapter, user="partner")
    fake.fail("/linkedin/rest/", fake_li.rate_limited())
    assert adapter.fetch_accounts(tokens)[0].stats.followers is None
    fake.fail("/linkedin/rest/", fake_li.rate_limited())
    with pytest.raises(RateLimited):
        adapter.fetch_stats("Zx9PartnerQ", tokens)


def test_revoke_is_off_by_default(adapter: LinkedInAdapter, fake: FakePlatformServer) -> None:
    assert_no_revocation(adapter, fake, connect(adapter))


def test_revoke_with_override_uses_rfc7009_with_body_credentials(make: Any, fake: FakePlatformServer) -> None:
    adapter = make(linkedin_revoke_url=f"{fake.base_url}/linkedin/oauth/v2/revoke")
    tokens = connect(adapter, user="partner")
    assert adapter.revoke(tokens) == "revoked"
    call = next(r for r in fake.requests if r.path == "/linkedin/oauth/v2/revoke")
    assert call.form["client_id"] == fake_li.CLIENT_ID and call.form["token"] == tokens.refresh_token
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_5xx_and_connection_refused_are_transient(make: Any, fake: FakePlatformServer) -> None:
    adapter = make()
    tokens = connect(adapter)
    fake.fail("/linkedin/v2/userinfo", FakeResponse(504, "gateway timeout"))
    assert_transient(lambda: adapter.fetch_accounts(tokens), status=504)
    offline = make(linkedin_api_url=unused_port_url() + "/v2")
    assert_transient(lambda: offline.fetch_accounts(tokens))


def test_unknown_code_is_refused_and_a_bad_request_is_permanent(
    adapter: LinkedInAdapter, fake: FakePlatformServer
) -> None:
    with pytest.raises(NeedsReconnect):  # invalid_grant from the token endpoint
        adapter.exchange_code(code="code_unknown", redirect_uri=adapter.settings.redirect_uri, code_verifier=None)
    tokens = connect(adapter)
    fake.fail("/linkedin/v2/userinfo", FakeResponse(400, {"status": 400, "message": "Unpermitted fields"}))
    with pytest.raises(Permanent):
        adapter.fetch_accounts(tokens)


def test_errors_never_carry_tokens(adapter: LinkedInAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter, user="partner")
    fake.fail(
        "/linkedin/oauth/v2/accessToken",
        FakeResponse(400, {"error": "invalid_grant", "error_description": f"token {tokens.refresh_token} expired"}),
    )
    with pytest.raises(NeedsReconnect) as info:
        adapter.refresh(tokens)
    assert_no_secret(info.value, tokens.refresh_token, tokens.access_token, fake_li.CLIENT_SECRET)
