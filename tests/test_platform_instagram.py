"""InstagramAdapter (Facebook Login) against the fake Meta Graph."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from platforms.instagram import InstagramAdapter
from social_accounts.errors import NeedsReconnect, Permanent, PlatformError, RateLimited
from social_accounts.values import AccountProfile
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import facebook as fakemeta
from tests.fakeplatform.core import unused_port_url
from tests.fakeplatform.facebook import META, buc_header, meta_error
from tests.platform_support import REDIRECT, assert_no_secret, assert_transient, split_url
from tests.platform_support import meta_connect as connect

GRAPH = "/meta/graph/v21.0"
IG_BAKERY = "17841400000001"
IG_BOOKS = "17841400000003"


pytestmark = [pytest.mark.unit, pytest.mark.adapter.with_args(InstagramAdapter), pytest.mark.fake_world.with_args(META)]


@pytest.fixture
def account(adapter: InstagramAdapter, http: httpx.Client) -> AccountProfile:
    return adapter.fetch_accounts(connect(adapter, http))[0]


# ---- authorization and exchange -------------------------------------------------------------


def test_authorization_url_uses_meta_dialog_with_instagram_scopes(settings_factory: Any, http: httpx.Client):
    adapter = InstagramAdapter(settings_factory(instagram_authorize_url=None), http)
    url = adapter.authorization_url(state="abc", redirect_uri=REDIRECT, code_challenge="ignored")
    base, query = split_url(url)
    assert base == "https://www.facebook.com/v21.0/dialog/oauth"
    scopes = query["scope"].split(",")
    assert {"instagram_basic", "pages_show_list", "pages_read_engagement"} <= set(scopes)
    assert query["client_id"] == fakemeta.APP_ID and query["state"] == "abc" and query["response_type"] == "code"
    assert "code_challenge" not in query
    assert InstagramAdapter.required_env == ("META_APP_ID", "META_APP_SECRET")


def test_exchange_returns_long_lived_user_token(
    adapter: InstagramAdapter, http: httpx.Client, fake: FakePlatformServer
):
    before = datetime.now(UTC)
    tokens = connect(adapter, http)
    assert tokens.access_token.startswith("EAAl")
    assert tokens.expires_at is not None
    assert abs((tokens.expires_at - before).total_seconds() - fakemeta.LONG_LIVED) < 30
    assert fake.count(f"{GRAPH}/oauth/access_token", "POST") == 2


# ---- accounts and stats ------------------------------------------------------------------------


def test_fetch_accounts_returns_each_linked_instagram_account(
    adapter: InstagramAdapter, http: httpx.Client, fake: FakePlatformServer
):
    tokens = connect(adapter, http)
    fake.reset_log()
    accounts = adapter.fetch_accounts(tokens)

    assert fake.count(f"{GRAPH}/me/accounts") == 2  # paginated: three Pages over two result pages
    assert [a.platform_account_id for a in accounts] == [IG_BAKERY, IG_BOOKS]  # Page 202 has no IG account
    bakery = accounts[0]
    assert (bakery.handle, bakery.name) == ("alice.bakery", "Bakery")
    assert bakery.avatar_url == f"https://cdn.example.test/ig/{IG_BAKERY}.jpg"
    assert (bakery.stats.followers, bakery.stats.following, bakery.stats.posts) == (1200, 80, 45)
    for profile in accounts:
        assert profile.refresh_model == "extend"
        assert profile.tokens.access_token == tokens.access_token  # the long-lived user token
        assert profile.tokens.expires_at == tokens.expires_at
        assert profile.tokens.metadata["meta_user_id"] == "10001"
    assert [a.tokens.metadata["page_id"] for a in accounts] == ["201", "203"]
    assert all("access_token" not in r.query for r in fake.requests)


def test_user_without_pages_has_no_instagram_accounts(adapter: InstagramAdapter, http: httpx.Client):
    assert adapter.fetch_accounts(connect(adapter, http, "bob")) == []


def test_fetch_stats(adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer):
    fake.reset_log()
    stats = adapter.fetch_stats(IG_BAKERY, account.tokens)
    assert (stats.followers, stats.following, stats.posts) == (1200, 80, 45)
    (request,) = fake.requests
    assert request.query["fields"] == "followers_count,follows_count,media_count"


# ---- refresh (extend) --------------------------------------------------------------------------


def test_refresh_exchanges_the_current_token_for_a_new_long_lived_one(
    adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer
):
    fake.reset_log()
    fresh = adapter.refresh(account.tokens)
    assert fresh.access_token != account.tokens.access_token
    assert fresh.access_token.startswith("EAAl")
    assert fresh.expires_at is not None and account.tokens.expires_at is not None
    assert fresh.expires_at >= account.tokens.expires_at
    assert fresh.metadata["meta_user_id"] == "10001" and fresh.metadata["page_id"] == "201"
    (request,) = fake.requests
    assert request.form["grant_type"] == "fb_exchange_token"
    assert request.form["fb_exchange_token"] == account.tokens.access_token
    assert adapter.fetch_stats(IG_BAKERY, fresh).followers == 1200  # the new token works


def test_refresh_of_an_expired_token_needs_reconnect_without_a_call(
    settings_factory: Any, http: httpx.Client, account: AccountProfile, fake: FakePlatformServer
):
    later = InstagramAdapter(settings_factory(), http, clock=lambda: datetime.now(UTC) + timedelta(days=61))
    fake.reset_log()
    with pytest.raises(NeedsReconnect):
        later.refresh(account.tokens)
    assert fake.requests == []


def test_refresh_refused_by_meta_as_expired_needs_reconnect(
    adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer
):
    fake.grants.expire_access(account.tokens.access_token)
    with pytest.raises(NeedsReconnect) as info:
        adapter.refresh(account.tokens)
    assert info.value.code == "190/463"
    assert_no_secret(info.value, account.tokens.access_token)


def test_refresh_on_connection_refused_is_transient(settings_factory: Any, http: httpx.Client, account: AccountProfile):
    dead = InstagramAdapter(settings_factory(instagram_token_url=f"{unused_port_url()}/oauth/access_token"), http)
    assert_transient(lambda: dead.refresh(account.tokens))


# ---- revoke ------------------------------------------------------------------------------------


def test_revoke_deauthorizes_and_kills_the_token(adapter: InstagramAdapter, account: AccountProfile):
    assert adapter.revoke(account.tokens) == "revoked"
    assert META.revocations == ["10001"]
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_stats(IG_BAKERY, account.tokens)
    assert info.value.code == "190/458"


# ---- errors ------------------------------------------------------------------------------------


def test_buc_throttle_on_instagram_account(
    adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer
):
    headers = buc_header(IG_BAKERY, 100, regain_minutes=3, kind="instagram")
    fake.fail(
        f"{GRAPH}/{IG_BAKERY}",
        meta_error(80002, "There have been too many calls to this Instagram account", headers=headers),
    )
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats(IG_BAKERY, account.tokens)
    assert info.value.retry_after == 180
    assert info.value.scope == "account"
    assert info.value.code == "80002"


def test_app_throttle_code_4_holds_back_the_whole_app(
    adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer
):
    fake.fail(f"{GRAPH}/me/accounts", meta_error(4, "Application request limit reached"))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(account.tokens)
    assert info.value.scope == "app"
    assert info.value.retry_after == 3600


def test_5xx_is_transient(adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer):
    fake.fail(f"{GRAPH}/{IG_BAKERY}", FakeResponse(503, "Service Unavailable"))
    assert_transient(lambda: adapter.fetch_stats(IG_BAKERY, account.tokens), status=503)


def test_unknown_account_is_permanent(adapter: InstagramAdapter, account: AccountProfile):
    with pytest.raises(Permanent) as info:
        adapter.fetch_stats("17840000000000", account.tokens)
    assert info.value.code == "100/33"


def test_no_token_in_any_error(adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer):
    token = account.tokens.access_token
    for code, kind in ((190, NeedsReconnect), (80001, RateLimited), (100, Permanent)):
        fake.fail(f"{GRAPH}/{IG_BAKERY}", meta_error(code, f"Problem with token {token}"))
        with pytest.raises(PlatformError) as info:
            adapter.fetch_stats(IG_BAKERY, account.tokens)
        assert isinstance(info.value, kind)
        assert_no_secret(info.value, token)
