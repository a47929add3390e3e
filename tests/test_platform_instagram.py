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

GRAPH = "/meta/graph/v27.0"
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
    assert base == "https://www.facebook.com/v27.0/dialog/oauth"
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


def test_fetch_accounts_returns_each_linked_instagram_account_with_its_page_token(
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
        assert profile.refresh_model == "none"  # a Page token from a long-lived user token never expires
        assert profile.tokens.access_token != tokens.access_token  # the user token is not kept
        assert profile.tokens.expires_at is None and profile.tokens.refresh_token is None
        assert profile.tokens.metadata["meta_user_id"] == "10001"
        assert profile.tokens.metadata["token_type"] == "page"
        assert META.tokens[profile.tokens.access_token].kind == "page"
    assert [a.tokens.metadata["page_id"] for a in accounts] == ["201", "203"]
    assert META.tokens[bakery.tokens.access_token].page_id == "201"
    # the Instagram account was read with its Page's token
    (ig_read,) = [r for r in fake.requests if r.path == f"{GRAPH}/{IG_BAKERY}"]
    assert ig_read.headers["authorization"] == f"Bearer {bakery.tokens.access_token}"
    assert all("access_token" not in r.query for r in fake.requests)


def test_user_without_pages_has_no_instagram_accounts(adapter: InstagramAdapter, http: httpx.Client):
    assert adapter.fetch_accounts(connect(adapter, http, "bob")) == []


def test_fetch_stats(adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer):
    fake.reset_log()
    stats = adapter.fetch_stats(IG_BAKERY, account.tokens)
    assert (stats.followers, stats.following, stats.posts) == (1200, 80, 45)
    (request,) = fake.requests
    assert request.query["fields"] == "followers_count,follows_count,media_count"


# ---- refresh: nothing to do -------------------------------------------------------------------


def test_sixty_one_days_later_the_page_token_still_works_and_nothing_is_exchanged(
    settings_factory: Any, http: httpx.Client, account: AccountProfile, fake: FakePlatformServer
):
    """What killed accounts at day 60: the stored token was the 60-day user token."""
    later = InstagramAdapter(settings_factory(), http, clock=lambda: datetime.now(UTC) + timedelta(days=61))
    fake.reset_log()
    with pytest.raises(Permanent):  # the worker never asks (refresh_model "none"); if asked, nothing to do
        later.refresh(account.tokens)
    assert fake.requests == []
    assert later.fetch_stats(IG_BAKERY, account.tokens).followers == 1200
    assert not [r for r in fake.requests if r.form.get("grant_type") == "fb_exchange_token"]


def test_a_page_token_only_reads_its_own_instagram_account(adapter: InstagramAdapter, account: AccountProfile):
    with pytest.raises(Permanent) as info:
        adapter.fetch_stats(IG_BOOKS, account.tokens)  # Books hangs on Page 203, not 201
    assert info.value.code == "100/33"


def test_lost_page_role_or_revoked_app_is_code_190_needs_reconnect(
    adapter: InstagramAdapter, account: AccountProfile, fake: FakePlatformServer
):
    fake.fail(
        f"{GRAPH}/{IG_BAKERY}", meta_error(190, "Error validating access token: user is not an admin", subcode=460)
    )
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_stats(IG_BAKERY, account.tokens)
    assert info.value.code == "190/460"


def test_account_still_on_a_user_token_swaps_it_for_the_page_token_on_refresh(
    adapter: InstagramAdapter, http: httpx.Client, fake: FakePlatformServer
):
    user = connect(adapter, http)
    legacy = user.replace(metadata={**user.metadata, "meta_user_id": "10001", "page_id": "201"})
    fake.reset_log()
    fresh = adapter.refresh(legacy)
    assert fresh.access_token != user.access_token and META.tokens[fresh.access_token].kind == "page"
    assert fresh.expires_at is None and fresh.metadata["token_type"] == "page" and fresh.metadata["page_id"] == "201"
    assert [r.form.get("grant_type") for r in fake.requests if r.method == "POST"] == []  # no fb_exchange_token
    assert adapter.fetch_stats(IG_BAKERY, fresh).followers == 1200


def test_legacy_user_token_that_expired_needs_reconnect_without_a_call(
    settings_factory: Any, http: httpx.Client, adapter: InstagramAdapter, fake: FakePlatformServer
):
    user = connect(adapter, http)
    legacy = user.replace(metadata={**user.metadata, "page_id": "201"})
    later = InstagramAdapter(settings_factory(), http, clock=lambda: datetime.now(UTC) + timedelta(days=61))
    fake.reset_log()
    with pytest.raises(NeedsReconnect):
        later.refresh(legacy)
    assert fake.requests == []


def test_legacy_refresh_on_connection_refused_is_transient(
    settings_factory: Any, http: httpx.Client, adapter: InstagramAdapter
):
    user = connect(adapter, http)
    legacy = user.replace(metadata={**user.metadata, "page_id": "201"})
    dead = InstagramAdapter(settings_factory(instagram_api_url=f"{unused_port_url()}/v27.0"), http)
    assert_transient(lambda: dead.refresh(legacy))


# ---- Business Manager ---------------------------------------------------------------------------


def test_instagram_accounts_of_business_manager_pages_are_found(adapter: InstagramAdapter, http: httpx.Client):
    accounts = adapter.fetch_accounts(connect(adapter, http, "dora"))
    assert [a.platform_account_id for a in accounts] == ["17841400000301", "17841400000302"]
    assert [a.tokens.metadata["page_id"] for a in accounts] == ["301", "302"]


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
    adapter: InstagramAdapter, http: httpx.Client, fake: FakePlatformServer
):
    tokens = connect(adapter, http)
    fake.fail(f"{GRAPH}/me/accounts", meta_error(4, "Application request limit reached"))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(tokens)
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
