"""The accounts page (``/sites/{site_id}/accounts``) on real PostgreSQL and a real Redis broker.

What a person sees and can do: the token form, the session cookie and its flags, CSRF refusals
that change nothing, a card per platform (the not-configured tooltip names the env vars),
unknown counts shown as unknown, health colours, a banner for every attempt error code, and
actions that enqueue the same messages as the API (disconnect only after a confirmation page).
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from models import repository
from models.crypto import KeyRing
from models.engine import make_engine
from models.migrate import upgrade
from models.tables import SocialAccount, SocialOAuthState
from platforms.registry import adapter_class, platform_statuses
from social_accounts.errors import UnknownPlatform
from social_accounts.settings import PLATFORMS, Settings
from social_accounts.values import AccountProfile, Stats, TokenSet
from tests.support import CONTRACT_CODES, WEB_BACKENDS, queued_messages, web_backend
from web_callback.app import create_app
from web_callback.messages import ERROR_MESSAGES
from web_callback.pages import BLUESKY_APP_PASSWORDS_URL
from web_callback.session import SESSION_SECONDS, SessionSigner
from web_callback.state import verify_state
from workers.broker import build_broker

TOKEN = "test-api-token"
SITE = "site-1"
PAGE = f"/sites/{SITE}/accounts"


@dataclass
class Page:
    client: TestClient
    settings: Settings
    engine: Engine
    broker: Any  # the app's: a RedisBroker, or the StubBroker of the unit tier
    ring: KeyRing
    build: Any  # another client on the same database and broker: build(**settings_overrides)

    def login(self, client: TestClient | None = None) -> None:
        client = client or self.client
        form = client.get(PAGE)
        token = field_value(form.text, "login_token")
        answer = client.post(f"{PAGE}/login", data={"api_token": TOKEN, "login_token": token})
        assert answer.status_code == 303, answer.text

    def csrf(self) -> str:
        return field_value(self.client.get(PAGE).text, "csrf_token")

    def queued(self, queue: str) -> list[dict[str, Any]]:
        return queued_messages(self.broker, queue)

    def all_queued(self) -> list[dict[str, Any]]:
        return [m for q in ("connect", "refresh", "sync", "maintenance") for m in self.queued(q)]

    def attempts(self) -> list[SocialOAuthState]:
        with Session(self.engine) as session:
            return list(session.execute(sa.select(SocialOAuthState)).scalars())

    def add_account(
        self,
        *,
        site_id: str = SITE,
        platform: str = "twitter",
        account: str = "1001",
        name: str | None = "Alice Example",
        handle: str | None = "alice",
        stats: Stats | None = None,
        access_token: str = "secret-access-token-0123456789abcdef",
        **columns: Any,
    ) -> str:
        now = datetime.now(UTC)
        profile = AccountProfile(
            platform_account_id=account,
            name=name,
            handle=handle,
            avatar_url="https://cdn.example/avatar.png",
            tokens=TokenSet(access_token=access_token, refresh_token="secret-refresh-token-0123456789abcdef"),
            stats=stats or Stats(followers=1200, following=35, posts=410),
        )
        with Session(self.engine) as session, session.begin():
            account_id, _ = repository.upsert_account(
                session, self.ring, site_id=site_id, platform=platform, user_id="u", profile=profile,
                next_refresh_at=None, now=now,
            )  # fmt: skip
            if columns:
                session.execute(sa.update(SocialAccount).where(SocialAccount.id == account_id).values(**columns))
        return account_id

    def add_attempt(self, *, site_id: str = SITE, platform: str = "twitter", **columns: Any) -> str:
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            attempt_id = repository.create_attempt(
                session, self.ring, platform=platform, site_id=site_id, user_id="u",
                expires_at=now + timedelta(minutes=10), now=now,
            )  # fmt: skip
            if columns:
                session.execute(sa.update(SocialOAuthState).where(SocialOAuthState.id == attempt_id).values(**columns))
        return attempt_id


def field_value(text: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', text)
    assert match, f"no {name} field in the page"
    return html.unescape(match.group(1))


def card(text: str, platform: str) -> str:
    match = re.search(rf'<section class="card[^"]*" id="card-{platform}".*?</section>', text, re.S)
    assert match, f"no card for {platform}"
    return match.group(0)


def account_block(text: str, account_id: str) -> str:
    match = re.search(rf'<li class="account" id="account-{account_id}".*?</li>', text, re.S)
    assert match, f"no account {account_id} on the page"
    return match.group(0)


def banner(text: str) -> tuple[str, str]:
    match = re.search(r'<div class="banner banner-(\w+)" id="banner"[^>]*>(.*?)</div>', text, re.S)
    assert match, "no banner on the page"
    words = re.sub(r"<[^>]+>", "", match.group(2))
    return match.group(1), " ".join(html.unescape(words).split())


def set_cookie_headers(response: httpx2.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


#: run a test on both backends: SQLite with the in-memory broker (unit tier), and the real services
BOTH = pytest.mark.parametrize("page", WEB_BACKENDS, indirect=True)


@pytest.fixture
def page(request: pytest.FixtureRequest, tmp_path: Any, settings_factory: Any, fake: Any) -> Iterator[Page]:
    """The page on PostgreSQL and Redis (``services``, the default), or on SQLite and a
    ``StubBroker`` (``memory``: ``@BOTH``)."""
    db_url, broker_url = web_backend(request, tmp_path)
    upgrade(db_url)
    engine = make_engine(db_url)
    brokers: list[Any] = []
    stack = contextlib.ExitStack()

    def build(**overrides: Any) -> tuple[TestClient, Settings]:
        settings = settings_factory(**{"database_url": db_url, "broker_url": broker_url, **overrides})
        # every client on one broker: Redis shares it through the namespace, memory needs the object
        broker = brokers[0] if brokers and broker_url == "memory://" else build_broker(settings)
        brokers.append(broker)
        client = stack.enter_context(
            TestClient(create_app(settings, broker=broker, engine=engine), follow_redirects=False)
        )
        return client, settings

    client, settings = build()
    try:
        yield Page(client, settings, engine, brokers[0], KeyRing.from_settings(settings), build)
    finally:
        stack.close()
        for broker in {id(b): b for b in brokers}.values():
            broker.close()
        engine.dispose()


# ---- signing in ----------------------------------------------------------------------------------


@BOTH
def test_without_a_session_the_page_shows_only_the_token_form(page: Page) -> None:
    account_id = page.add_account()
    answer = page.client.get(PAGE)
    assert answer.status_code == 401
    assert 'name="api_token"' in answer.text and 'type="password"' in answer.text
    assert account_id not in answer.text and "Alice Example" not in answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "script-src" not in answer.headers["content-security-policy"]  # default-src 'none': no script
    login_cookie = next(c for c in set_cookie_headers(answer) if c.startswith("sa_login="))
    assert "HttpOnly" in login_cookie and "SameSite=strict" in login_cookie


@BOTH
def test_a_wrong_token_is_refused_and_sets_no_session(page: Page) -> None:
    token = field_value(page.client.get(PAGE).text, "login_token")
    answer = page.client.post(f"{PAGE}/login", data={"api_token": "not-the-token", "login_token": token})
    assert answer.status_code == 401
    assert "That token is not right." in answer.text
    assert not any(c.startswith("sa_session=") for c in set_cookie_headers(answer))
    assert "not-the-token" not in answer.text
    assert page.client.get(PAGE).status_code == 401


@BOTH
def test_the_login_form_is_csrf_protected(page: Page) -> None:
    page.client.get(PAGE)  # a pre-login cookie exists, but the form token is missing or forged
    for forged in ("", "forged-token"):
        answer = page.client.post(f"{PAGE}/login", data={"api_token": TOKEN, "login_token": forged})
        assert answer.status_code == 403
        assert not any(c.startswith("sa_session=") for c in set_cookie_headers(answer))
    # a form token without its cookie (posted from another site) is refused as well
    token = field_value(page.client.get(PAGE).text, "login_token")
    fresh, _ = page.build()
    assert fresh.post(f"{PAGE}/login", data={"api_token": TOKEN, "login_token": token}).status_code == 403


@BOTH
def test_the_right_token_starts_a_session_with_safe_cookie_flags(page: Page) -> None:
    token = field_value(page.client.get(PAGE).text, "login_token")
    answer = page.client.post(f"{PAGE}/login", data={"api_token": TOKEN, "login_token": token})
    assert answer.status_code == 303
    assert answer.headers["location"] == PAGE
    cookie = next(c for c in set_cookie_headers(answer) if c.startswith("sa_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert f"Max-Age={SESSION_SECONDS}" in cookie
    assert "Secure" not in cookie  # PUBLIC_URL is http://127.0.0.1: a Secure cookie would never come back
    assert TOKEN not in cookie
    assert page.client.get(PAGE).status_code == 200


@BOTH
def test_on_https_the_cookie_is_secure_and_host_prefixed(page: Page) -> None:
    client, _ = page.build(public_url="https://accounts.example.com")
    form = client.get(PAGE)
    [login_cookie] = [c for c in set_cookie_headers(form) if c.startswith("__Host-sa_login=")]
    assert "Secure" in login_cookie and "HttpOnly" in login_cookie
    # the test client speaks http and so keeps no Secure cookie: hand it back as a browser on https would
    client.cookies.set("__Host-sa_login", login_cookie.split(";", 1)[0].split("=", 1)[1])
    answer = client.post(
        f"{PAGE}/login", data={"api_token": TOKEN, "login_token": field_value(form.text, "login_token")}
    )
    assert answer.status_code == 303
    [session] = [c for c in set_cookie_headers(answer) if "sa_session=" in c]
    assert session.startswith("__Host-sa_session=")
    assert "Secure" in session and "HttpOnly" in session and "SameSite=lax" in session and "Path=/" in session
    assert "Domain" not in session


@BOTH
def test_the_login_keeps_the_attempt_being_shown(page: Page) -> None:
    attempt_id = page.add_attempt(status="failed", stage="failed", error_code="access_denied")
    form = page.client.get(f"{PAGE}?attempt={attempt_id}")
    assert form.status_code == 401
    answer = page.client.post(
        f"{PAGE}/login",
        data={"api_token": TOKEN, "login_token": field_value(form.text, "login_token"), "attempt": attempt_id},
    )
    assert answer.headers["location"] == f"{PAGE}?attempt={attempt_id}"
    # anything but an attempt id is dropped: the login never redirects elsewhere
    other, _ = page.build()
    form = other.get(f"{PAGE}?attempt={attempt_id}")
    answer = other.post(
        f"{PAGE}/login",
        data={"api_token": TOKEN, "login_token": field_value(form.text, "login_token"), "attempt": "//evil.example"},
    )
    assert answer.headers["location"] == PAGE


@BOTH
def test_forged_expired_and_foreign_sessions_are_refused(page: Page) -> None:
    signer = SessionSigner(page.settings)
    value, _ = signer.new_session()
    page.client.cookies.set("sa_session", value)
    assert page.client.get(PAGE).status_code == 200

    payload, mac = value.split(".")
    page.client.cookies.set("sa_session", f"{payload}.{mac[:-2]}AA")
    assert page.client.get(PAGE).status_code == 401

    old, _ = signer.new_session(now=time.time() - SESSION_SECONDS - 5)
    page.client.cookies.set("sa_session", old)
    assert page.client.get(PAGE).status_code == 401

    other = SessionSigner(page.settings.model_copy(update={"api_token": "a-rotated-token"}))
    foreign, _ = other.new_session()  # signed under another API_TOKEN: rotating the token ends sessions
    page.client.cookies.set("sa_session", foreign)
    assert page.client.get(PAGE).status_code == 401


@BOTH
def test_signing_out_clears_the_cookie(page: Page) -> None:
    page.login()
    answer = page.client.post(f"{PAGE}/logout", data={"csrf_token": page.csrf()})
    assert answer.status_code == 303
    assert any(c.startswith('sa_session=""') or "Max-Age=0" in c for c in set_cookie_headers(answer))
    assert page.client.get(PAGE).status_code == 401


# ---- cards -------------------------------------------------------------------------------------


@BOTH
def test_a_card_per_platform_and_the_not_configured_tooltip_names_the_env_vars(page: Page) -> None:
    client, _ = page.build(twitter_client_id=None, meta_app_secret="")
    page.login(client)
    text = client.get(PAGE).text
    for platform in PLATFORMS:
        card(text, platform)
    assert 'id="card-demo"' not in text  # the demo platform exists only under `run --demo`

    twitter = card(text, "twitter")
    assert 'title="Missing: TWITTER_CLIENT_ID"' in twitter
    assert "Not configured" in twitter and 'action="/sites/site-1/accounts/connect/twitter"' not in twitter
    for meta in ("facebook", "instagram"):
        assert 'title="Missing: META_APP_SECRET"' in card(text, meta)

    linkedin = card(text, "linkedin")  # configured (the fake platform's credentials)
    assert "Not configured" not in linkedin
    assert 'action="/sites/site-1/accounts/connect/linkedin"' in linkedin and ">Connect<" in linkedin

    bluesky = card(text, "bluesky")
    assert 'name="handle"' in bluesky and 'name="app_password"' in bluesky
    # "Sign in with Bluesky" (AT Protocol OAuth) first, the app-password form second
    assert 0 <= bluesky.index("Sign in with Bluesky") < bluesky.index('name="app_password"')
    assert f'href="{BLUESKY_APP_PASSWORDS_URL}"' in bluesky
    assert 'name="instance"' in card(text, "mastodon")


@BOTH
def test_connected_accounts_show_profile_counts_health_and_sync_time(page: Page) -> None:
    account_id = page.add_account(stats=Stats(followers=1200, following=0, posts=410))
    page.login()
    block = account_block(page.client.get(PAGE).text, account_id)
    assert "Alice Example" in block and "@alice" in block
    assert 'src="https://cdn.example/avatar.png"' in block
    assert re.search(r'count-followers">1,200<', block)
    assert re.search(r'count-following">0<', block)  # a real zero is a zero
    assert re.search(r'count-posts">410<', block)
    assert "health-green" in block and "100/100" in block and "Connected and working." in block
    assert "Last synced: <time>never</time>" not in block
    for action in ("sync", "refresh"):
        assert f'action="/sites/site-1/accounts/{account_id}/{action}"' in block
    assert f'href="/sites/site-1/accounts/{account_id}/disconnect"' in block


@BOTH
def test_unknown_counts_are_shown_as_unknown_never_as_zero(page: Page) -> None:
    account_id = page.add_account(stats=Stats(followers=None, following=12, posts=None), last_synced_at=None)
    page.login()
    block = account_block(page.client.get(PAGE).text, account_id)
    for key in ("followers", "posts"):
        cell = re.search(rf'count-{key}">(.*?)</dd>', block, re.S)
        assert cell is not None
        assert 'title="unknown"' in cell.group(1) and "—" in cell.group(1) and "0" not in cell.group(1)
    assert re.search(r'count-following">12<', block)
    assert "Last synced: <time>never</time>" in block


@pytest.mark.parametrize(
    ("score", "status", "colour"), [(100, "active", "green"), (60, "error", "yellow"), (0, "expired", "red")]
)
@BOTH
def test_health_is_a_colour_a_score_and_a_reason(page: Page, score: int, status: str, colour: str) -> None:
    account_id = page.add_account(health_score=score, status=status, last_error="the platform said no")
    page.login()
    block = account_block(page.client.get(PAGE).text, account_id)
    assert f"health-{colour}" in block and f"{score}/100" in block
    with Session(page.engine) as session:
        reason = repository.account_public_dict(session.get(SocialAccount, account_id))["health_reason"]  # type: ignore[arg-type]
    assert html.escape(reason) in block


@BOTH
def test_the_page_never_shows_a_token_or_another_sites_accounts(page: Page) -> None:
    mine = page.add_account()
    theirs = page.add_account(site_id="site-2", account="2002", name="Bob Other")
    page.login()
    text = page.client.get(PAGE).text
    assert mine in text and theirs not in text and "Bob Other" not in text
    assert "secret-access-token" not in text and "secret-refresh-token" not in text


# ---- attempts ----------------------------------------------------------------------------------


@BOTH
def test_every_error_code_has_a_banner_a_person_understands(page: Page) -> None:
    page.login()
    for code in CONTRACT_CODES:
        attempt_id = page.add_attempt(status="failed", stage="failed", error_code=code, error_message="internal detail")
        answer = page.client.get(f"{PAGE}?attempt={attempt_id}")
        kind, words = banner(answer.text)
        assert kind == "error", code
        assert words == ERROR_MESSAGES[code]
        assert "internal detail" not in answer.text and '<meta http-equiv="refresh"' not in answer.text
    assert set(CONTRACT_CODES) <= set(ERROR_MESSAGES)


@BOTH
def test_a_pending_attempt_shows_connecting_and_reloads(page: Page) -> None:
    attempt_id = page.add_attempt()
    page.login()
    text = page.client.get(f"{PAGE}?attempt={attempt_id}").text
    assert banner(text) == ("pending", "Connecting your X (Twitter) account…")
    assert '<meta http-equiv="refresh" content="2">' in text


@BOTH
def test_a_connected_attempt_names_the_accounts(page: Page) -> None:
    first = page.add_account()
    second = page.add_account(account="1002", name="Shop Page", handle=None)
    attempt_id = page.add_attempt(status="connected", stage="connected", account_ids=[first, second])
    page.login()
    assert banner(page.client.get(f"{PAGE}?attempt={attempt_id}").text) == (
        "success",
        "Connected X (Twitter): Alice Example (@alice), Shop Page.",
    )


@pytest.mark.parametrize("which", ["other-site", "unknown", "malformed"])
@BOTH
def test_an_attempt_of_another_site_or_unknown_is_not_shown(page: Page, which: str) -> None:
    attempt_id = {
        "other-site": page.add_attempt(site_id="site-2", status="connected", stage="connected"),
        "unknown": str(uuid.uuid4()),
        "malformed": "not-an-id",
    }[which]
    page.login()
    kind, words = banner(page.client.get(f"{PAGE}?attempt={attempt_id}").text)
    assert kind == "error" and "could not find that connection attempt" in words


# ---- connecting from the page --------------------------------------------------------------------


@BOTH
def test_connect_starts_an_attempt_and_sends_the_browser_to_the_platform(page: Page) -> None:
    page.login()
    answer = page.client.post(f"{PAGE}/connect/twitter", data={"csrf_token": page.csrf()})
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    query = parse_qs(location.query)
    [attempt] = page.attempts()
    assert (attempt.platform, attempt.site_id, attempt.user_id) == ("twitter", SITE, "accounts-page")
    assert attempt.return_to == f"http://127.0.0.1:8000{PAGE}"
    state = verify_state(query["state"][0], page.settings.state_secret or "")
    assert (state.attempt_id, state.return_to) == (attempt.id, attempt.return_to)
    assert query["redirect_uri"] == ["http://127.0.0.1:8000/oauth/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert location.netloc.startswith("127.0.0.1:")  # the fake platform's authorize endpoint


@BOTH
def test_connecting_an_unconfigured_platform_names_the_env_vars_and_writes_nothing(page: Page) -> None:
    client, _ = page.build(tiktok_client_secret=None)
    page.login(client)
    csrf = field_value(client.get(PAGE).text, "csrf_token")
    answer = client.post(f"{PAGE}/connect/tiktok", data={"csrf_token": csrf})
    assert answer.status_code == 400
    kind, words = banner(answer.text)
    assert kind == "error" and "TIKTOK_CLIENT_SECRET" in words
    assert page.attempts() == [] and page.all_queued() == []


@BOTH
def test_bluesky_connect_enqueues_the_login_and_returns_to_the_attempt(page: Page) -> None:
    page.login()
    answer = page.client.post(
        f"{PAGE}/connect/bluesky",
        data={"csrf_token": page.csrf(), "handle": "@Alice.example.com", "app_password": "abcd-efgh-ijkl-mnop"},
    )
    assert answer.status_code == 303
    [attempt] = page.attempts()
    assert answer.headers["location"] == f"{PAGE}?attempt={attempt.id}"
    assert attempt.instance == "alice.example.com" and attempt.app_password != "abcd-efgh-ijkl-mnop"
    [message] = page.queued("connect")
    assert message["kwargs"] == {"attempt_id": attempt.id}
    assert "abcd-efgh" not in json.dumps(message)


@BOTH
def test_bluesky_connect_without_a_password_explains_and_writes_nothing(page: Page) -> None:
    page.login()
    answer = page.client.post(
        f"{PAGE}/connect/bluesky", data={"csrf_token": page.csrf(), "handle": "alice.bsky.social"}
    )
    assert answer.status_code == 422
    assert banner(answer.text) == ("error", "Enter an app password (not the account's main password).")
    assert page.attempts() == [] and page.all_queued() == []


BSKY_DID = "did:plc:abcdefghijklmnopqrstuvwx"
BSKY_PDS = "https://pds.example.com"


def bluesky_network(pushed: list[httpx.Request]) -> httpx.Client:
    """The network a Bluesky sign-in crosses, offline: the handle's ``/.well-known/atproto-did``,
    the PLC directory's DID document, the PDS's OAuth metadata, and its PAR endpoint."""
    doc = {
        "id": BSKY_DID,
        "alsoKnownAs": ["at://alice.example.com"],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": BSKY_PDS}],
    }
    metadata = {
        "issuer": BSKY_PDS,
        "authorization_endpoint": BSKY_PDS + "/oauth/authorize",
        "token_endpoint": BSKY_PDS + "/oauth/token",
        "pushed_authorization_request_endpoint": BSKY_PDS + "/oauth/par",
    }

    def par(request: httpx.Request) -> httpx.Response:
        pushed.append(request)
        return httpx.Response(201, json={"request_uri": "urn:ietf:params:oauth:request_uri:req-1", "expires_in": 299})

    routes = {
        "https://alice.example.com/.well-known/atproto-did": lambda r: httpx.Response(200, text=BSKY_DID),
        f"https://plc.directory/{BSKY_DID}": lambda r: httpx.Response(200, json=doc),
        BSKY_PDS + "/.well-known/oauth-protected-resource": lambda r: httpx.Response(
            200, json={"authorization_servers": [BSKY_PDS]}
        ),
        BSKY_PDS + "/.well-known/oauth-authorization-server": lambda r: httpx.Response(200, json=metadata),
        BSKY_PDS + "/oauth/par": par,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        route = routes.get(str(request.url.copy_with(query=None)))
        return route(request) if route else httpx.Response(400, json={"error": "InvalidRequest", "message": "nope"})

    return httpx.Client(transport=httpx.MockTransport(handler))


@contextlib.contextmanager
def page_on(page: Page, http: httpx.Client) -> Iterator[TestClient]:
    """The page's app on the page's database and broker, whose platform calls go to ``http``;
    handles resolve by HTTPS only (no DNS in tests)."""
    from workers.adapters import adapter_for
    from workers.runtime import Runtime

    lent = frozenset({"engine", "broker", "http"})
    rt = Runtime(page.settings, _engine=page.engine, _broker=page.broker, _http=http, lent=lent)
    adapter: Any = adapter_for(rt, "bluesky")
    adapter.txt = lambda name: []
    try:
        with TestClient(create_app(runtime=rt), follow_redirects=False) as client:
            page.login(client)
            yield client
    finally:
        rt.close()


@BOTH
def test_sign_in_with_bluesky_starts_oauth_and_sends_the_browser_to_the_authorization_server(page: Page) -> None:
    pushed: list[httpx.Request] = []
    with bluesky_network(pushed) as http, page_on(page, http) as client:
        csrf = field_value(client.get(PAGE).text, "csrf_token")
        answer = client.post(
            f"{PAGE}/connect/bluesky", data={"csrf_token": csrf, "method": "oauth", "handle": "@Alice.example.com"}
        )
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == BSKY_PDS + "/oauth/authorize"
    query = parse_qs(location.query)
    assert query["request_uri"] == ["urn:ietf:params:oauth:request_uri:req-1"] and set(query) == {
        "client_id",
        "request_uri",
    }
    [attempt] = page.attempts()
    assert (attempt.platform, attempt.site_id, attempt.user_id) == ("bluesky", SITE, "accounts-page")
    assert attempt.instance == "alice.example.com" and attempt.return_to == f"http://127.0.0.1:8000{PAGE}"
    assert attempt.dpop_key and BSKY_DID not in attempt.dpop_key  # the session (with its key) is encrypted
    assert attempt.code_verifier and page.all_queued() == []  # nothing to do until the callback
    [par] = pushed
    form = parse_qs(par.content.decode())
    assert form["login_hint"] == ["alice.example.com"] and form["code_challenge_method"] == ["S256"]
    state = verify_state(form["state"][0], page.settings.state_secret or "")
    assert (state.attempt_id, state.return_to) == (attempt.id, attempt.return_to)
    assert par.headers["dpop"]


@BOTH
def test_sign_in_with_an_unknown_bluesky_handle_explains_and_writes_nothing(page: Page) -> None:
    pushed: list[httpx.Request] = []
    with bluesky_network(pushed) as http, page_on(page, http) as client:
        csrf = field_value(client.get(PAGE).text, "csrf_token")
        answer = client.post(
            f"{PAGE}/connect/bluesky", data={"csrf_token": csrf, "method": "oauth", "handle": "nobody.example.com"}
        )
        malformed = client.post(
            f"{PAGE}/connect/bluesky", data={"csrf_token": csrf, "method": "oauth", "handle": "not a handle"}
        )
    assert answer.status_code == 400  # the person's input, not a platform failure
    assert banner(answer.text) == ("error", "The handle cannot be resolved")
    assert malformed.status_code == 422
    assert banner(malformed.text) == ("error", "Enter the Bluesky handle, for example alice.bsky.social.")
    assert pushed == [] and page.attempts() == [] and page.all_queued() == []


@BOTH
def test_mastodon_needs_a_server(page: Page) -> None:
    page.login()
    answer = page.client.post(f"{PAGE}/connect/mastodon", data={"csrf_token": page.csrf(), "instance": ""})
    assert answer.status_code == 400
    assert "instance" in banner(answer.text)[1]
    assert page.attempts() == []


@BOTH
def test_an_unknown_platform_is_not_found(page: Page) -> None:
    page.login()
    answer = page.client.post(f"{PAGE}/connect/demo", data={"csrf_token": page.csrf()})
    assert answer.status_code == 404
    assert page.attempts() == []


# ---- actions and CSRF ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["sync", "refresh", "disconnect"])
@BOTH
def test_posts_without_the_csrf_token_change_nothing(page: Page, path: str) -> None:
    account_id = page.add_account()
    page.login()
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": SessionSigner(page.settings).csrf_token(
        SessionSigner(page.settings).new_session()[1])}):  # fmt: skip
        answer = page.client.post(f"{PAGE}/{account_id}/{path}", data=data)
        assert answer.status_code == 403
        assert "Reload the page" in answer.text
    answer = page.client.post(f"{PAGE}/connect/linkedin", data={"csrf_token": "forged"})
    assert answer.status_code == 403
    assert page.all_queued() == [] and page.attempts() == []


@BOTH
def test_posts_without_a_session_go_to_the_sign_in(page: Page) -> None:
    account_id = page.add_account()
    answer = page.client.post(f"{PAGE}/{account_id}/sync", data={"csrf_token": "x"})
    assert answer.status_code == 303 and answer.headers["location"] == PAGE
    assert page.all_queued() == []


@pytest.mark.parametrize(
    ("action", "queue", "actor"), [("sync", "sync", "sync_account"), ("refresh", "refresh", "refresh_account")]
)
@BOTH
def test_sync_and_refresh_enqueue_the_same_messages_as_the_api(page: Page, action: str, queue: str, actor: str) -> None:
    account_id = page.add_account()
    page.login()
    answer = page.client.post(f"{PAGE}/{account_id}/{action}", data={"csrf_token": page.csrf()})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{PAGE}?notice={action}&account={account_id}"
    [message] = page.queued(queue)
    assert message["actor_name"] == actor and message["kwargs"]["account_id"] == account_id
    if action == "refresh":
        assert message["kwargs"]["reason"] == "manual"  # a person asked: refresh even if not due
    text = page.client.get(answer.headers["location"]).text
    assert banner(text)[0] == "info" and "Alice Example" in banner(text)[1]
    assert f'<meta http-equiv="refresh" content="3;url={PAGE}">' in text


@BOTH
def test_disconnect_asks_first_on_a_page_of_its_own(page: Page) -> None:
    account_id = page.add_account()
    page.login()
    confirm = page.client.get(f"{PAGE}/{account_id}/disconnect")
    assert confirm.status_code == 200
    assert "Disconnect Alice Example?" in confirm.text
    assert f'action="/sites/site-1/accounts/{account_id}/disconnect"' in confirm.text
    assert "Yes, disconnect" in confirm.text and f'href="{PAGE}"' in confirm.text
    assert page.all_queued() == []  # looking at the question changes nothing

    answer = page.client.post(
        f"{PAGE}/{account_id}/disconnect", data={"csrf_token": field_value(confirm.text, "csrf_token")}
    )
    assert answer.status_code == 303
    queued = page.queued("maintenance")
    assert len(queued) == 1, queued
    [message] = queued
    assert message["actor_name"] == "disconnect_account" and message["kwargs"]["account_id"] == account_id


@BOTH
def test_actions_on_another_sites_account_are_not_found(page: Page) -> None:
    theirs = page.add_account(site_id="site-2", account="2002")
    page.login()
    csrf = page.csrf()
    assert page.client.get(f"{PAGE}/{theirs}/disconnect").status_code == 404
    for action in ("sync", "refresh", "disconnect"):
        assert page.client.post(f"{PAGE}/{theirs}/{action}", data={"csrf_token": csrf}).status_code == 404
    assert page.client.post(f"{PAGE}/{uuid.uuid4()}/sync", data={"csrf_token": csrf}).status_code == 404
    assert page.all_queued() == []


def test_a_broker_outage_is_explained(page: Page) -> None:
    account_id = page.add_account()
    client, _ = page.build(broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    page.login(client)
    csrf = field_value(client.get(PAGE).text, "csrf_token")
    answer = client.post(f"{PAGE}/{account_id}/sync", data={"csrf_token": csrf})
    assert answer.status_code == 503
    assert banner(answer.text) == ("error", "The message broker is unavailable; try again shortly")


@BOTH
def test_a_malformed_site_id_is_not_found(page: Page) -> None:
    assert page.client.get("/sites/bad%20site/accounts").status_code == 404


# ---- the demo platform's registration ------------------------------------------------------------


@pytest.mark.unit
def test_the_demo_platform_exists_only_when_enabled(settings_factory: Any) -> None:
    off = settings_factory()
    assert [s.platform for s in platform_statuses(off)] == list(PLATFORMS)
    with pytest.raises(UnknownPlatform):
        adapter_class("demo", off)
    with pytest.raises(UnknownPlatform):
        adapter_class("demo")
    on = settings_factory(demo_enabled=True)
    statuses = platform_statuses(on)
    assert [s.platform for s in statuses] == [*PLATFORMS, "demo"]
    assert statuses[-1].configured and statuses[-1].missing_env == []
    assert adapter_class("demo", on).__name__ == "DemoAdapter"


@BOTH
def test_with_the_demo_enabled_the_page_has_its_card(page: Page) -> None:
    client, _ = page.build(demo_enabled=True)
    page.login(client)
    demo = card(client.get(PAGE).text, "demo")
    assert 'action="/sites/site-1/accounts/connect/demo"' in demo and "Not configured" not in demo
