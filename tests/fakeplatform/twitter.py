"""Fake X (Twitter) OAuth 2.0 + API v2, under ``/twitter/`` (platforms.md §3).

Behaves as X is documented to: PKCE S256 required, HTTP Basic client authentication required at
the token and revoke endpoints (body-only credentials get ``unauthorized_client``), refresh
tokens only with ``offline.access``, and they rotate: replaying a spent one revokes the grant.
Failures have X's shapes: 401 problem-details on the API, ``invalid_request`` at the token
endpoint, 429 with ``x-rate-limit-*`` headers (see :func:`rate_limited`).
"""

from __future__ import annotations

import time
from typing import Any

from tests.fakeplatform.core import (
    FakePlatformServer,
    FakeRequest,
    FakeResponse,
    OAuthClient,
    authorize_redirect,
    bearer_grant,
    oauth_error,
    revoke_endpoint,
    token_endpoint,
)

CLIENT_ID = "twitter-test-client"
CLIENT_SECRET = "twitter-test-secret"
CLIENT = OAuthClient(CLIENT_ID, CLIENT_SECRET, "basic")
#: seconds an access token lives (X: 2 hours)
ACCESS_LIFETIME = 7200
SCOPES = frozenset({"tweet.read", "tweet.write", "users.read", "offline.access", "follows.read"})

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "id": "2244994945",
        "name": "Alice Example",
        "username": "alice",
        "profile_image_url": "https://pbs.twimg.com/profile_images/1/alice_normal.jpg",
        "public_metrics": {
            "followers_count": 1200,
            "following_count": 180,
            "tweet_count": 5321,
            "listed_count": 3,
            "like_count": 99,
        },
    },
    "bob": {
        "id": "783214",
        "name": "Bob",
        "username": "bob",
        "profile_image_url": "https://pbs.twimg.com/profile_images/2/bob_normal.jpg",
        "public_metrics": {"followers_count": 0, "following_count": 7, "tweet_count": 1},
    },
}

UNAUTHORIZED = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}


def rate_limited(reset_in: int = 300, with_headers: bool = True) -> FakeResponse:
    """X's 429: code 88 and ``x-rate-limit-reset`` in Unix epoch seconds (absent on tier mismatch)."""
    headers = {}
    if with_headers:
        headers = {
            "x-rate-limit-limit": "75",
            "x-rate-limit-remaining": "0",
            "x-rate-limit-reset": str(int(time.time()) + reset_in),
        }
    return FakeResponse(429, {"errors": [{"code": 88, "message": "Rate limit exceeded"}]}, headers)


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    @server.route("GET", "/twitter/i/oauth2/authorize")
    def authorize(request: FakeRequest) -> FakeResponse:
        return authorize_redirect(
            request, grants, client_id=CLIENT_ID, known_scopes=SCOPES, require_pkce=True, users=frozenset(USERS)
        )

    def bad_client() -> FakeResponse:
        return oauth_error("unauthorized_client", "Missing valid authorization header", 401)

    def issue(grant: Any) -> FakeResponse:
        body: dict[str, Any] = {
            "token_type": "bearer",
            "expires_in": ACCESS_LIFETIME,
            "access_token": grants.new_access(grant, ACCESS_LIFETIME, prefix="tw_at_"),
            "scope": " ".join(grant.scopes),
        }
        if "offline.access" in grant.scopes:
            body["refresh_token"] = grants.new_refresh(grant, prefix="tw_rt_")
        return FakeResponse(200, body)

    @server.route("POST", "/twitter/2/oauth2/token")
    def token(request: FakeRequest) -> FakeResponse:
        return token_endpoint(
            request,
            grants,
            CLIENT,
            rotate=True,
            issue=issue,
            bad_client=bad_client(),
            bad_code=lambda _: oauth_error("invalid_request", "Value passed for the authorization code was invalid."),
            bad_refresh=oauth_error("invalid_request", "Value passed for the token was invalid."),
            bad_grant_type=oauth_error("unsupported_grant_type", "grant_type not supported"),
        )

    @server.route("POST", "/twitter/2/oauth2/revoke")
    def revoke(request: FakeRequest) -> FakeResponse:
        return revoke_endpoint(
            request, grants, CLIENT, bad_client=bad_client(), revoked=FakeResponse(200, {"revoked": True})
        )

    @server.route("GET", "/twitter/2/users/me")
    def me(request: FakeRequest) -> FakeResponse:
        grant, _ = bearer_grant(request, grants, CLIENT_ID)
        if grant is None:
            return FakeResponse(401, UNAUTHORIZED)
        if "users.read" not in grant.scopes:
            return FakeResponse(403, {"title": "Forbidden", "status": 403, "detail": "Missing scope users.read"})
        user = dict(USERS[grant.user])
        if "public_metrics" not in request.query.get("user.fields", ""):
            user.pop("public_metrics", None)
        if "profile_image_url" not in request.query.get("user.fields", ""):
            user.pop("profile_image_url", None)
        headers = {
            "x-rate-limit-limit": "75",
            "x-rate-limit-remaining": "74",
            "x-rate-limit-reset": str(int(time.time()) + 900),
        }
        return FakeResponse(200, {"data": user}, headers)


def settings_env(base_url: str) -> dict[str, str]:
    return {
        "TWITTER_CLIENT_ID": CLIENT_ID,
        "TWITTER_CLIENT_SECRET": CLIENT_SECRET,
        "TWITTER_AUTHORIZE_URL": f"{base_url}/twitter/i/oauth2/authorize",
        "TWITTER_TOKEN_URL": f"{base_url}/twitter/2/oauth2/token",
        "TWITTER_API_URL": f"{base_url}/twitter/2",
        "TWITTER_REVOKE_URL": f"{base_url}/twitter/2/oauth2/revoke",
    }
