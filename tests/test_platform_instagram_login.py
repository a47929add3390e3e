"""InstagramLoginAdapter against the fake Instagram API with Instagram Login."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from platforms.base import RateHint
from platforms.http import observe_success
from platforms.instagram_login import MIN_REFRESH_AGE, InstagramLoginAdapter
from platforms.registry import adapter_class, platform_statuses
from social_accounts.errors import NeedsReconnect, NotNow, Permanent, PlatformError, RateLimited
from social_accounts.values import AccountProfile, TokenSet
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import instagram_login as fakeig
from tests.fakeplatform.core import closed_port
from tests.fakeplatform.facebook import buc_header, follow_dialog, meta_error
from tests.fakeplatform.instagram_login import IGLOGIN
from tests.platform_support import REDIRECT, assert_no_revocation, assert_no_secret, assert_transient, split_url
from tests.platform_support import meta_connect as connect
from workers.lifetimes import is_due, next_refresh_at

DAY = 24 * 3600
ALICE_IG_ID = "17841405822304914"
ALICE_SCOPED_ID = "10203040506070"

pytestmark = [
    pytest.mark.unit,
    pytest.mark.adapter.with_args(InstagramLoginAdapter),
    pytest.mark.fake_world.with_args(IGLOGIN),
]


@pytest.fixture
def account(adapter: InstagramLoginAdapter, http: httpx.Client) -> AccountProfile:
    (profile,) = adapter.fetch_accounts(connect(adapter, http))
    return profile


def aged(tokens: TokenSet, seconds: float) -> TokenSet:
    """The token set as if it (and its ``issued_at`` stamp) were ``seconds`` older, at the fake too."""
    IGLOGIN.age(tokens.access_token, seconds)
    issued = datetime.fromisoformat(tokens.metadata["issued_at"]) - timedelta(seconds=seconds)
    return tokens.replace(metadata={**tokens.metadata, "issued_at": issued.isoformat()})


# ---- registry, settings, authorization --------------------------------------------------------


def test_registered_beside_instagram_with_its_own_app_credentials(settings_factory: Any):
    assert adapter_class("instagram_login") is InstagramLoginAdapter
    assert InstagramLoginAdapter.required_env == ("INSTAGRAM_APP_ID", "INSTAGRAM_APP_SECRET")
    unset = settings_factory(instagram_app_id=None, instagram_app_secret="")
    (status,) = [s for s in platform_statuses(unset) if s.platform == "instagram_login"]
    assert (status.auth_type, status.configured) == ("oauth2", False)
    assert status.missing_env == ["INSTAGRAM_APP_ID", "INSTAGRAM_APP_SECRET"]
    (meta,) = [s for s in platform_statuses(unset) if s.platform == "instagram"]
    assert meta.configured  # the Facebook Login path needs META_APP_ID, not these
    (ready,) = [s for s in platform_statuses(settings_factory()) if s.platform == "instagram_login"]
    assert ready.configured and ready.missing_env == []


def test_doctor_names_what_the_instagram_login_path_still_needs(settings_factory: Any):
    from service.doctor import Check, check_platforms

    out: list[Check] = []
    check_platforms(settings_factory(instagram_app_secret=None), out)
    (line,) = [c for c in out if c.name == "platform instagram_login"]
    assert (line.status, line.detail) == ("info", "not configured: set INSTAGRAM_APP_SECRET")
    out.clear()
    check_platforms(settings_factory(), out)
    (line,) = [c for c in out if c.name == "platform instagram_login"]
    assert (line.status, line.detail) == ("ok", "configured")


def test_authorization_url_is_instagram_business_login(settings_factory: Any, http: httpx.Client):
    adapter = InstagramLoginAdapter(settings_factory(instagram_login_authorize_url=None), http)
    url = adapter.authorization_url(state="abc", redirect_uri=REDIRECT, code_challenge="ignored")
    base, query = split_url(url)
    assert base == "https://www.instagram.com/oauth/authorize"
    assert query["client_id"] == fakeig.APP_ID  # the Instagram app id, not META_APP_ID
    scopes = query["scope"].split(",")
    assert scopes[0] == "instagram_business_basic" and all(s.startswith("instagram_business_") for s in scopes)
    assert (query["state"], query["response_type"], query["redirect_uri"]) == ("abc", "code", REDIRECT)
    assert "code_challenge" not in query


def test_default_endpoints_are_api_and_graph_instagram_com(settings_factory: Any, http: httpx.Client):
    adapter = InstagramLoginAdapter(
        settings_factory(instagram_login_api_url=None, instagram_login_token_url=None), http
    )
    assert adapter.endpoint("token_url", adapter.token_url) == "https://api.instagram.com/oauth/access_token"
    assert adapter.api("access_token") == "https://graph.instagram.com/access_token"
    assert adapter.api("refresh_access_token") == "https://graph.instagram.com/refresh_access_token"
    assert adapter.api(f"{adapter.version}/me") == "https://graph.instagram.com/v27.0/me"


def test_denying_user_comes_back_with_access_denied(adapter: InstagramLoginAdapter, http: httpx.Client):
    url = adapter.authorization_url(state="st", redirect_uri=REDIRECT, code_challenge=None)
    query = follow_dialog(http, url, "dave")
    assert (query["error"], query["state"]) == ("access_denied", "st")
    assert "code" not in query


# ---- exchange and the long-lived upgrade ---------------------------------------------------------


def test_exchange_then_long_lived_upgrade(adapter: InstagramLoginAdapter, http: httpx.Client, fake: FakePlatformServer):
    before = datetime.now(UTC)
    tokens = connect(adapter, http)
    assert tokens.access_token.startswith("IGl")  # the 60-day token, not the one-hour one
    assert tokens.metadata["long_lived"] is True and tokens.metadata["ig_scoped_user_id"] == ALICE_SCOPED_ID
    assert tokens.expires_at is not None
    assert abs((tokens.expires_at - before).total_seconds() - fakeig.LONG_LIVED) < 30
    assert "instagram_business_basic" in tokens.scopes  # from the answer's "permissions"
    (code_call,) = [r for r in fake.requests if r.path == "/iglogin/api/oauth/access_token"]
    assert code_call.method == "POST" and code_call.query == {}
    form = code_call.form
    assert (form["grant_type"], form["redirect_uri"], form["client_id"]) == (
        "authorization_code",
        REDIRECT,
        fakeig.APP_ID,
    )
    assert form["client_secret"] == fakeig.APP_SECRET and "code_verifier" not in form
    (exchange,) = [r for r in fake.requests if r.path == "/iglogin/graph/access_token"]
    assert exchange.method == "GET" and exchange.query["grant_type"] == "ig_exchange_token"
    assert exchange.query["client_secret"] == fakeig.APP_SECRET


def test_reused_code_is_permanent_with_the_documented_message(adapter: InstagramLoginAdapter, http: httpx.Client):
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    with pytest.raises(Permanent) as info:
        adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    assert not isinstance(info.value, NeedsReconnect)
    assert (info.value.status, info.value.code) == (400, "OAuthException/400")
    assert "Matching code was not found" in info.value.message
    assert_no_secret(info.value, code, fakeig.APP_SECRET)


def test_failed_upgrade_keeps_the_login_and_fetch_accounts_finishes_it(
    adapter: InstagramLoginAdapter, http: httpx.Client, fake: FakePlatformServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    fake.fail("/iglogin/graph/access_token", FakeResponse(503, "busy"))
    before = datetime.now(UTC)
    short = adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    assert short.access_token.startswith("IGs") and short.metadata["long_lived"] is False
    assert short.expires_at is not None and short.expires_at - before <= timedelta(hours=1, seconds=30)
    assert not [r for r in caplog.records if "expires_in" in r.getMessage()]  # one hour is documented, not assumed
    (profile,) = adapter.fetch_accounts(short)
    assert profile.tokens.access_token.startswith("IGl") and profile.tokens.metadata["long_lived"] is True


# ---- profile and counts ---------------------------------------------------------------------------


def test_profile_and_counts_in_one_read(account: AccountProfile, fake: FakePlatformServer):
    assert account.platform_account_id == ALICE_IG_ID  # the professional account's id, not the app-scoped one
    assert (account.handle, account.name) == ("alice.creates", "Alice Creates")
    assert account.avatar_url == f"https://cdn.example.test/ig/{ALICE_IG_ID}.jpg"
    assert (account.stats.followers, account.stats.following, account.stats.posts) == (2718, 314, 42)
    assert account.refresh_model == "extend"
    (me,) = [r for r in fake.requests if r.path == "/iglogin/graph/v27.0/me"]
    assert me.query == {"fields": "user_id,username,name,profile_picture_url,followers_count,follows_count,media_count"}
    assert me.headers["authorization"] == f"Bearer {account.tokens.access_token}"


def test_fetch_stats(adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer):
    IGLOGIN.followers = 5000
    fake.reset_log()
    stats = adapter.fetch_stats(account.platform_account_id, account.tokens)
    assert (stats.followers, stats.following, stats.posts) == (5000, 314, 42)
    (request,) = fake.requests
    assert request.query == {"fields": "followers_count,follows_count,media_count"}


def test_answer_wrapped_in_data_reads_the_same(
    adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer
):
    wrapped = {"data": [{"user_id": ALICE_IG_ID, "username": "alice.creates", "followers_count": 7}]}
    fake.fail("/iglogin/graph/v27.0/me", FakeResponse(200, wrapped), times=2)
    (profile,) = adapter.fetch_accounts(account.tokens)
    assert (profile.platform_account_id, profile.handle, profile.stats.followers) == (ALICE_IG_ID, "alice.creates", 7)
    assert adapter.fetch_stats(ALICE_IG_ID, account.tokens).followers == 7


# ---- refresh: at least a day old, always before expiry --------------------------------------------


def test_refresh_extends_a_day_old_token(
    adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer
):
    old = aged(account.tokens, DAY + 60)
    fake.reset_log()
    fresh = adapter.refresh(old)
    (request,) = fake.requests
    assert (request.path, request.method) == ("/iglogin/graph/refresh_access_token", "GET")
    assert request.query == {"grant_type": "ig_refresh_token", "access_token": old.access_token}
    assert fresh.access_token != old.access_token and fresh.access_token.startswith("IGl")
    assert fresh.metadata["ig_user_id"] == ALICE_IG_ID
    assert old.expires_at is not None and fresh.expires_at is not None and fresh.expires_at >= old.expires_at
    assert datetime.fromisoformat(fresh.metadata["issued_at"]) > datetime.fromisoformat(old.metadata["issued_at"])
    assert adapter.fetch_stats(ALICE_IG_ID, fresh).followers == 2718


def test_refresh_of_a_token_younger_than_a_day_sends_nothing(
    adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer
):
    young = aged(account.tokens, DAY - 3600)
    fake.reset_log()
    with pytest.raises(NotNow) as info:
        adapter.refresh(young)
    assert fake.requests == []
    assert 3500 <= info.value.seconds <= 3600  # until the token is a day old
    assert_no_secret(info.value, young.access_token)


def test_platform_refusal_of_a_young_token_is_not_a_reconnect(adapter: InstagramLoginAdapter, account: AccountProfile):
    """Without our stamp (a token stored elsewhere) Meta decides; its refusal is no dead grant."""
    unstamped = account.tokens.replace(metadata={k: v for k, v in account.tokens.metadata.items() if k != "issued_at"})
    with pytest.raises(Permanent) as info:
        adapter.refresh(unstamped)
    assert not isinstance(info.value, NeedsReconnect)


def test_refresh_of_an_expired_token_needs_reconnect(
    settings_factory: Any, http: httpx.Client, account: AccountProfile, fake: FakePlatformServer
):
    later = InstagramLoginAdapter(settings_factory(), http, clock=lambda: datetime.now(UTC) + timedelta(days=61))
    fake.reset_log()
    with pytest.raises(NeedsReconnect) as info:
        later.refresh(account.tokens)
    assert info.value.code == "expired" and fake.requests == []
    old = aged(account.tokens, 2 * DAY)
    fake.grants.expire_access(old.access_token)  # expired at the platform, not by our clock
    with pytest.raises(NeedsReconnect) as info:
        InstagramLoginAdapter(settings_factory(), http).refresh(old)
    assert info.value.code == "190/463"


def test_refresh_of_a_short_lived_token_exchanges_it(
    adapter: InstagramLoginAdapter, http: httpx.Client, fake: FakePlatformServer
):
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None)
    code = follow_dialog(http, url)["code"]
    fake.fail("/iglogin/graph/access_token", FakeResponse(503, "busy"))
    short = adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None)
    fresh = adapter.refresh(short)  # no 24-hour rule for the first exchange
    assert fresh.access_token.startswith("IGl") and fresh.metadata["long_lived"] is True


def test_margin_falls_after_the_first_day_and_a_week_before_expiry(account: AccountProfile):
    """The scheduler's rules (workers/lifetimes.py) with this adapter's margin: a 60-day token is
    due at day 53: past the 24-hour mark, with a week left to retry before it dies."""
    tokens = account.tokens
    issued = datetime.fromisoformat(tokens.metadata["issued_at"])
    assert tokens.expires_at is not None
    margin = InstagramLoginAdapter.refresh_margin
    when = next_refresh_at(tokens, margin, issued)
    assert when is not None
    assert when - issued >= MIN_REFRESH_AGE
    assert tokens.expires_at - when >= timedelta(days=7)
    assert not is_due(tokens, margin, issued + timedelta(days=52))
    assert is_due(tokens, margin, tokens.expires_at - timedelta(days=6))
    assert InstagramLoginAdapter.default_lifetime == timedelta(days=60)


# ---- errors and rate limits -------------------------------------------------------------------------


def test_invalid_token_needs_reconnect(adapter: InstagramLoginAdapter, account: AccountProfile):
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_accounts(account.tokens.replace(access_token="IGl-not-a-real-token-at-all-000000"))
    assert info.value.code == "190"


def test_code_190_from_meta_needs_reconnect(
    adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer
):
    fake.fail("/iglogin/graph/v27.0/me", meta_error(190, "Error validating access token", subcode=460))
    with pytest.raises(NeedsReconnect) as info:
        adapter.fetch_stats(ALICE_IG_ID, account.tokens)
    assert info.value.code == "190/460"


def test_app_and_user_throttles_are_rate_limits(
    adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer
):
    fake.fail("/iglogin/graph/v27.0/me", meta_error(4, "Application request limit reached"))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats(ALICE_IG_ID, account.tokens)
    assert (info.value.scope, info.value.retry_after, info.value.code) == ("app", 3600, "4")
    headers = buc_header(ALICE_IG_ID, 100, regain_minutes=4, kind="instagram")
    fake.fail("/iglogin/graph/v27.0/me", meta_error(17, "User request limit reached", headers=headers))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats(ALICE_IG_ID, account.tokens)
    assert (info.value.scope, info.value.retry_after, info.value.code) == ("account", 240, "17")


def test_usage_header_near_the_limit_is_a_rate_hint(
    adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer
):
    seen: list[RateHint | None] = []
    with observe_success(lambda platform, response: seen.append(adapter.rate_hint(response))):
        adapter.fetch_stats(ALICE_IG_ID, account.tokens)
        IGLOGIN.usage_percent, IGLOGIN.regain_minutes = 97, 2
        adapter.fetch_stats(ALICE_IG_ID, account.tokens)
    assert seen == [None, RateHint(120.0, "account")]


def test_5xx_and_connection_refused_are_transient(
    settings_factory: Any, http: httpx.Client, account: AccountProfile, fake: FakePlatformServer
):
    fake.fail("/iglogin/graph/v27.0/me", meta_error(2, "Service temporarily unavailable", status=500))
    assert_transient(
        lambda: InstagramLoginAdapter(settings_factory(), http).fetch_stats("x", account.tokens), status=500
    )
    dead = InstagramLoginAdapter(settings_factory(instagram_login_api_url=f"http://127.0.0.1:{closed_port()}"), http)
    assert_transient(lambda: dead.fetch_stats(ALICE_IG_ID, account.tokens))


def test_no_token_in_any_error(adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer):
    token = account.tokens.access_token
    for code in (190, 4, 100):
        fake.fail("/iglogin/graph/v27.0/me", meta_error(code, f"Error validating access token {token}"))
        with pytest.raises(PlatformError) as info:
            adapter.fetch_accounts(account.tokens)
        assert_no_secret(info.value, token, fakeig.APP_SECRET)


# ---- disconnect ------------------------------------------------------------------------------------


def test_no_revocation_endpoint(adapter: InstagramLoginAdapter, account: AccountProfile, fake: FakePlatformServer):
    assert_no_revocation(adapter, fake, account.tokens)


# ---- the command line -------------------------------------------------------------------------------


def test_platforms_command_lists_instagram_login(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.cli_support import run_cli

    env.setenv("INSTAGRAM_APP_ID", fakeig.APP_ID)
    code, out, _ = run_cli(capsys, "platforms")
    assert code == 0
    assert "platform instagram_login: not configured: set INSTAGRAM_APP_SECRET" in out
    env.setenv("INSTAGRAM_APP_SECRET", fakeig.APP_SECRET)
    code, out, _ = run_cli(capsys, "platforms", "--json")
    assert code == 0
    listing = {item["platform"]: item for item in json.loads(out)}
    assert listing["instagram_login"] == {
        "platform": "instagram_login",
        "auth_type": "oauth2",
        "configured": True,
        "missing_env": [],
    }
    assert listing["instagram"]["missing_env"] == ["META_APP_ID", "META_APP_SECRET"]
