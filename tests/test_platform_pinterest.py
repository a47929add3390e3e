"""PinterestAdapter against the fake Pinterest over real loopback HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from platforms.pinterest import PinterestAdapter
from social_accounts.errors import (
    NeedsReconnect,
    Permanent,
    RateLimited,
)
from social_accounts.values import TokenSet
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform import pinterest as fake_pin
from tests.fakeplatform.core import unused_port_url
from tests.platform_support import (
    assert_no_revocation,
    assert_no_secret,
    assert_rotating_refresh,
    assert_transient,
    connect,
    expire_then_refresh,
    split_url,
)

STATE = "state-pin"
ALICE = fake_pin.USERS["alice"]


pytestmark = [pytest.mark.unit, pytest.mark.adapter.with_args(PinterestAdapter)]


def test_authorization_url_uses_commas_and_no_pkce(adapter: PinterestAdapter, fake: FakePlatformServer) -> None:
    url = adapter.authorization_url(state=STATE, redirect_uri="https://app.example/oauth/callback", code_challenge="c")
    base, params = split_url(url)
    assert base == f"{fake.base_url}/pinterest/oauth/"
    assert params == {
        "response_type": "code",
        "client_id": fake_pin.APP_ID,
        "redirect_uri": "https://app.example/oauth/callback",
        "state": STATE,
        "scope": "user_accounts:read,boards:read,pins:read",
    }


def test_default_endpoints(make: Any) -> None:
    adapter = make(pinterest_authorize_url=None, pinterest_api_url=None)
    url = adapter.authorization_url(state="s", redirect_uri="https://a/oauth/callback", code_challenge=None)
    assert url.startswith("https://www.pinterest.com/oauth/?")
    assert adapter.api("user_account") == "https://api.pinterest.com/v5/user_account"
    assert PinterestAdapter.required_env == ("PINTEREST_APP_ID", "PINTEREST_APP_SECRET")


def test_connect_with_basic_auth_reads_the_account(adapter: PinterestAdapter, fake: FakePlatformServer) -> None:
    now = datetime.now(UTC)
    tokens = connect(adapter)
    call = next(r for r in fake.requests if r.path == "/pinterest/v5/oauth/token")
    assert call.basic() == (fake_pin.APP_ID, fake_pin.APP_SECRET)
    assert "client_secret" not in call.form
    assert tokens.refresh_token and tokens.expires_at and tokens.refresh_expires_at
    assert abs(tokens.refresh_expires_at - (now + timedelta(days=60))) < timedelta(seconds=30)

    [profile] = adapter.fetch_accounts(tokens)
    assert profile.platform_account_id == ALICE["id"]
    assert (profile.name, profile.handle, profile.avatar_url) == (
        "Alice's Studio",
        "alicepins",
        ALICE["profile_image"],
    )
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (812, 64, 1530)
    assert profile.refresh_model == "rotate"


def test_personal_account_is_named_by_username(adapter: PinterestAdapter) -> None:
    tokens = connect(adapter, user="personal")
    [profile] = adapter.fetch_accounts(tokens)
    assert (profile.name, profile.handle) == ("pat_p", "pat_p")
    stats = adapter.fetch_stats(profile.platform_account_id, tokens)
    assert (stats.followers, stats.following, stats.posts) == (3, 40, 77)


def test_refresh_rotates_with_basic_auth(adapter: PinterestAdapter, fake: FakePlatformServer) -> None:
    first = connect(adapter)
    fake.reset_log()

    def works(second: TokenSet) -> None:
        assert fake.requests[0].basic() == (fake_pin.APP_ID, fake_pin.APP_SECRET)
        assert adapter.fetch_stats(ALICE["id"], second).posts == 1530

    assert_rotating_refresh(adapter, first, works)  # spent: the fake revokes the grant on reuse


def test_refresh_answer_without_refresh_token_keeps_the_old_one(
    adapter: PinterestAdapter, fake: FakePlatformServer
) -> None:
    first = connect(adapter)
    fake.fail("/pinterest/v5/oauth/token", FakeResponse(200, {"access_token": "pina_x", "expires_in": 2592000}))
    second = adapter.refresh(first)
    assert (second.access_token, second.refresh_token) == ("pina_x", first.refresh_token)
    assert second.refresh_expires_at == first.refresh_expires_at


def test_expired_access_token_asks_for_refresh(adapter: PinterestAdapter, fake: FakePlatformServer) -> None:
    _, fresh = expire_then_refresh(adapter, fake, connect(adapter))
    assert adapter.fetch_accounts(fresh)[0].handle == "alicepins"


def test_revoke_is_none_by_default_and_rfc7009_with_override(make: Any, fake: FakePlatformServer) -> None:
    adapter = make()
    tokens = connect(adapter)
    assert_no_revocation(adapter, fake, tokens)

    overridden = make(pinterest_revoke_url=f"{fake.base_url}/pinterest/test-only/revoke")
    assert overridden.revoke(tokens) == "revoked"
    call = fake.requests[-1]
    assert call.basic() == (fake_pin.APP_ID, fake_pin.APP_SECRET)
    assert call.form == {"token": tokens.refresh_token}
    with pytest.raises(NeedsReconnect):
        adapter.refresh(tokens)


def test_429_honours_retry_after_or_backs_off_a_minute(adapter: PinterestAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/pinterest/v5/user_account", fake_pin.rate_limited())
    with pytest.raises(RateLimited) as info:
        adapter.fetch_accounts(tokens)
    assert info.value.retry_after == 60
    fake.fail("/pinterest/v5/user_account", fake_pin.rate_limited(retry_after=5))
    with pytest.raises(RateLimited) as info:
        adapter.fetch_stats(ALICE["id"], tokens)
    assert info.value.retry_after == 5


def test_5xx_and_connection_refused_are_transient(make: Any, fake: FakePlatformServer) -> None:
    adapter = make()
    tokens = connect(adapter)
    fake.fail("/pinterest/v5/user_account", fake_pin.error(500, 5, "Internal error"))
    assert_transient(lambda: adapter.fetch_accounts(tokens), status=500)
    offline = make(pinterest_api_url=unused_port_url() + "/v5")
    assert_transient(lambda: offline.fetch_accounts(tokens))


def test_refused_code_forbidden_and_bad_app_secret_are_permanent(make: Any, fake: FakePlatformServer) -> None:
    adapter = make()
    with pytest.raises(Permanent) as bad_code:
        adapter.exchange_code(code="code_unknown", redirect_uri=adapter.settings.redirect_uri, code_verifier=None)
    assert bad_code.value.status == 400
    tokens = connect(adapter)
    fake.fail("/pinterest/v5/user_account", fake_pin.error(403, 3, "Not authorized"))
    with pytest.raises(Permanent):
        adapter.fetch_accounts(tokens)
    with pytest.raises(Permanent) as bad_app:
        make(pinterest_app_secret="wrong").refresh(tokens)
    assert bad_app.value.status == 401 and not isinstance(bad_app.value, NeedsReconnect)


@pytest.mark.parametrize(
    "message",
    [
        fake_pin.BAD_REFRESH[2],
        "Refresh token has expired.",
        "The refresh token was revoked by the user.",
        "Invalid refresh token.",
        "",
    ],
)
def test_a_401_refresh_about_the_token_needs_a_reconnect(
    adapter: PinterestAdapter, fake: FakePlatformServer, message: str
) -> None:
    tokens = connect(adapter)
    fake.fail("/pinterest/v5/oauth/token", fake_pin.error(401, 2, message))
    with pytest.raises(NeedsReconnect) as caught:
        adapter.refresh(tokens)
    assert caught.value.status == 401


@pytest.mark.parametrize("message", [fake_pin.BAD_CLIENT[2], "Invalid client credentials.", "Unknown app id."])
def test_a_401_refresh_blaming_the_client_is_permanent(
    adapter: PinterestAdapter, fake: FakePlatformServer, message: str
) -> None:
    tokens = connect(adapter)
    fake.fail("/pinterest/v5/oauth/token", fake_pin.error(401, 2, message))
    with pytest.raises(Permanent) as caught:
        adapter.refresh(tokens)
    assert caught.value.status == 401 and not isinstance(caught.value, NeedsReconnect)


def test_a_revoked_grant_answers_401_and_needs_a_reconnect(make: Any, fake: FakePlatformServer) -> None:
    """End to end on the fake: the refresh token of a revoked grant is refused with 401."""
    tokens = connect(make())
    make(pinterest_revoke_url=f"{fake.base_url}/pinterest/test-only/revoke").revoke(tokens)
    with pytest.raises(NeedsReconnect) as caught:
        make().refresh(tokens)
    assert caught.value.status == 401


def test_fake_refuses_body_only_client_auth(fake: FakePlatformServer, http: httpx.Client) -> None:
    response = http.post(
        f"{fake.base_url}/pinterest/v5/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": fake_pin.APP_ID},
    )
    assert response.status_code == 401


def test_errors_never_carry_tokens(adapter: PinterestAdapter, fake: FakePlatformServer) -> None:
    tokens = connect(adapter)
    fake.fail("/pinterest/v5/oauth/token", fake_pin.error(400, 1, f"refresh token {tokens.refresh_token} invalid"))
    with pytest.raises(NeedsReconnect) as reconnect:
        adapter.refresh(tokens)
    fake.fail("/pinterest/v5/user_account", fake_pin.error(400, 1, f"bad token {tokens.access_token}"))
    with pytest.raises(Permanent) as permanent:
        adapter.fetch_accounts(tokens)
    for exc in (reconnect.value, permanent.value):
        assert_no_secret(exc, tokens.access_token, tokens.refresh_token, fake_pin.APP_SECRET)
