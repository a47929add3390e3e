"""Mastodon adapter against the fake instance (tests/fakeplatform/mastodon.py) and MockTransport."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest

from platforms.mastodon import InMemoryMastodonAppStore, MastodonAdapter, MastodonApp, normalise_instance
from social_accounts.errors import (
    InputError,
    InstanceUnreachable,
    NeedsReconnect,
    Permanent,
    RateLimited,
    UnsafeAddress,
)
from social_accounts.values import TokenSet
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.fakeplatform.core import follow_authorization, unused_port_url
from tests.fakeplatform.mastodon import USERS
from tests.platform_support import assert_no_secret, assert_transient, split_url

REDIRECT = "http://127.0.0.1:8000/oauth/callback"
VERIFIER = "v" * 64
METADATA = "/.well-known/oauth-authorization-server"


pytestmark = pytest.mark.unit


@pytest.fixture
def store() -> InMemoryMastodonAppStore:
    return InMemoryMastodonAppStore()


@pytest.fixture
def adapter(
    settings_factory: Callable[..., object], http: httpx.Client, store: InMemoryMastodonAppStore
) -> MastodonAdapter:
    return MastodonAdapter(settings_factory(), http, app_store=store)  # type: ignore[arg-type]


def connect(adapter: MastodonAdapter, instance: str, user: str = "alice") -> TokenSet:
    from platforms.oauth2 import s256_challenge

    url = adapter.authorization_url(
        state="st-1", redirect_uri=REDIRECT, code_challenge=s256_challenge(VERIFIER), instance=instance
    )
    back = follow_authorization(url, browser=adapter.http, fake_user=user)
    assert back["state"] == "st-1"
    return adapter.exchange_code(code=back["code"], redirect_uri=REDIRECT, code_verifier=VERIFIER, instance=instance)


# ---- normalise_instance ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mastodon.social", "https://mastodon.social"),
        ("  Mastodon.Social  ", "https://mastodon.social"),
        ("https://mastodon.social/", "https://mastodon.social"),
        ("HTTPS://MASTODON.SOCIAL/about/more?x=1#frag", "https://mastodon.social"),
        ("@alice@mastodon.social", "https://mastodon.social"),
        ("alice@Mastodon.Social", "https://mastodon.social"),
        ("https://mastodon.social:443", "https://mastodon.social"),
        ("https://example.org:8443/", "https://example.org:8443"),
        ("mastodon.social.", "https://mastodon.social"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("https://93.184.216.34", "https://93.184.216.34"),
    ],
)
def test_normalise_instance_accepts_what_users_type(value: str, expected: str) -> None:
    assert normalise_instance(value) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", InputError),
        ("   ", InputError),
        ("a" * 400 + ".example", InputError),
        ("http://mastodon.social", UnsafeAddress),
        ("ftp://mastodon.social", UnsafeAddress),
        ("https://alice:pw@mastodon.social", UnsafeAddress),
        ("https://127.0.0.1", UnsafeAddress),
        ("https://10.1.2.3:8443", UnsafeAddress),
        ("https://[::1]", UnsafeAddress),
        ("https://[::ffff:169.254.169.254]", UnsafeAddress),
        ("https://under_score.example", InputError),
        ("https://-bad.example", InputError),
        ("@alice@", InputError),
        ("https://", InputError),
    ],
)
def test_normalise_instance_refuses_bad_or_unsafe_input(value: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        normalise_instance(value)


def test_normalise_instance_allows_http_and_loopback_only_when_private_network_is_allowed() -> None:
    assert normalise_instance("http://127.0.0.1:3000/x", allow_private=True) == "http://127.0.0.1:3000"
    assert normalise_instance("http://[::1]:80", allow_private=True) == "http://[::1]"
    with pytest.raises(UnsafeAddress):
        normalise_instance("http://127.0.0.1:3000")


# ---- registration ----------------------------------------------------------------------------


def test_app_is_registered_once_per_instance_and_reused(
    fake: FakePlatformServer, adapter: MastodonAdapter, settings_factory: Callable[..., object], http: httpx.Client
) -> None:
    first = adapter.ensure_app(fake.base_url, REDIRECT)
    assert fake.count("/api/v1/apps", "POST") == 1
    assert first.instance == fake.base_url
    assert first.scopes == ("profile", "write:statuses", "write:media")

    again = adapter.ensure_app(fake.base_url + "/", REDIRECT)
    other_adapter = MastodonAdapter(settings_factory(), http, app_store=adapter.app_store)  # type: ignore[arg-type]
    third = other_adapter.ensure_app(fake.base_url.upper().replace("HTTP://", "http://"), REDIRECT)
    assert again == first == third
    assert fake.count("/api/v1/apps", "POST") == 1


def test_registration_sends_the_scopes_and_redirect_uri(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    adapter.ensure_app(fake.base_url, REDIRECT)
    [request] = [r for r in fake.requests if r.path == "/api/v1/apps"]
    assert request.form["redirect_uris"] == REDIRECT
    assert request.form["scopes"] == "profile write:statuses write:media"
    assert request.form["client_name"] == "social-accounts"


def test_store_put_returns_the_app_another_process_registered_first() -> None:
    store = InMemoryMastodonAppStore()
    winner = MastodonApp("https://a.example", "id-1", "secret-1", ("profile",), REDIRECT)
    loser = MastodonApp("https://a.example", "id-2", "secret-2", ("profile",), REDIRECT)
    assert store.put(winner) is winner
    assert store.put(loser) is winner
    moved = MastodonApp("https://a.example", "id-3", "secret-3", ("profile",), "https://new.example/oauth/callback")
    assert store.put(moved) is moved  # PUBLIC_URL changed: the old app cannot serve the new redirect


def test_app_secret_is_not_in_repr() -> None:
    app = MastodonApp("https://a.example", "id-1", "very-secret-value", ("profile",), REDIRECT)
    assert "very-secret-value" not in repr(app)


def test_a_changed_redirect_uri_registers_a_new_app(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    first = adapter.ensure_app(fake.base_url, REDIRECT)
    second = adapter.ensure_app(fake.base_url, "http://127.0.0.1:9000/oauth/callback")
    assert second.client_id != first.client_id
    assert fake.count("/api/v1/apps", "POST") == 2


# ---- OAuth -----------------------------------------------------------------------------------


def test_pkce_and_profile_scope_are_negotiated_from_metadata(
    fake: FakePlatformServer, adapter: MastodonAdapter
) -> None:
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge="chal", instance=fake.base_url)
    assert url.startswith(fake.base_url + "/oauth/authorize?")
    _, q = split_url(url)
    assert q["code_challenge"] == "chal"
    assert q["code_challenge_method"] == "S256"
    assert q["scope"] == "profile write:statuses write:media"
    assert q["client_id"] == adapter.app_store.get(fake.base_url).client_id  # type: ignore[union-attr]


def test_older_server_without_metadata_gets_no_pkce_and_read_accounts(
    fake: FakePlatformServer, adapter: MastodonAdapter
) -> None:
    fake.fail(METADATA, FakeResponse(404, {"error": "Not Found"}), times=10)
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge="chal", instance=fake.base_url)
    _, q = split_url(url)
    assert "code_challenge" not in q
    assert q["scope"] == "read:accounts write:statuses write:media"
    back = follow_authorization(url, browser=adapter.http)
    tokens = adapter.exchange_code(
        code=back["code"], redirect_uri=REDIRECT, code_verifier=VERIFIER, instance=fake.base_url
    )
    [token_request] = [r for r in fake.requests if r.path == "/oauth/token"]
    assert "code_verifier" not in token_request.form
    assert adapter.fetch_accounts(tokens)[0].handle == f"@alice@{urlsplit(fake.base_url).netloc}"


def test_metadata_failure_other_than_404_is_not_a_silent_downgrade(
    fake: FakePlatformServer, adapter: MastodonAdapter
) -> None:
    adapter.ensure_app(fake.base_url, REDIRECT)
    fake.fail(METADATA, FakeResponse(503, "busy"), times=1)
    with pytest.raises(InstanceUnreachable):
        adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge="chal", instance=fake.base_url)


def test_full_connect_profile_stats_and_revoke(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    tokens = connect(adapter, fake.base_url)
    host = urlsplit(fake.base_url).netloc
    assert tokens.metadata == {"instance": fake.base_url}
    assert tokens.expires_at is None and tokens.refresh_token is None
    assert set(tokens.scopes) == {"profile", "write:statuses", "write:media"}
    [token_request] = [r for r in fake.requests if r.path == "/oauth/token"]
    assert token_request.form["code_verifier"] == VERIFIER
    assert token_request.form["client_secret"] == adapter.app_store.get(fake.base_url).client_secret  # type: ignore[union-attr]

    [profile] = adapter.fetch_accounts(tokens)
    alice = USERS["alice"]
    assert profile.platform_account_id == f"{alice['id']}@{host}"
    assert profile.handle == f"@alice@{host}"
    assert profile.name == alice["display_name"]
    assert profile.avatar_url == alice["avatar"]
    assert profile.refresh_model == "none"
    assert (profile.stats.followers, profile.stats.following, profile.stats.posts) == (
        alice["followers_count"],
        alice["following_count"],
        alice["statuses_count"],
    )
    stats = adapter.fetch_stats(profile.platform_account_id, tokens)
    assert stats == profile.stats
    with pytest.raises(Permanent):
        adapter.fetch_stats(f"1@{host}", tokens)

    assert adapter.revoke(tokens) == "revoked"
    with pytest.raises(NeedsReconnect):
        adapter.fetch_accounts(tokens)


def test_empty_display_name_falls_back_to_username(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    tokens = connect(adapter, fake.base_url, user="bob")
    [profile] = adapter.fetch_accounts(tokens)
    assert profile.name == "bob"


def test_a_replayed_code_is_refused_as_needs_reconnect(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    url = adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None, instance=fake.base_url)
    code = follow_authorization(url, browser=adapter.http)["code"]
    adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None, instance=fake.base_url)
    with pytest.raises(NeedsReconnect):
        adapter.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=None, instance=fake.base_url)


def test_exchange_without_a_registered_app_is_permanent(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    with pytest.raises(Permanent):
        adapter.exchange_code(code="c", redirect_uri=REDIRECT, code_verifier=None, instance=fake.base_url)
    assert fake.count("/oauth/token") == 0


def test_authorization_needs_an_instance(adapter: MastodonAdapter) -> None:
    with pytest.raises(InputError):
        adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None, instance=None)


# ---- failure classes -------------------------------------------------------------------------


def test_401_means_revoked(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    tokens = connect(adapter, fake.base_url)
    fake.fail("/api/v1/accounts/verify_credentials", FakeResponse(401, {"error": "The access token is invalid"}))
    with pytest.raises(NeedsReconnect) as caught:
        adapter.fetch_accounts(tokens)
    assert caught.value.status == 401
    assert_no_secret(caught.value, tokens.access_token)


def test_429_waits_until_the_iso_reset_time(
    fake: FakePlatformServer,
    settings_factory: Callable[..., object],
    http: httpx.Client,
    store: InMemoryMastodonAppStore,
) -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    adapter = MastodonAdapter(settings_factory(), http, clock=lambda: now, app_store=store)  # type: ignore[arg-type]
    tokens = connect(adapter, fake.base_url)
    reset = (now + timedelta(seconds=137)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    fake.fail(
        "/api/v1/accounts/verify_credentials",
        FakeResponse(429, {"error": "Too many requests"}, {"X-RateLimit-Reset": reset, "X-RateLimit-Remaining": "0"}),
    )
    with pytest.raises(RateLimited) as caught:
        adapter.fetch_accounts(tokens)
    assert caught.value.retry_after == pytest.approx(137)


def test_429_without_reset_waits_the_window(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    tokens = connect(adapter, fake.base_url)
    fake.fail("/api/v1/accounts/verify_credentials", FakeResponse(429, {"error": "Too many requests"}))
    with pytest.raises(RateLimited) as caught:
        adapter.fetch_accounts(tokens)
    assert caught.value.retry_after == 300


def test_5xx_is_transient(fake: FakePlatformServer, adapter: MastodonAdapter) -> None:
    tokens = connect(adapter, fake.base_url)
    fake.fail("/api/v1/accounts/verify_credentials", FakeResponse(502, "<html>Bad Gateway</html>"))
    assert_transient(lambda: adapter.fetch_accounts(tokens), status=502)


# ---- the SSRF guard in action ----------------------------------------------------------------


def test_loopback_instance_is_refused_without_private_network_and_nothing_is_sent(
    fake: FakePlatformServer, settings_factory: Callable[..., object], http: httpx.Client
) -> None:
    adapter = MastodonAdapter(settings_factory(allow_private_network=False), http)  # type: ignore[arg-type]
    port = urlsplit(fake.base_url).port
    for instance in (fake.base_url, f"https://127.0.0.1:{port}", f"https://localhost:{port}"):
        with pytest.raises(UnsafeAddress):
            adapter.authorization_url(state="s", redirect_uri=REDIRECT, code_challenge=None, instance=instance)
    assert fake.count("*") == 0


def test_tokens_for_a_loopback_instance_are_not_used_without_private_network(
    fake: FakePlatformServer, settings_factory: Callable[..., object], http: httpx.Client
) -> None:
    adapter = MastodonAdapter(settings_factory(allow_private_network=False), http)  # type: ignore[arg-type]
    tokens = TokenSet("masto_x", metadata={"instance": fake.base_url})
    with pytest.raises(UnsafeAddress):
        adapter.fetch_accounts(tokens)
    assert fake.count("*") == 0


def test_plain_http_is_refused_for_a_public_host(settings_factory: Callable[..., object]) -> None:
    seen: list[httpx.Request] = []
    client = httpx.Client(transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={})))
    adapter = MastodonAdapter(
        settings_factory(allow_private_network=False),  # type: ignore[arg-type]
        client,
        resolver=lambda host, port: ["93.184.216.34"],
    )
    with pytest.raises(UnsafeAddress):
        adapter.ensure_app("http://mastodon.example", REDIRECT)
    assert seen == []


def test_a_name_resolving_to_a_private_address_is_refused(settings_factory: Callable[..., object]) -> None:
    seen: list[httpx.Request] = []
    client = httpx.Client(transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={})))
    adapter = MastodonAdapter(
        settings_factory(allow_private_network=False),  # type: ignore[arg-type]
        client,
        resolver=lambda host, port: ["93.184.216.34", "10.0.0.7"],
    )
    with pytest.raises(UnsafeAddress):
        adapter.ensure_app("mastodon.example", REDIRECT)
    assert seen == []


def test_a_redirect_to_a_private_address_is_refused(settings_factory: Callable[..., object]) -> None:
    seen: list[str] = []
    addresses = {"mastodon.example": ["93.184.216.34"], "internal.example": ["192.168.1.10"]}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"location": "https://internal.example/api/v1/instance"})

    adapter = MastodonAdapter(
        settings_factory(allow_private_network=False),  # type: ignore[arg-type]
        httpx.Client(transport=httpx.MockTransport(handler)),
        resolver=lambda host, port: addresses[host],
    )
    with pytest.raises(UnsafeAddress):
        adapter.ensure_app("mastodon.example", REDIRECT)
    assert seen == ["https://mastodon.example/api/v1/instance"]


def test_a_redirect_of_the_registration_post_is_not_followed(settings_factory: Callable[..., object]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/api/v1/instance":
            return httpx.Response(200, json={"uri": "mastodon.example", "version": "4.2.0"})
        if request.url.path == "/api/v1/apps":
            return httpx.Response(307, headers={"location": "https://mastodon.example/elsewhere"})
        return httpx.Response(404)

    adapter = MastodonAdapter(
        settings_factory(allow_private_network=False),  # type: ignore[arg-type]
        httpx.Client(transport=httpx.MockTransport(handler)),
        resolver=lambda host, port: ["93.184.216.34"],
    )
    with pytest.raises(InstanceUnreachable):
        adapter.ensure_app("mastodon.example", REDIRECT)
    assert seen == ["GET /api/v1/instance", f"GET {METADATA}", "POST /api/v1/apps"]


def test_a_host_that_is_not_mastodon_is_unreachable(settings_factory: Callable[..., object]) -> None:
    other = FakePlatformServer(listen=False)  # no route: answers 404 to everything
    with other.client() as client:
        adapter = MastodonAdapter(settings_factory(), client)  # type: ignore[arg-type]
        with pytest.raises(InstanceUnreachable):
            adapter.ensure_app(other.base_url, REDIRECT)
    assert other.count("/api/v1/instance") >= 1  # it was asked, and said 404
    assert other.count("/api/v1/apps") == 0


def test_a_host_answering_html_is_unreachable(settings_factory: Callable[..., object]) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>hello</html>")))
    adapter = MastodonAdapter(settings_factory(), client)  # type: ignore[arg-type]
    with pytest.raises(InstanceUnreachable):
        adapter.ensure_app("https://blog.example", REDIRECT)


def test_connection_refused_is_unreachable(settings_factory: Callable[..., object], http: httpx.Client) -> None:
    adapter = MastodonAdapter(settings_factory(), http)  # type: ignore[arg-type]
    with pytest.raises(InstanceUnreachable):
        adapter.ensure_app(unused_port_url(), REDIRECT)


def test_an_unresolvable_name_is_unreachable(settings_factory: Callable[..., object]) -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    adapter = MastodonAdapter(
        settings_factory(allow_private_network=False),  # type: ignore[arg-type]
        httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500))),
        resolver=resolver,
    )
    with pytest.raises(InstanceUnreachable):
        adapter.ensure_app("no-such-host.example", REDIRECT)
