"""The ``/v1`` API and the health endpoints, on real PostgreSQL and a real Redis broker; the tests
marked ``@BOTH`` also on SQLite with Dramatiq's in-memory ``StubBroker`` (the unit tier).

Every refusal is checked for its status and message AND for leaving nothing behind: no attempt
row in the database, no message in Redis.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
from models.tables import SocialAccount, SocialMastodonApp, SocialOAuthState
from platforms.oauth2 import s256_challenge
from social_accounts.settings import PLATFORMS, Settings
from social_accounts.values import AccountProfile, Stats, TokenSet
from tests.support import CONTRACT_CODES, WEB_BACKENDS, queued_messages, web_backend
from web_callback.app import create_app
from web_callback.messages import ERROR_MESSAGES, error_message
from web_callback.state import verify_state
from workers.broker import build_broker

AUTH = {"Authorization": "Bearer test-api-token"}
RETURN_TO = "http://127.0.0.1:8000/dashboard?tab=social"
DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_DB = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"


@dataclass
class Api:
    client: TestClient
    settings: Settings
    engine: Engine
    broker: Any  # the app's: a RedisBroker, or the StubBroker of the unit tier
    ring: KeyRing
    build: Any  # make another client on the same database: build(**settings_overrides)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx2.Response:
        return self.client.post(path, json=body, headers=AUTH, **kw)

    def get(self, path: str) -> httpx2.Response:
        return self.client.get(path, headers=AUTH)

    def attempts(self) -> list[SocialOAuthState]:
        with Session(self.engine) as session:
            return list(session.execute(sa.select(SocialOAuthState)).scalars())

    def queued(self, queue: str) -> list[dict[str, Any]]:
        return queued_messages(self.broker, queue)

    def all_queued(self) -> list[dict[str, Any]]:
        return [m for q in ("connect", "refresh", "sync", "maintenance") for m in self.queued(q)]

    def assert_nothing_written(self) -> None:
        assert self.attempts() == []
        assert self.all_queued() == []


#: run a test on both backends: SQLite with the in-memory broker (unit tier), and the real services
BOTH = pytest.mark.parametrize("api", WEB_BACKENDS, indirect=True)


@pytest.fixture
def api(request: pytest.FixtureRequest, tmp_path: Any, settings_factory: Any, fake: Any) -> Iterator[Api]:
    """The app on PostgreSQL and Redis (``services``, the default), or on SQLite and a ``StubBroker``
    (``memory``: ``@BOTH``)."""
    db_url, broker_url = web_backend(request, tmp_path)
    upgrade(db_url)
    engine = make_engine(db_url)
    cleanup: list[Any] = []
    stack = contextlib.ExitStack()

    def build(**overrides: Any) -> tuple[TestClient, Settings]:
        values = {"database_url": db_url, "broker_url": broker_url, **overrides}
        settings = settings_factory(**values)
        broker = None if values["broker_url"] != broker_url else build_broker(settings)
        client = stack.enter_context(
            TestClient(create_app(settings, broker=broker, engine=engine), follow_redirects=False)
        )
        if broker is not None:
            cleanup.append(broker)
        return client, settings

    client, settings = build()
    try:
        yield Api(client, settings, engine, cleanup[0], KeyRing.from_settings(settings), build)
    finally:
        stack.close()
        for item in cleanup:
            item.close()
        engine.dispose()


def refused(api: Api, response: httpx2.Response, status: int, code: str, *phrases: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    for phrase in phrases:
        assert phrase in body["message"]
    api.assert_nothing_written()
    return body


CONNECT = {"site_id": "site-1", "user_id": "user-1", "return_to": RETURN_TO}


# ---- authentication ---------------------------------------------------------------------------


PROTECTED = [
    ("GET", "/v1/platforms"),
    ("POST", "/v1/connect/twitter"),
    ("GET", f"/v1/attempts/{uuid.uuid4()}"),
    ("GET", "/v1/sites/site-1/accounts"),
    ("GET", f"/v1/accounts/{uuid.uuid4()}"),
    ("POST", f"/v1/accounts/{uuid.uuid4()}/refresh"),
    ("DELETE", f"/v1/accounts/{uuid.uuid4()}"),
    ("POST", f"/v1/accounts/{uuid.uuid4()}/token"),
]


@BOTH
def test_missing_or_wrong_token_is_401(api: Api) -> None:
    for method, path in PROTECTED:
        for header in (
            None,
            "Bearer wrong-token",
            "Bearer test-api-token-and-more",
            "Basic dGVzdC1hcGktdG9rZW4=",
            "test-api-token",
        ):
            headers = {"Authorization": header} if header else {}
            response = api.client.request(method, path, headers=headers, json=CONNECT)
            assert response.status_code == 401, (method, path, header)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "test-api-token" not in response.text
    api.assert_nothing_written()
    assert api.client.get("/v1/platforms", headers={"Authorization": "bearer test-api-token"}).status_code == 200


@BOTH
def test_health_endpoints_need_no_token(api: Api) -> None:
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/readyz").status_code == 200
    assert api.client.get("/v1/platforms", headers=AUTH).status_code == 200


# ---- platforms --------------------------------------------------------------------------------


@BOTH
def test_platforms_lists_all_ten_with_what_they_lack(api: Api) -> None:
    client, _ = api.build(twitter_client_id=None, twitter_client_secret=None)
    listing = client.get("/v1/platforms", headers=AUTH).json()
    assert [p["platform"] for p in listing] == list(PLATFORMS)
    by_name = {p["platform"]: p for p in listing}
    assert by_name["twitter"] == {
        "platform": "twitter",
        "auth_type": "oauth2",
        "configured": False,
        "missing_env": ["TWITTER_CLIENT_ID", "TWITTER_CLIENT_SECRET"],
    }
    assert by_name["linkedin"]["configured"] is True
    assert by_name["bluesky"]["auth_type"] == "app_password"
    assert by_name["mastodon"]["missing_env"] == []


# ---- connect: refusals ------------------------------------------------------------------------


@BOTH
def test_unknown_platform_is_400(api: Api) -> None:
    refused(api, api.post("/v1/connect/myspace", CONNECT), 400, "unknown_platform", "myspace", "twitter")


@BOTH
def test_unconfigured_platform_names_the_missing_variables(api: Api) -> None:
    client, _ = api.build(linkedin_client_secret=None)
    response = client.post("/v1/connect/linkedin", json=CONNECT, headers=AUTH)
    body = refused(api, response, 400, "platform_not_configured", "LINKEDIN_CLIENT_SECRET")
    assert body["missing_env"] == ["LINKEDIN_CLIENT_SECRET"]


@pytest.mark.parametrize(
    "body",
    [
        {**CONNECT, "site_id": "s" * 200},
        {**CONNECT, "user_id": ""},
        {**CONNECT, "return_to": "http://127.0.0.1:8000/" + "x" * 2000},
        {**CONNECT, "unexpected": "field"},
        {"user_id": "user-1"},
        ["not", "an", "object"],
        {**CONNECT, "site_id": "bad id with spaces"},
    ],
)
@BOTH
def test_bad_body_is_422(api: Api, body: Any) -> None:
    body_out = refused(api, api.post("/v1/connect/twitter", body), 422, "invalid_body")
    assert body_out["details"]


@BOTH
def test_oversized_or_broken_body_is_422(api: Api) -> None:
    big = api.client.post("/v1/connect/twitter", content=b'{"site_id": "' + b"x" * 20000 + b'"}', headers=AUTH)
    refused(api, big, 422, "body_too_large")
    broken = api.client.post("/v1/connect/twitter", content=b"{not json", headers=AUTH)
    refused(api, broken, 422, "invalid_json")


@pytest.mark.parametrize(
    "return_to", ["https://evil.example/steal", "javascript:alert(1)", "//127.0.0.1:8000/x", "http://u@127.0.0.1:8000/"]
)
@BOTH
def test_return_to_off_the_allowed_origins_is_400(api: Api, return_to: str) -> None:
    response = api.post("/v1/connect/twitter", {**CONNECT, "return_to": return_to})
    assert refused(api, response, 400, response.json()["error"])["error"] in {
        "return_to_not_allowed",
        "return_to_invalid",
    }


@BOTH
def test_instance_is_refused_for_other_platforms(api: Api) -> None:
    refused(
        api, api.post("/v1/connect/twitter", {**CONNECT, "instance": "mastodon.social"}), 400, "instance_not_allowed"
    )


# ---- connect: OAuth platforms -----------------------------------------------------------------


@BOTH
def test_connect_creates_the_attempt_and_a_signed_authorization_url(api: Api, fake: Any) -> None:
    before = datetime.now(UTC)
    response = api.post("/v1/connect/twitter", CONNECT)
    assert response.status_code == 201, response.text
    attempt_id = response.json()["attempt_id"]
    url = urlsplit(response.json()["authorization_url"])
    assert f"{url.scheme}://{url.netloc}" == fake.base_url
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert params["redirect_uri"] == "http://127.0.0.1:8000/oauth/callback"
    state = verify_state(params["state"], "test-state-secret")
    assert (state.attempt_id, state.platform, state.return_to) == (attempt_id, "twitter", RETURN_TO)

    [row] = api.attempts()
    assert (row.id, row.platform, row.site_id, row.user_id) == (attempt_id, "twitter", "site-1", "user-1")
    assert (row.status, row.stage, row.return_to) == ("pending", "created", RETURN_TO)
    assert timedelta(minutes=9) < row.expires_at - before <= timedelta(minutes=10, seconds=5)
    assert abs((state.expires_at - row.expires_at).total_seconds()) < 1
    verifier = repository.attempt_secret(api.ring, row, "code_verifier")
    assert verifier and verifier not in (row.code_verifier or "")
    assert params["code_challenge"] == s256_challenge(verifier)
    assert api.all_queued() == []  # nothing to do for the workers until the user comes back


@BOTH
def test_attempt_view_and_error_messages(api: Api) -> None:
    attempt_id = api.post("/v1/connect/twitter", CONNECT).json()["attempt_id"]
    view = api.get(f"/v1/attempts/{attempt_id}").json()
    assert view == {
        "attempt_id": attempt_id,
        "platform": "twitter",
        "site_id": "site-1",
        "status": "pending",
        "error_code": None,
        "error_message": None,
        "account_ids": [],
    }
    with Session(api.engine) as session, session.begin():
        row = session.get(SocialOAuthState, attempt_id)
        assert row is not None
        row.status, row.error_code, row.error_message = "failed", "exchange_uncertain", "ReadTimeout at token"
    view = api.get(f"/v1/attempts/{attempt_id}").json()
    assert view["status"] == "failed" and view["error_code"] == "exchange_uncertain"
    assert view["error_message"] == ERROR_MESSAGES["exchange_uncertain"]
    assert api.get(f"/v1/attempts/{uuid.uuid4()}").status_code == 404
    assert api.get("/v1/attempts/not-a-uuid").status_code == 404


@pytest.mark.unit
def test_every_contract_error_code_has_a_sentence() -> None:
    for code in CONTRACT_CODES:
        sentence = error_message(code)
        assert sentence and sentence.endswith(".") and code not in sentence
    assert error_message(None) is None
    assert error_message("something_new")


# ---- connect: Mastodon ------------------------------------------------------------------------


def mastodon_apps(api: Api) -> list[SocialMastodonApp]:
    with Session(api.engine) as session:
        return list(session.execute(sa.select(SocialMastodonApp)).scalars())


def test_mastodon_registers_once_then_reuses_the_app(api: Api, fake: Any) -> None:
    body = {**CONNECT, "instance": fake.base_url}
    first = api.post("/v1/connect/mastodon", body)
    assert first.status_code == 201, first.text
    url = urlsplit(first.json()["authorization_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == fake.base_url + "/oauth/authorize"
    assert fake.count("/api/v1/apps", "POST") == 1
    [app] = mastodon_apps(api)
    assert parse_qs(url.query)["client_id"] == [app.client_id]

    second = api.post("/v1/connect/mastodon", body)
    assert second.status_code == 201
    assert fake.count("/api/v1/apps", "POST") == 1
    rows = {row.id: row for row in api.attempts()}
    assert set(rows) == {first.json()["attempt_id"], second.json()["attempt_id"]}
    assert {row.instance for row in rows.values()} == {fake.base_url}


@BOTH
def test_mastodon_needs_an_instance(api: Api) -> None:
    refused(api, api.post("/v1/connect/mastodon", CONNECT), 400, "instance_required")


@BOTH
def test_mastodon_private_instance_is_refused_without_a_request(api: Api, fake: Any) -> None:
    client, _ = api.build(allow_private_network=False)
    response = client.post("/v1/connect/mastodon", json={**CONNECT, "instance": fake.base_url}, headers=AUTH)
    refused(api, response, 400, "unsafe_address")
    assert fake.count("/api/v1/apps") == 0 and fake.count("/api/v1/instance") == 0
    assert mastodon_apps(api) == []


def test_mastodon_unreachable_instance_is_502_and_writes_nothing(api: Api) -> None:
    response = api.post("/v1/connect/mastodon", {**CONNECT, "instance": "http://127.0.0.1:1"})
    refused(api, response, 502, "instance_unreachable", "Mastodon instance")
    assert mastodon_apps(api) == []


# ---- connect: Bluesky -------------------------------------------------------------------------

BLUESKY = {
    "site_id": "site-1",
    "user_id": "user-1",
    "handle": "@Alice.bsky.social",
    "app_password": "abcd-efgh-ijkl-mnop",
}


@BOTH
def test_bluesky_stores_the_password_encrypted_and_enqueues_the_login(api: Api) -> None:
    response = api.post("/v1/connect/bluesky", BLUESKY)
    assert response.status_code == 202, response.text
    attempt_id = response.json()["attempt_id"]
    assert response.json() == {"attempt_id": attempt_id}
    [row] = api.attempts()
    assert (row.id, row.platform, row.instance) == (attempt_id, "bluesky", "alice.bsky.social")
    assert BLUESKY["app_password"] not in (row.app_password or "")
    assert repository.attempt_secret(api.ring, row, "app_password") == BLUESKY["app_password"]
    [message] = api.queued("connect")
    assert message["actor_name"] == "bluesky_login"
    assert message["kwargs"] == {"attempt_id": attempt_id}


@BOTH
def test_bluesky_bad_body_does_not_echo_the_password(api: Api) -> None:
    response = api.post("/v1/connect/bluesky", {**BLUESKY, "app_password": "p" * 300})
    refused(api, response, 422, "invalid_body")
    assert "ppppp" not in response.text
    refused(api, api.post("/v1/connect/bluesky", {**BLUESKY, "handle": "no spaces allowed"}), 422, "invalid_body")


def test_bluesky_oauth_on_a_public_url_without_signing_keys_names_what_is_missing(api: Api) -> None:
    client, _ = api.build(public_url="https://accounts.example.com", bluesky_oauth_keys=None)
    oauth = {k: v for k, v in BLUESKY.items() if k != "app_password"}
    response = client.post("/v1/connect/bluesky", json=oauth, headers=AUTH)
    body = refused(api, response, 400, "platform_not_configured")
    assert "BLUESKY_OAUTH_KEYS" in body["missing_env"]


def test_bluesky_with_the_broker_down_is_503_and_leaves_no_row(api: Api) -> None:
    client, _ = api.build(broker_url=DEAD_REDIS)
    response = client.post("/v1/connect/bluesky", json=BLUESKY, headers=AUTH)
    refused(api, response, 503, "broker_unavailable")


# ---- accounts ---------------------------------------------------------------------------------

SECRET_ACCESS = "ACCESS-TOKEN-that-must-never-leave-0123456789"
SECRET_REFRESH = "REFRESH-TOKEN-that-must-never-leave-0123456789"


def make_account(
    api: Api, site_id: str = "site-1", account: str = "42", *, platform: str = "twitter", **tokens: Any
) -> str:
    profile = AccountProfile(
        platform_account_id=account,
        name="Alice",
        handle="alice",
        avatar_url=None,
        tokens=TokenSet(SECRET_ACCESS, SECRET_REFRESH, datetime.now(UTC) + timedelta(hours=2), **tokens),
        stats=Stats(followers=10),
        refresh_model="rotate",
    )
    with Session(api.engine) as session, session.begin():
        account_id, _ = repository.upsert_account(
            session,
            api.ring,
            site_id=site_id,
            platform=platform,
            user_id="user-1",
            profile=profile,
            next_refresh_at=None,
            now=datetime.now(UTC),
        )
    return account_id


@BOTH
def test_accounts_are_listed_and_shown_without_tokens(api: Api) -> None:
    account_id = make_account(api)
    make_account(api, site_id="site-2")
    listing = api.get("/v1/sites/site-1/accounts")
    assert listing.status_code == 200
    [account] = listing.json()
    assert account["id"] == account_id and account["followers_count"] == 10
    assert account["health_reason"]
    one = api.get(f"/v1/accounts/{account_id}")
    assert one.status_code == 200 and one.json() == account
    for text in (listing.text, one.text):
        assert SECRET_ACCESS not in text and SECRET_REFRESH not in text
    assert not {"access_token", "refresh_token", "token_metadata"} & set(account)
    assert api.get("/v1/sites/nobody/accounts").json() == []
    assert api.get(f"/v1/accounts/{uuid.uuid4()}").status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix", "queue", "actor"),
    [
        ("POST", "/refresh", "refresh", "refresh_account"),
        ("POST", "/sync", "sync", "sync_account"),
        ("DELETE", "", "maintenance", "disconnect_account"),
    ],
)
@BOTH
def test_account_actions_enqueue_one_message(api: Api, method: str, suffix: str, queue: str, actor: str) -> None:
    account_id = make_account(api)
    response = api.client.request(method, f"/v1/accounts/{account_id}{suffix}", headers=AUTH)
    assert response.status_code == 202, response.text
    [message] = api.all_queued()
    assert message["queue_name"] == queue and message["actor_name"] == actor
    assert message["kwargs"]["account_id"] == account_id

    unknown = api.client.request(method, f"/v1/accounts/{uuid.uuid4()}{suffix}", headers=AUTH)
    assert unknown.status_code == 404
    assert len(api.all_queued()) == 1


def test_account_action_with_the_broker_down_is_503(api: Api) -> None:
    account_id = make_account(api)
    client, _ = api.build(broker_url=DEAD_REDIS)
    assert client.post(f"/v1/accounts/{account_id}/refresh", headers=AUTH).status_code == 503


@BOTH
def test_token_endpoint_hands_out_a_token_that_is_not_due_without_calling_the_platform(api: Api, fake: Any) -> None:
    account_id = make_account(api)
    response = api.post(f"/v1/accounts/{account_id}/token")
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == SECRET_ACCESS
    assert response.json()["expires_at"]
    assert response.headers["cache-control"] == "no-store"
    assert fake.count("/twitter/*") == 0


@BOTH
def test_token_endpoint_answers_409_for_an_account_that_needs_reconnecting(api: Api) -> None:
    account_id = make_account(api)
    with Session(api.engine) as session, session.begin():
        row = session.get(SocialAccount, account_id)
        assert row is not None
        row.status = "expired"
        row.last_error = "refresh: invalid_grant"
    response = api.post(f"/v1/accounts/{account_id}/token")
    assert response.status_code == 409
    assert response.json()["error"] == "needs_reconnect"
    assert SECRET_ACCESS not in response.text


@BOTH
def test_a_dpop_bound_token_is_never_handed_out_the_caller_is_sent_to_request(api: Api, fake: Any) -> None:
    from platforms import dpop
    from workers.tokens import TokenBound, get_valid_token

    metadata = {"auth": "oauth", "did": "did:plc:abcdefghijklmnopqrstuvwx", "pds_url": "https://pds.example"}
    key = dpop.export_key(dpop.new_key())
    bound = make_account(api, account="did:plc:x", platform="bluesky", metadata=metadata, dpop_key=key)
    response = api.post(f"/v1/accounts/{bound}/token")
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "token_bound"
    assert "/v1/accounts/{id}/request" in response.json()["message"]
    assert SECRET_ACCESS not in response.text and SECRET_REFRESH not in response.text and key not in response.text
    with pytest.raises(TokenBound, match="platform_request") as raised:
        get_valid_token(bound, rt=api.client.app.state.services)
    assert SECRET_ACCESS not in str(raised.value)
    # an app-password session (no DPoP key) of the same platform is handed out as before
    app_password = make_account(api, account="did:plc:y", platform="bluesky", metadata=metadata)
    assert api.post(f"/v1/accounts/{app_password}/token").json()["access_token"] == SECRET_ACCESS
    assert fake.requests == []


@BOTH
def test_token_endpoint_404_for_unknown_account(api: Api) -> None:
    assert api.post("/v1/accounts/00000000-0000-0000-0000-000000000000/token").status_code == 404
    assert api.post("/v1/accounts/not-an-id/token").status_code == 404


# ---- health -----------------------------------------------------------------------------------


def test_readyz_fails_when_the_database_is_down(api: Api, settings_factory: Any) -> None:
    dead = make_engine(DEAD_DB)
    try:
        settings = settings_factory(database_url=DEAD_DB, broker_url=api.settings.broker_url)
        broker = build_broker(settings)
        with TestClient(create_app(settings, broker=broker, engine=dead)) as client:
            ready = client.get("/readyz")
            assert client.get("/healthz").status_code == 200
        broker.close()
    finally:
        dead.dispose()
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] != "ok" and ready.json()["checks"]["broker"] == "ok"


def test_readyz_fails_when_the_broker_is_down(api: Api) -> None:
    client, _ = api.build(broker_url=DEAD_REDIS)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "broker": ready.json()["checks"]["broker"]}
    assert ready.json()["checks"]["broker"] != "ok"


@BOTH
def test_metrics_are_prometheus_text(api: Api) -> None:
    api.client.get("/oauth/callback?state=forged.state&code=x")
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'social_accounts_callbacks_total{outcome="state_invalid"}' in response.text


def test_token_endpoint_refreshes_through_the_runtimes_http_client(api: Api, fake: Any) -> None:
    """Under ``run`` the app gets the worker threads' runtime: a due token is renewed through
    that runtime's HTTP client (the workers' one), not one of the app's own."""
    import httpx

    from workers.runtime import Runtime, platform_client

    class Noting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.url.path)
            return super().handle_request(request)

    account_id = make_account(api)
    with Session(api.engine) as session, session.begin():
        row = session.get(SocialAccount, account_id)
        assert row is not None
        row.token_expires_at = datetime.now(UTC) + timedelta(seconds=5)  # due: inside every refresh margin
    seen: list[str] = []
    rt = Runtime(
        api.settings, _engine=api.engine, _http=platform_client(api.settings, Noting()), lent=frozenset({"engine"})
    )
    try:
        with TestClient(create_app(runtime=rt)) as client:
            response = client.post(f"/v1/accounts/{account_id}/token", headers=AUTH)
        # the fake never granted this refresh token: the platform refuses it, the account needs reconnecting
        assert response.status_code == 409, response.text
        assert fake.count("/twitter/2/oauth2/token") == 1
        assert seen == ["/twitter/2/oauth2/token"]  # that one call went through the runtime's client
    finally:
        rt.close()
