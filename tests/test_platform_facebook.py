"""FacebookAdapter against the fake Meta Graph: every operation and every error class."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from platforms.facebook import FacebookAdapter
from platforms.meta import APP_THROTTLE_SECONDS, THROTTLE_SECONDS, appsecret_proof, usage_near_limit
from social_accounts.errors import NeedsReconnect, Permanent, PlatformError, RateLimited, RequestMaybeSent, Transient
from social_accounts.values import TokenSet
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import facebook as fakemeta
from tests.fakeplatform.core import closed_port
from tests.fakeplatform.facebook import META, buc_header, follow_dialog, meta_error
from tests.platform_support import REDIRECT, assert_no_secret, assert_transient, split_url
from tests.platform_support import meta_connect as connect

GRAPH = "/meta/graph/v27.0"


pytestmark = [pytest.mark.unit, pytest.mark.adapter.with_args(FacebookAdapter), pytest.mark.fake_world.with_args(META)]


# ---- authorization URL ---------------------------------------------------------------------


def test_authorization_url_is_meta_dialog_with_comma_scopes_and_no_pkce(settings_factory: Any, http: httpx.Client):
    adapter = FacebookAdapter(settings_factory(facebook_authorize_url=None), http)
    url = adapter.authorization_url(state="abc", redirect_uri=REDIRECT, code_challenge="challenge-value")
    base, query = split_url(url)
    assert base == "https://www.facebook.com/v27.0/dialog/oauth"
    assert query["client_id"] == fakemeta.APP_ID
    assert query["redirect_uri"] == REDIRECT
    assert query["state"] == "abc"
    assert query["response_type"] == "code"
    assert query["scope"].split(",")[:2] == ["pages_show_list", "pages_read_engagement"]
    assert " " not in query["scope"]
    assert "code_challenge" not in query
    assert fakemeta.APP_SECRET not in url


def test_graph_version_comes_from_settings(settings_factory: Any, http: httpx.Client):
    adapter = FacebookAdapter(
        settings_factory(
            facebook_authorize_url=None, facebook_api_url=None, facebook_token_url=None, meta_graph_version="v25.0"
        ),
        http,
    )
    assert adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None).startswith(
        "https://www.facebook.com/v25.0/dialog/oauth?"
    )
    assert adapter.token_endpoint() == "https://graph.facebook.com/v25.0/oauth/access_token"


def test_required_env_names_the_meta_credentials(settings_factory: Any, http: httpx.Client):
    adapter = FacebookAdapter(settings_factory(meta_app_secret=None), http)
    assert adapter.missing_env() == ["META_APP_SECRET"]
    assert FacebookAdapter.required_env == ("META_APP_ID", "META_APP_SECRET")


def test_denying_user_comes_back_with_access_denied(adapter: FacebookAdapter, http: httpx.Client):
    url = adapter.authorization_url(state="st", redirect_uri=REDIRECT, code_challenge=None)
    query = follow_dialog(http, url, "carol")
    assert query["error"] == "access_denied"
    assert query["state"] == "st"
    assert "code" not in query


# ---- code exchange -----------------------------------------------------------------------------


def test_exchange_follows_up_with_long_lived_token(
    adapter: FacebookAdapter, http: httpx.Client, fake: FakePlatformServer
):
    before = datetime.now(UTC)
    tokens = connect(adapter, http)
    assert tokens.access_token.startswith("EAAl")  # the long-lived one, not the 1-hour one
    assert tokens.refresh_token is None
    assert tokens.metadata["long_lived"] is True
    assert tokens.expires_at is not None
    assert before + timedelta(seconds=fakemeta.LONG_LIVED - 5) <= tokens.expires_at
    token_calls = [r for r in fake.requests if r.path == f"{GRAPH}/oauth/access_token"]
    assert [r.method for r in token_calls] == ["POST", "POST"]
    assert "code" in token_calls[0].form and "grant_type" not in token_calls[0].form
    assert token_calls[1].form["grant_type"] == "fb_exchange_token"
    for request in token_calls:  # credentials in the body, never in the URL
        assert request.query == {}
        assert request.form["client_secret"] == fakemeta.APP_SECRET


def test_reused_code_is_permanent(adapter: FacebookAdapter, http: httpx.Client):
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    with pytest.raises(Permanent) as info:
        adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    assert info.value.code == "100/36007"
    assert_no_secret(info.value, code)


def test_wrong_app_secret_is_permanent(settings_factory: Any, http: httpx.Client):
    adapter = FacebookAdapter(settings_factory(meta_app_secret="not-the-secret"), http)
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    with pytest.raises(Permanent) as info:
        adapter.exchange_code(code=follow_dialog(http, url)["code"], redirect_uri=REDIRECT, code_verifier=None)
    assert info.value.code == "1"
    assert_no_secret(info.value, "not-the-secret")


def test_exchange_timeout_is_request_maybe_sent(settings_factory: Any, http: httpx.Client, fake: FakePlatformServer):
    adapter = FacebookAdapter(settings_factory(http_timeout_seconds=0.3), http)
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    fake.fail(f"{GRAPH}/oauth/access_token", FakeResponse(200, {"access_token": "late"}), delay=1.0)
    with pytest.raises(RequestMaybeSent):
        adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)


def test_failed_long_lived_follow_up_keeps_short_token_and_upgrades_later(
    settings_factory: Any, fake: FakePlatformServer
):
    """The code is spent after the first call: a 5xx on the follow-up must not lose the login."""

    def break_follow_up(request: httpx.Request) -> None:
        if b"fb_exchange_token" in request.read():
            fake.fail(f"{GRAPH}/oauth/access_token", meta_error(2, "Service temporarily unavailable", status=503))

    with fake.client(event_hooks={"request": [break_follow_up]}) as client:
        adapter = FacebookAdapter(settings_factory(), client)
        url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
        tokens = adapter.exchange_code(
            code=follow_dialog(client, url)["code"], redirect_uri=REDIRECT, code_verifier=None
        )
        assert tokens.access_token.startswith("EAAs")
        assert tokens.metadata["long_lived"] is False

    with fake.client() as client:
        accounts = FacebookAdapter(settings_factory(), client).fetch_accounts(tokens)
    assert len(accounts) == 3
    exchanges = [r for r in fake.requests if r.form.get("grant_type") == "fb_exchange_token"]
    assert len(exchanges) == 2  # the failed follow-up, then the upgrade inside fetch_accounts
    # Page tokens issued from the long-lived user token never expire at the fake either
    page_token = accounts[0].tokens.access_token
    grant_id, expires = fake.grants.access[page_token]
    assert expires == float("inf")


# ---- accounts ------------------------------------------------------------------------------------


def test_fetch_accounts_returns_every_page_across_result_pages(
    adapter: FacebookAdapter, http: httpx.Client, fake: FakePlatformServer
):
    tokens = connect(adapter, http)
    fake.reset_log()
    accounts = adapter.fetch_accounts(tokens)

    assert fake.count(f"{GRAPH}/me/accounts") == 2  # three Pages, two per result page
    assert [a.platform_account_id for a in accounts] == ["201", "202", "203"]
    assert [a.name for a in accounts] == ["Alice Bakery", "Alice Cafe", "Alice Books"]
    assert [a.handle for a in accounts] == ["alicebakery", None, "alicebooks"]
    assert accounts[0].avatar_url == "https://cdn.example.test/page/201.jpg"
    page_tokens = {a.tokens.access_token for a in accounts}
    assert len(page_tokens) == 3 and tokens.access_token not in page_tokens
    for account in accounts:
        assert account.refresh_model == "none"
        assert account.tokens.expires_at is None
        assert account.tokens.refresh_token is None
        assert account.tokens.metadata["meta_user_id"] == "10001"
        assert account.stats.followers is None  # not fetched at connect; the first sync does
    # the token never travels in a URL, even though Meta's paging.next carries one
    assert all("access_token" not in r.query for r in fake.requests)
    assert all(r.headers.get("authorization", "").startswith("Bearer ") for r in fake.requests)


def test_business_manager_pages_are_added_and_deduplicated(
    adapter: FacebookAdapter, http: httpx.Client, fake: FakePlatformServer
):
    tokens = connect(adapter, http, "dora")
    META.page_size = 1  # every edge answers one Page per result page
    fake.reset_log()
    accounts = adapter.fetch_accounts(tokens)
    # 301 from /me/accounts (also owned by the business: once), 302 owned, 303 a client's Page
    assert [a.platform_account_id for a in accounts] == ["301", "302", "303"]
    assert [a.name for a in accounts] == ["Dora Shop", "Dora Outlet", "Client Co"]
    assert fake.count(f"{GRAPH}/me/businesses") == 1
    assert fake.count(f"{GRAPH}/9001/owned_pages") == 2  # two result pages, followed
    assert fake.count(f"{GRAPH}/9001/client_pages") == 1
    for account in accounts:
        assert fakemeta.META.tokens[account.tokens.access_token].page_id == account.platform_account_id
        assert "business_management" in account.tokens.scopes
    assert adapter.fetch_stats("302", accounts[1].tokens).followers == 450  # its Page token works


def test_without_business_management_no_business_is_walked(
    adapter: FacebookAdapter, http: httpx.Client, fake: FakePlatformServer
):
    tokens = connect(adapter, http, "erin")  # declines business_management in the dialog
    fake.reset_log()
    accounts = adapter.fetch_accounts(tokens)
    assert [a.platform_account_id for a in accounts] == ["301"]
    assert "business_management" not in accounts[0].tokens.scopes
    assert fake.count(f"{GRAPH}/me/businesses") == 0
    assert fake.count(f"{GRAPH}/9001/*") == 0


def test_a_business_edge_refused_for_a_permission_is_skipped(
    adapter: FacebookAdapter, http: httpx.Client, fake: FakePlatformServer
):
    tokens = connect(adapter, http, "dora")
    fake.fail(f"{GRAPH}/9001/client_pages", meta_error(200, "(#200) Permissions error", status=403))
    assert [a.platform_account_id for a in adapter.fetch_accounts(tokens)] == ["301", "302"]


def test_appsecret_proof_is_sent_and_valid(adapter: FacebookAdapter, http: httpx.Client, fake: FakePlatformServer):
    tokens = connect(adapter, http)
    META.require_proof = True  # the fake now refuses Graph reads without a correct proof
    fake.reset_log()
    assert len(adapter.fetch_accounts(tokens)) == 3
    first = fake.requests[0]
    assert first.query["appsecret_proof"] == appsecret_proof(tokens.access_token, fakemeta.APP_SECRET)


def test_wrong_appsecret_proof_is_refused(settings_factory: Any, http: httpx.Client):
    tokens = connect(FacebookAdapter(settings_factory(), http), http)
    wrong = FacebookAdapter(settings_factory(meta_app_secret="another-secret-value"), http)
    with pytest.raises(Permanent) as info:
        wrong.fetch_accounts(tokens)
    assert info.value.code == "100"


def test_user_without_pages_has_no_accounts(adapter: FacebookAdapter, http: httpx.Client):
    assert adapter.fetch_accounts(connect(adapter, http, "bob")) == []


def test_paging_next_on_another_host_is_not_followed(
    adapter: FacebookAdapter, fake: FakePlatformServer, http: httpx.Client
):
    tokens = connect(adapter, http)
    body = {
        "data": [{"id": "9", "name": "X", "access_token": "EAApzzz"}],
        "paging": {"next": "https://evil.example/next"},
    }
    fake.fail(f"{GRAPH}/me/accounts", FakeResponse(200, body))
    with pytest.raises(Permanent, match="another host"):
        adapter.fetch_accounts(tokens)


# ---- stats ----------------------------------------------------------------------------------------


def test_fetch_stats_reads_followers_count_not_fan_count(adapter: FacebookAdapter, http: httpx.Client):
    page = adapter.fetch_accounts(connect(adapter, http))[0]
    stats = adapter.fetch_stats(page.platform_account_id, page.tokens)
    assert stats.followers == 5120  # fan_count (likes) would be 4800
    assert stats.following is None and stats.posts is None


def test_page_tokens_have_nothing_to_refresh(adapter: FacebookAdapter, http: httpx.Client):
    page = adapter.fetch_accounts(connect(adapter, http))[0]
    with pytest.raises(Permanent):
        adapter.refresh(page.tokens)


# ---- revoke -----------------------------------------------------------------------------------------


def test_revoke_deauthorizes_the_user_with_the_app_token(
    adapter: FacebookAdapter, http: httpx.Client, fake: FakePlatformServer
):
    page = adapter.fetch_accounts(connect(adapter, http))[0]
    fake.reset_log()
    assert adapter.revoke(page.tokens) == "revoked"
    (request,) = [r for r in fake.requests if r.method == "DELETE"]
    assert request.path == f"{GRAPH}/10001/permissions"
    assert request.headers["authorization"] == f"Bearer {fakemeta.APP_ID}|{fakemeta.APP_SECRET}"
    assert request.query == {}
    assert META.revocations == ["10001"]
    with pytest.raises(NeedsReconnect) as info:  # the Page token died with the authorization
        adapter.fetch_stats(page.platform_account_id, page.tokens)
    assert info.value.code == "190/458"


def test_revoke_without_user_id_is_permanent(adapter: FacebookAdapter):
    with pytest.raises(Permanent):
        adapter.revoke(TokenSet(access_token="EAApage"))


# ---- errors -------------------------------------------------------------------------------------------


@pytest.fixture
def page(adapter: FacebookAdapter, http: httpx.Client) -> Any:
    return adapter.fetch_accounts(connect(adapter, http))[0]


def test_page_throttle_uses_regain_time_from_buc_header(adapter: FacebookAdapter, fake: FakePlatformServer, page: Any):
    headers = buc_header("201", 100, regain_minutes=7)
    fake.fail(f"{GRAPH}/201", meta_error(32, "Page request limit reached", headers=headers))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats("201", page.tokens)
    assert info.value.retry_after == 7 * 60
    assert info.value.scope == "account"
    assert info.value.code == "32"


@pytest.mark.parametrize(
    ("code", "scope", "wait"),
    [
        (4, "app", APP_THROTTLE_SECONDS),
        (17, "account", THROTTLE_SECONDS),
        (613, "account", THROTTLE_SECONDS),
        (80001, "account", THROTTLE_SECONDS),
        (80014, "account", THROTTLE_SECONDS),
    ],
)
def test_throttle_codes_without_estimate_use_defaults(
    adapter: FacebookAdapter, fake: FakePlatformServer, page: Any, code: int, scope: str, wait: float
):
    fake.fail(f"{GRAPH}/201", meta_error(code, "Application request limit reached", status=403))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats("201", page.tokens)
    assert (info.value.retry_after, info.value.scope) == (wait, scope)


def test_expired_token_needs_reconnect(adapter: FacebookAdapter, fake: FakePlatformServer, page: Any):
    fake.grants.expire_access(page.tokens.access_token)
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_stats("201", page.tokens)
    assert info.value.code == "190/463"
    assert_no_secret(info.value, page.tokens.access_token)


def test_code_102_needs_reconnect(adapter: FacebookAdapter, fake: FakePlatformServer, page: Any):
    fake.fail(f"{GRAPH}/201", meta_error(102, "Session key invalid or no longer valid"))
    with pytest.raises(NeedsReconnect):
        adapter.fetch_stats("201", page.tokens)


@pytest.mark.parametrize(
    "response", [meta_error(2, "Service temporarily unavailable", status=500), FakeResponse(502, "bad gateway")]
)
def test_server_errors_are_transient(
    adapter: FacebookAdapter, fake: FakePlatformServer, page: Any, response: FakeResponse
):
    fake.fail(f"{GRAPH}/201", response)
    assert_transient(lambda: adapter.fetch_stats("201", page.tokens), status=response.status)


def test_connection_refused_is_transient(settings_factory: Any, http: httpx.Client, page: Any):
    dead = f"http://127.0.0.1:{closed_port()}/v27.0"
    adapter = FacebookAdapter(settings_factory(facebook_api_url=dead, facebook_token_url=None), http)
    assert_transient(lambda: adapter.fetch_stats("201", page.tokens))
    with pytest.raises(Transient):  # the token endpoint follows the API base
        adapter.exchange_code(code="code_x", redirect_uri=REDIRECT, code_verifier=None)


def test_unknown_object_and_missing_permission_are_permanent(
    adapter: FacebookAdapter, fake: FakePlatformServer, page: Any
):
    with pytest.raises(Permanent) as info:
        adapter.fetch_stats("999", page.tokens)
    assert info.value.code == "100/33"
    fake.fail(f"{GRAPH}/201", meta_error(200, "(#200) Requires pages_read_engagement permission", status=403))
    with pytest.raises(Permanent) as info:
        adapter.fetch_stats("201", page.tokens)
    assert info.value.code == "200"


def test_no_token_in_any_error(adapter: FacebookAdapter, fake: FakePlatformServer, page: Any):
    token = page.tokens.access_token
    leaky = f"Error validating access token {token} for app {fakemeta.APP_ID}|{fakemeta.APP_SECRET}"
    for code in (190, 4, 100):
        fake.fail(f"{GRAPH}/201", meta_error(code, leaky))
        with pytest.raises(PlatformError) as info:
            adapter.fetch_stats("201", page.tokens)
        assert_no_secret(info.value, token, fakemeta.APP_SECRET)
    assert "redacted" in str(info.value)


# ---- usage headers --------------------------------------------------------------------------------------


def test_usage_near_limit_reads_the_fake_headers(page: Any, http: httpx.Client, fake: FakePlatformServer):
    def get() -> httpx.Response:
        url = f"{fake.base_url}{GRAPH}/201"
        return http.get(url, params={"fields": "id"}, headers={"Authorization": f"Bearer {page.tokens.access_token}"})

    assert usage_near_limit(get()) is None
    META.usage_percent = 96
    assert usage_near_limit(get()) == 300.0
    META.regain_minutes = 12
    assert usage_near_limit(get()) == 720.0


def test_usage_near_limit_reads_app_usage_alone():
    response = httpx.Response(200, headers={"X-App-Usage": '{"call_count": 40, "total_cputime": 97, "total_time": 10}'})
    assert usage_near_limit(response) == 300.0
    assert usage_near_limit(httpx.Response(200, headers={"X-App-Usage": "not json"})) is None
    assert usage_near_limit(httpx.Response(200)) is None
