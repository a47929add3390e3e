"""Platform requests made for other modules: ``platform_request`` and ``POST /v1/accounts/{id}/request``.

Accounts are connected through the real pipeline (the fakes issued their tokens), so every
request below is one the fake platform (or the reference PDS) really checks: the right host,
the right token, the right way.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from models.tables import SocialAccount
from platforms.apipath import check_relative_path, path_allowed
from platforms.bluesky import BlueskyAdapter
from platforms.meta import MetaGraphAdapter
from platforms.twitter import TwitterAdapter
from social_accounts.errors import InputError
from tests.fakeplatform import FakeResponse
from tests.lifecycle_support import (
    FAST_LIFECYCLE,
    LIFECYCLE_SETTINGS,
    api_client,
    bluesky_settings,
    calls,
    connect,
    connect_bluesky,
    connect_mastodon,
    events,
    load,
    raw_row,
    refresh_calls,
)
from tests.pipeline_support import Pipeline
from workers import runtime
from workers.coordination import for_runtime
from workers.proxy import PlatformAnswer, platform_request

# ---- the path check (no service) -----------------------------------------------------------------

LEAVING = [
    "https://evil.example/x",
    "http:/evil.example",
    "//evil.example/x",
    "users/me",
    "/\\evil.example",
    "/users\\me",
    "/%5cevil.example",
    "/%2F%2Fevil.example",
    "/users/../oauth2/token",
    "/users/./me",
    "/%2e%2e/oauth2/token",
    "/%252e%252e/oauth2/token",
    "/users%2f..%2foauth2",
    "/users/me?access_token=x",
    "/users/me#x",
    "/users me",
    "/users/%00",
    "/users//me",
    "/users/%zz",
    "",
]


@pytest.mark.unit
@pytest.mark.parametrize("path", LEAVING)
def test_a_path_that_could_leave_the_api_is_refused(path: str) -> None:
    with pytest.raises(InputError) as refused:
        check_relative_path(path)
    assert refused.value.code == "invalid_path"


@pytest.mark.unit
def test_plain_paths_pass_and_the_allow_lists_keep_token_endpoints_out() -> None:
    assert check_relative_path("/users/me") == "/users/me"
    assert check_relative_path("/rest/posts/urn%3Ali%3Ashare%3A1") == "/rest/posts/urn%3Ali%3Ashare%3A1"

    x = TwitterAdapter.api_prefixes
    assert path_allowed("/users/me", x) and path_allowed("/tweets", x) and path_allowed("/tweets/1/likes", x)
    assert not path_allowed("/tweetsX", x) and not path_allowed("/oauth2/token", x) and not path_allowed("/", x)
    graph = MetaGraphAdapter.api_prefixes
    assert path_allowed("/me/accounts", graph) and path_allowed("/1234567/feed", graph)
    assert not path_allowed("/oauth/access_token", graph) and not path_allowed("/debug_token", graph)
    bsky = BlueskyAdapter.api_prefixes
    assert path_allowed("/xrpc/com.atproto.repo.createRecord", bsky)
    assert path_allowed("/xrpc/app.bsky.actor.getProfile", bsky)
    assert not path_allowed("/xrpc/com.atproto.server.deleteSession", bsky)
    assert not path_allowed("/xrpc/com.atproto.server.createAppPassword", bsky)


# ---- every platform through the fakes ------------------------------------------------------------


def ask(api: TestClient, account_id: str, path: str, method: str = "GET", **extra: Any) -> Any:
    return api.post(f"/v1/accounts/{account_id}/request", json={"method": method, "path": path, **extra})


def last_request(pipe: Pipeline, path: str) -> Any:
    seen = [r for r in pipe.fake.requests if r.path == path]
    assert seen, f"nothing reached {path}"
    return seen[-1]


#: platform, fake params, path, query, fake path reached, a check of the platform's body
PLATFORMS: list[tuple[str, dict[str, str], str, dict[str, Any], str, Any]] = [
    ("twitter", {}, "/users/me", {}, "/twitter/2/users/me", lambda b: b["data"]["username"] == "alice"),
    ("linkedin", {}, "/userinfo", {}, "/linkedin/v2/userinfo", lambda b: bool(b["sub"])),
    (
        "tiktok",
        {},
        "/user/info/",
        {"fields": "open_id,display_name"},
        "/tiktok/v2/user/info/",
        lambda b: bool(b["data"]["user"]["open_id"]),
    ),
    (
        "youtube",
        {},
        "/channels",
        {"part": "snippet", "mine": True},
        "/youtube/v3/channels",
        lambda b: len(b["items"]) >= 1,
    ),
    ("pinterest", {}, "/user_account", {}, "/pinterest/v5/user_account", lambda b: bool(b["username"])),
    ("threads", {}, "/v1.0/me", {"fields": "id,username"}, "/threads/v1.0/me", lambda b: bool(b["username"])),
]


def test_every_platform_answers_with_the_accounts_own_credentials(life: Pipeline, api: TestClient) -> None:
    for platform, params, path, query, reached, check in PLATFORMS:
        [account_id, *_] = connect(life, platform, **params)
        token = load(life, account_id).tokens.access_token
        life.fake.reset_log()
        answer = ask(api, account_id, path, query=query)
        assert answer.status_code == 200, (platform, answer.text)
        assert answer.headers["cache-control"] == "no-store"
        envelope = answer.json()
        assert envelope["status"] == 200 and check(envelope["body"]), (platform, envelope)
        assert envelope["headers"]["content-type"].startswith("application/json")
        seen = last_request(life, reached)
        assert seen.headers["authorization"] == f"Bearer {token}", platform
        assert len(life.fake.requests) == 1, platform  # no refresh, no second call

    # Graph: a Page token, in the header, with appsecret_proof; the Page's own node
    pages = connect(life, "facebook")
    page = raw_row(life, pages[0])
    life.fake.reset_log()
    answer = ask(api, pages[0], f"/{page.platform_account_id}", query={"fields": "followers_count"})
    assert answer.status_code == 200 and answer.json()["status"] == 200, answer.text
    body = answer.json()["body"]
    assert body["id"] == page.platform_account_id and isinstance(body["followers_count"], int)
    seen = last_request(life, f"/meta/graph/{life.settings.meta_graph_version}/{page.platform_account_id}")
    assert seen.headers["authorization"] == f"Bearer {load(life, pages[0]).tokens.access_token}"
    assert seen.query["appsecret_proof"] and "access_token" not in seen.query

    [ig] = connect(life, "instagram")[:1]
    ig_row = raw_row(life, ig)
    answer = ask(api, ig, f"/{ig_row.platform_account_id}", query={"fields": "media_count"})
    assert answer.json()["body"]["media_count"] == ig_row.posts_count

    # LinkedIn's versioned /rest API beside /v2, with the headers it requires
    [member] = connect(life, "linkedin")
    answer = ask(api, member, "/rest/memberFollowersCount", query={"q": "me"})
    assert answer.json()["status"] == 403 and answer.json()["body"]["code"] == "ACCESS_DENIED", answer.text
    seen = last_request(life, "/linkedin/rest/memberFollowersCount")
    assert seen.headers["linkedin-version"] == life.settings.linkedin_api_version
    assert seen.headers["x-restli-protocol-version"] == "2.0.0"

    # Mastodon: the account's own instance
    toot = connect_mastodon(life)
    life.fake.reset_log()
    answer = ask(api, toot, "/api/v1/accounts/verify_credentials")
    assert answer.status_code == 200 and answer.json()["body"]["username"], answer.text
    seen = last_request(life, "/api/v1/accounts/verify_credentials")
    assert seen.headers["authorization"] == f"Bearer {load(life, toot).tokens.access_token}"

    # the platform's refusal comes back as it came (here a missing parameter), nothing retried
    [tiktok] = connect(life, "tiktok")
    life.fake.reset_log()
    answer = ask(api, tiktok, "/user/info/")
    assert answer.status_code == 200
    assert answer.json()["status"] == 400 and answer.json()["body"]["error"]["code"] == "invalid_params"
    assert len(life.fake.requests) == 1


def test_the_python_api_and_what_is_logged(life: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    [account_id] = connect(life, "twitter")
    token = load(life, account_id).tokens.access_token
    caplog.set_level(logging.DEBUG)
    answer = platform_request(account_id, "get", "/users/me", params={"user.fields": "public_metrics"})
    assert isinstance(answer, PlatformAnswer) and answer.status == 200
    assert answer.body["data"]["public_metrics"]["followers_count"] == 1200
    assert last_request(life, "/twitter/2/users/me").query == {"user.fields": "public_metrics"}
    [line] = [r for r in caplog.records if r.getMessage() == "platform request"]
    assert (line.method, line.path, line.status) == ("GET", "/users/me", 200)  # type: ignore[attr-defined]
    # every line of ours; httpx's own request lines are held at WARNING by the service's log setup
    ours = [r for r in caplog.records if r.name.split(".")[0] not in ("httpx", "httpcore")]
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in ours)
    assert token not in logged and "public_metrics" not in logged and "followers_count" not in logged


# ---- expired tokens ---------------------------------------------------------------------------------


def test_an_expired_token_is_refreshed_once_then_the_request_retried(life: Pipeline, api: TestClient) -> None:
    [account_id] = connect(life, "twitter")
    token = load(life, account_id).tokens.access_token
    life.fake.grants.expire_access(token)  # X says expired although our clock says fresh
    life.fake.reset_log()

    answer = ask(api, account_id, "/users/me")

    assert answer.status_code == 200 and answer.json()["status"] == 200, answer.text
    assert calls(life.fake, "/twitter/2/users/me") == 2
    assert refresh_calls(life, "twitter") == 1
    fresh = load(life, account_id).tokens.access_token
    assert fresh != token and last_request(life, "/twitter/2/users/me").headers["authorization"] == f"Bearer {fresh}"
    assert [e.reason for e in events(life, account_id, "refreshed")] == ["platform request got 401"]

    # refused again right after a refresh that worked: the answer goes back, no loop, no verdict
    life.fake.reset_log()
    unauthorized = FakeResponse(401, {"title": "Unauthorized", "status": 401, "detail": "Unauthorized"})
    life.fake.fail("/twitter/2/users/me", unauthorized, times=2)
    answer = ask(api, account_id, "/users/me")
    assert answer.status_code == 200 and answer.json()["status"] == 401
    assert calls(life.fake, "/twitter/2/users/me") == 2 and refresh_calls(life, "twitter") == 1
    assert load(life, account_id).status == "active"

    # expired, and the refresh fails for our own reasons (X refuses our client): no verdict on
    # the user's grant, the platform's answer goes back
    life.fake.grants.expire_access(load(life, account_id).tokens.access_token)
    life.fake.reset_log()
    bad_client = FakeResponse(
        401, {"error": "unauthorized_client", "error_description": "Missing valid authorization header"}
    )
    life.fake.fail("/twitter/2/oauth2/token", bad_client)
    answer = ask(api, account_id, "/users/me")
    assert answer.status_code == 200 and answer.json()["status"] == 401
    assert calls(life.fake, "/twitter/2/users/me") == 1 and refresh_calls(life, "twitter") == 1
    assert load(life, account_id).status != "expired"


def test_meta_190_on_a_token_that_cannot_be_renewed_needs_the_user(life: Pipeline, api: TestClient) -> None:
    pages = connect(life, "facebook")
    page_id = raw_row(life, pages[0]).platform_account_id
    life.fake.grants.expire_access(load(life, pages[0]).tokens.access_token)
    life.fake.reset_log()

    answer = ask(api, pages[0], f"/{page_id}")

    assert answer.status_code == 409 and answer.json()["error"] == "needs_reconnect", answer.text
    assert calls(life.fake, f"/meta/graph/{life.settings.meta_graph_version}/{page_id}") == 1  # no retry
    assert load(life, pages[0]).status == "expired"
    assert events(life, pages[0], "request_failed")
    life.fake.reset_log()
    assert ask(api, pages[0], f"/{page_id}").status_code == 409  # known now: no request at all
    assert life.fake.requests == []


# ---- refusals: nothing is sent ---------------------------------------------------------------------


def test_refused_requests_reach_no_platform(life: Pipeline, api: TestClient) -> None:
    [account_id] = connect(life, "twitter")
    life.fake.reset_log()
    for path in ("https://evil.example/x", f"{life.fake.base_url}/twitter/2/users/me", "//evil.example/x"):
        answer = ask(api, account_id, path)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_path", (path, answer.text)
    for path in ("/%2e%2e/oauth2/token", "/users/../oauth2/token", "/users\\me"):
        assert ask(api, account_id, path).json()["error"] == "invalid_path", path
    for path in ("/oauth2/token", "/oauth2/revoke", "/"):
        answer = ask(api, account_id, path, method="POST")
        assert answer.status_code == 400 and answer.json()["error"] == "path_not_allowed", (path, answer.text)
    answer = ask(api, account_id, "/users/me", query={"access_token": "mine"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_query"
    assert ask(api, account_id, "/users/me", method="TRACE").status_code == 422
    assert api.post(f"/v1/accounts/{account_id}/request", json={"method": "GET"}).status_code == 422
    assert (
        api.post(f"/v1/accounts/{account_id}/request", json={"path": "/users/me", "method": "GET", "x": 1}).status_code
        == 422
    )
    assert life.fake.requests == []

    assert ask(api, "00000000-0000-0000-0000-000000000000", "/users/me").status_code == 404
    assert ask(api, "not-an-id", "/users/me").status_code == 404
    with Session(life.engine) as session, session.begin():
        row = session.get(SocialAccount, account_id)
        assert row is not None
        row.status = "expired"
    answer = ask(api, account_id, "/users/me")
    assert answer.status_code == 409 and answer.json()["error"] == "needs_reconnect"
    assert life.fake.requests == []


def test_cooldowns_answer_429_without_a_request_and_answers_feed_them(life: Pipeline, api: TestClient) -> None:
    from tests.fakeplatform.facebook import app_usage_header
    from tests.fakeplatform.twitter import rate_limited

    [account_id] = connect(life, "twitter")
    rt = runtime.current()

    # the platform's 429 goes back as it came, and the account cools down until X's reset
    life.fake.reset_log()
    life.fake.fail("/twitter/2/users/me", rate_limited(reset_in=300))
    answer = ask(api, account_id, "/users/me")
    assert answer.status_code == 200 and answer.json()["status"] == 429
    assert answer.json()["headers"]["x-rate-limit-remaining"] == "0"
    assert 250 < for_runtime(rt).cooldown_remaining("twitter", account_id) <= 300

    life.fake.reset_log()
    refused = {"platform": "twitter", "outcome": "cooling_down"}
    before = REGISTRY.get_sample_value("social_accounts_platform_requests_total", refused) or 0.0
    answer = ask(api, account_id, "/users/me")
    assert answer.status_code == 429 and answer.json()["error"] == "cooling_down"
    assert REGISTRY.get_sample_value("social_accounts_platform_requests_total", refused) == before + 1
    assert 250 < int(answer.headers["retry-after"]) <= 300
    assert life.fake.requests == []  # no request was made

    # an app-wide cooldown set by anyone else holds too
    [other] = connect(life, "twitter", fake_user="bob")
    for_runtime(rt).set_cooldown("twitter", 120, account_id=None, reason="test")
    life.fake.reset_log()
    answer = ask(api, other, "/users/me")
    assert answer.status_code == 429 and 100 < int(answer.headers["retry-after"]) <= 120
    assert life.fake.requests == []

    # a success that says "near the limit" (Meta's app usage) cools every account of the app down
    pages = connect(life, "facebook")
    page_id = raw_row(life, pages[0]).platform_account_id
    life.fake.add_headers("/meta/graph", app_usage_header(97))
    assert ask(api, pages[0], f"/{page_id}").json()["status"] == 200
    life.fake.clear_faults()
    life.fake.reset_log()
    answer = ask(api, pages[1], f"/{raw_row(life, pages[1]).platform_account_id}")
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0
    assert life.fake.requests == []


# ---- Bluesky against the reference PDS -------------------------------------------------------------


@pytest.fixture
def bsky(pipeline_factory: Any, pds: Any, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    from workers import lifecycle_actors

    monkeypatch.setattr(lifecycle_actors, "LIFECYCLE_POLICY", FAST_LIFECYCLE)
    return pipeline_factory(**LIFECYCLE_SETTINGS, **bluesky_settings(pds))


def test_bluesky_app_password_session_against_the_reference_pds(bsky: Pipeline, pds: Any) -> None:
    account_id, person = connect_bluesky(bsky, pds)
    did = load(bsky, account_id).tokens.metadata["did"]
    record = {"$type": "app.bsky.feed.post", "text": "hello from a module", "createdAt": "2026-01-01T00:00:00Z"}
    post = {"repo": did, "collection": "app.bsky.feed.post", "record": record}
    with api_client(bsky) as api:
        answer = ask(api, account_id, "/xrpc/com.atproto.repo.createRecord", method="POST", body=post)
        assert answer.status_code == 200 and answer.json()["status"] == 200, answer.text
        uri = answer.json()["body"]["uri"]
        assert uri.startswith(f"at://{did}/app.bsky.feed.post/")

        # an access token the PDS calls expired (400 ExpiredToken): one refresh, one retry
        expired = pds.mint_access_token(did, expires_in=-60)
        with Session(bsky.engine) as session, session.begin():
            stored = session.get(SocialAccount, account_id)
            assert stored is not None
            stored.access_token = bsky.ring.encrypt(
                expired, table="social_accounts", column="access_token", row_id=account_id
            )
        rkey = uri.rsplit("/", 1)[1]
        where = {"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey}
        answer = ask(api, account_id, "/xrpc/com.atproto.repo.deleteRecord", method="POST", body=where)
        assert answer.status_code == 200 and answer.json()["status"] == 200, answer.text
        assert load(bsky, account_id).tokens.access_token != expired
        assert [e.reason for e in events(bsky, account_id, "refreshed")] == ["platform request got 401"]
        answer = ask(api, account_id, "/xrpc/com.atproto.repo.getRecord", query=where)
        assert answer.json()["status"] == 400 and answer.json()["body"]["error"] == "RecordNotFound", answer.text

        # the session's own endpoints are ours
        answer = ask(api, account_id, "/xrpc/com.atproto.server.deleteSession", method="POST")
        assert answer.status_code == 400 and answer.json()["error"] == "path_not_allowed"
    assert person.handle


def test_an_answer_too_large_is_not_handed_back(
    life: Pipeline, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import proxy

    [account_id] = connect(life, "twitter")
    monkeypatch.setattr(proxy, "MAX_ANSWER_BYTES", 64)
    answer = ask(api, account_id, "/users/me")
    assert answer.status_code == 502 and answer.json()["error"] == "platform_error"
    assert "larger than 64 bytes" in answer.json()["message"]
    monkeypatch.setattr(proxy, "MAX_ANSWER_BYTES", 10_000)
    assert ask(api, account_id, "/users/me").json()["status"] == 200


@pytest.mark.unit
def test_a_bluesky_session_neither_app_password_nor_oauth_is_not_sent_with_bearer(settings_factory: Any) -> None:
    import httpx

    from social_accounts.errors import Permanent
    from social_accounts.values import TokenSet

    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500))) as http:
        adapter = BlueskyAdapter(settings_factory(), http)
        request = http.build_request("GET", "https://pds.example/xrpc/app.bsky.actor.getProfile")
        app_password = TokenSet("jwt", "rt", scopes=("com.atproto.appPass",))
        assert adapter.authorize_request(request, app_password).headers["authorization"] == "Bearer jwt"
        oauth = TokenSet("at", "rt", scopes=("atproto", "transition:generic"))
        with pytest.raises(Permanent, match="neither"):
            adapter.authorize_request(http.build_request("GET", "https://pds.example/xrpc/x"), oauth)
