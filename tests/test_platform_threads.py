"""ThreadsAdapter against the fake Threads API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from platforms.threads import ThreadsAdapter
from social_accounts.errors import NeedsReconnect, Permanent, PlatformError, RateLimited
from social_accounts.values import AccountProfile
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import threads as fakethreads
from tests.fakeplatform.core import closed_port
from tests.fakeplatform.facebook import follow_dialog, meta_error
from tests.fakeplatform.threads import THREADS
from tests.platform_support import REDIRECT, assert_no_revocation, assert_no_secret, assert_transient, split_url
from tests.platform_support import meta_connect as connect

DAY = 24 * 3600


pytestmark = [
    pytest.mark.unit,
    pytest.mark.adapter.with_args(ThreadsAdapter),
    pytest.mark.fake_world.with_args(THREADS),
]


@pytest.fixture
def account(adapter: ThreadsAdapter, http: httpx.Client) -> AccountProfile:
    (profile,) = adapter.fetch_accounts(connect(adapter, http))
    return profile


# ---- authorization and exchange -------------------------------------------------------------


def test_authorization_url_uses_threads_app_and_comma_scopes(settings_factory: Any, http: httpx.Client):
    adapter = ThreadsAdapter(settings_factory(threads_authorize_url=None), http)
    url = adapter.authorization_url(state="abc", redirect_uri=REDIRECT, code_challenge="ignored")
    base, query = split_url(url)
    assert base == "https://threads.com/oauth/authorize"  # the current host, not threads.net
    assert query["client_id"] == fakethreads.APP_ID  # the Threads app id, not META_APP_ID
    assert query["scope"].split(",")[0] == "threads_basic"
    assert "threads_manage_insights" in query["scope"].split(",")
    assert (query["state"], query["response_type"], query["redirect_uri"]) == ("abc", "code", REDIRECT)
    assert "code_challenge" not in query
    assert ThreadsAdapter.required_env == ("THREADS_APP_ID", "THREADS_APP_SECRET")


def test_default_endpoints_are_graph_threads_com(settings_factory: Any, http: httpx.Client):
    adapter = ThreadsAdapter(settings_factory(threads_api_url=None, threads_token_url=None), http)
    assert adapter.api("v1.0/me") == "https://graph.threads.com/v1.0/me"
    assert adapter.api("refresh_access_token") == "https://graph.threads.com/refresh_access_token"
    assert adapter.endpoint("token_url", adapter.api("oauth/access_token")) == (
        "https://graph.threads.com/oauth/access_token"
    )


def test_endpoint_overrides_still_move_every_threads_call(adapter: ThreadsAdapter, fake: FakePlatformServer):
    """The fake is reached through THREADS_AUTHORIZE_URL / THREADS_API_URL, never threads.com."""
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    assert url.startswith(f"{fake.base_url}/threads/oauth/authorize?")
    assert adapter.api("v1.0/me") == f"{fake.base_url}/threads/v1.0/me"


def test_denying_user_comes_back_with_access_denied(adapter: ThreadsAdapter, http: httpx.Client):
    url = adapter.authorization_url(state="st", redirect_uri=REDIRECT, code_challenge=None)
    query = follow_dialog(http, url, "dave")
    assert query == {
        "error": "access_denied",
        "error_reason": "user_denied",
        "error_description": "Permissions error",
        "state": "st",
    }


def test_exchange_gets_user_id_and_long_lived_token(
    adapter: ThreadsAdapter, http: httpx.Client, fake: FakePlatformServer
):
    before = datetime.now(UTC)
    tokens = connect(adapter, http)
    assert tokens.access_token.startswith("THl")
    assert tokens.metadata == {"threads_user_id": "3141592653", "long_lived": True}
    assert tokens.expires_at is not None
    assert abs((tokens.expires_at - before).total_seconds() - fakethreads.LONG_LIVED) < 30
    (code_call,) = [r for r in fake.requests if r.path == "/threads/oauth/access_token"]
    assert code_call.method == "POST" and code_call.form["grant_type"] == "authorization_code"
    assert code_call.form["client_secret"] == fakethreads.APP_SECRET and code_call.query == {}
    (exchange,) = [r for r in fake.requests if r.path == "/threads/access_token"]
    assert exchange.method == "GET" and exchange.query["grant_type"] == "th_exchange_token"


def test_reused_code_is_permanent(adapter: ThreadsAdapter, http: httpx.Client):
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    with pytest.raises(Permanent) as info:
        adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    assert_no_secret(info.value, code)


def test_failed_long_lived_exchange_is_finished_by_fetch_accounts(
    settings_factory: Any, fake: FakePlatformServer, http: httpx.Client
):
    adapter = ThreadsAdapter(settings_factory(), http)
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    fake.fail("/threads/access_token", FakeResponse(500, "oops"))
    tokens = adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    assert tokens.access_token.startswith("THs") and tokens.metadata["long_lived"] is False
    (profile,) = adapter.fetch_accounts(tokens)
    assert profile.tokens.access_token.startswith("THl")
    assert profile.tokens.metadata["long_lived"] is True


# ---- accounts and stats ------------------------------------------------------------------------


def test_fetch_accounts_returns_the_profile_with_followers(adapter: ThreadsAdapter, account: AccountProfile):
    assert account.platform_account_id == "3141592653"
    assert (account.handle, account.name) == ("alice.threads", "Alice T")
    assert account.avatar_url == "https://cdn.example.test/threads/3141592653.jpg"
    assert account.refresh_model == "extend"
    assert account.stats.followers == 4321
    assert account.stats.following is None and account.stats.posts is None


def test_fetch_stats(adapter: ThreadsAdapter, account: AccountProfile, fake: FakePlatformServer):
    THREADS.followers = 5000
    fake.reset_log()
    stats = adapter.fetch_stats(account.platform_account_id, account.tokens)
    assert (stats.followers, stats.following, stats.posts) == (5000, None, None)
    (request,) = fake.requests
    assert request.path == "/threads/v1.0/3141592653/threads_insights"
    assert request.query == {"metric": "followers_count"}
    assert request.headers["authorization"] == f"Bearer {account.tokens.access_token}"


def test_missing_insights_permission_gives_none_not_failure(adapter: ThreadsAdapter, http: httpx.Client):
    (profile,) = adapter.fetch_accounts(connect(adapter, http, "erin"))
    assert profile.platform_account_id == "1618033988"
    assert profile.stats.followers is None
    assert adapter.fetch_stats(profile.platform_account_id, profile.tokens).followers is None


def test_rate_limit_on_stats_is_not_swallowed(
    adapter: ThreadsAdapter, account: AccountProfile, fake: FakePlatformServer
):
    fake.fail("/threads/v1.0/", meta_error(17, "User request limit reached"))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats(account.platform_account_id, account.tokens)
    assert (info.value.scope, info.value.retry_after) == ("account", 600)


# ---- refresh ------------------------------------------------------------------------------------


def test_refresh_extends_a_day_old_token(adapter: ThreadsAdapter, account: AccountProfile, fake: FakePlatformServer):
    THREADS.age(account.tokens.access_token, DAY + 60)
    fake.reset_log()
    fresh = adapter.refresh(account.tokens)
    (request,) = fake.requests
    assert request.path == "/threads/refresh_access_token"
    assert request.query["grant_type"] == "th_refresh_token"
    assert fresh.access_token != account.tokens.access_token
    assert fresh.metadata["threads_user_id"] == "3141592653"
    assert fresh.expires_at is not None and account.tokens.expires_at is not None
    assert fresh.expires_at >= account.tokens.expires_at
    assert adapter.fetch_stats(account.platform_account_id, fresh).followers == 4321


def test_refresh_of_a_too_young_token_is_refused(adapter: ThreadsAdapter, account: AccountProfile):
    with pytest.raises(Permanent) as info:
        adapter.refresh(account.tokens)
    assert not isinstance(info.value, NeedsReconnect)
    assert_no_secret(info.value, account.tokens.access_token)


def test_refresh_of_a_short_lived_token_exchanges_it(
    adapter: ThreadsAdapter, http: httpx.Client, fake: FakePlatformServer
):
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    fake.fail("/threads/access_token", FakeResponse(503, "busy"))
    short = adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    fresh = adapter.refresh(short)
    assert fresh.access_token.startswith("THl") and fresh.metadata["long_lived"] is True


def test_refresh_of_an_expired_token_needs_reconnect(
    settings_factory: Any, http: httpx.Client, account: AccountProfile, fake: FakePlatformServer
):
    later = ThreadsAdapter(settings_factory(), http, clock=lambda: datetime.now(UTC) + timedelta(days=61))
    fake.reset_log()
    with pytest.raises(NeedsReconnect):
        later.refresh(account.tokens)
    assert fake.requests == []
    fake.grants.expire_access(account.tokens.access_token)  # expired at the platform, not by our clock
    with pytest.raises(NeedsReconnect) as info:
        ThreadsAdapter(settings_factory(), http).refresh(account.tokens)
    assert info.value.code == "190/463"


# ---- revoke ------------------------------------------------------------------------------------


def test_revoke_is_none_by_default(adapter: ThreadsAdapter, account: AccountProfile, fake: FakePlatformServer):
    assert_no_revocation(adapter, fake, account.tokens)


def test_revoke_url_turns_on_rfc7009(
    settings_factory: Any, http: httpx.Client, account: AccountProfile, fake: FakePlatformServer
):
    adapter = ThreadsAdapter(settings_factory(threads_revoke_url=f"{fake.base_url}/threads/fake-revoke"), http)
    assert adapter.revoke(account.tokens) == "revoked"
    assert THREADS.revoked == [account.tokens.access_token]
    with pytest.raises(NeedsReconnect):
        adapter.fetch_stats(account.platform_account_id, account.tokens)


# ---- errors ------------------------------------------------------------------------------------


def test_app_throttle_on_profile(adapter: ThreadsAdapter, account: AccountProfile, fake: FakePlatformServer):
    fake.fail("/threads/v1.0/me", meta_error(4, "Application request limit reached"))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(account.tokens)
    assert (info.value.scope, info.value.retry_after, info.value.code) == ("app", 3600, "4")


def test_invalid_token_needs_reconnect(adapter: ThreadsAdapter, account: AccountProfile):
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_accounts(account.tokens.replace(access_token="THl-not-a-real-token-at-all-000000"))
    assert info.value.code == "190"


def test_5xx_and_connection_refused_are_transient(
    settings_factory: Any, http: httpx.Client, account: AccountProfile, fake: FakePlatformServer
):
    fake.fail("/threads/v1.0/me", meta_error(2, "Service temporarily unavailable", status=500))
    assert_transient(lambda: ThreadsAdapter(settings_factory(), http).fetch_accounts(account.tokens), status=500)
    dead = ThreadsAdapter(settings_factory(threads_api_url=f"http://127.0.0.1:{closed_port()}"), http)
    assert_transient(lambda: dead.fetch_stats(account.platform_account_id, account.tokens))


def test_permanent_error(adapter: ThreadsAdapter, account: AccountProfile):
    with pytest.raises(Permanent) as info:
        adapter.fetch_stats("999", account.tokens)
    assert info.value.code == "100/33"


def test_no_token_in_any_error(adapter: ThreadsAdapter, account: AccountProfile, fake: FakePlatformServer):
    token = account.tokens.access_token
    for code in (190, 4, 100):
        fake.fail("/threads/v1.0/me", meta_error(code, f"Error validating access token {token}"))
        with pytest.raises(PlatformError) as info:
            adapter.fetch_accounts(account.tokens)
        assert_no_secret(info.value, token, fakethreads.APP_SECRET)


def test_fake_deny_knob_also_denies(adapter: ThreadsAdapter, http: httpx.Client):
    url = adapter.authorization_url(state="st", redirect_uri=REDIRECT, code_challenge=None) + "&fake_deny=1"
    assert follow_dialog(http, url)["error"] == "access_denied"
