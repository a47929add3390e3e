"""Fake TikTok Login Kit v2 and user info API, under ``/tiktok/`` (docs/platforms.md, "TikTok").

* ``client_key`` (not ``client_id``) in the authorization URL and in token/revoke bodies, with
  ``client_secret``; comma-separated scopes; no PKCE demanded of web apps.
* Token answers carry ``open_id``, ``expires_in``, ``refresh_expires_in`` taken from
  :data:`ACCESS_LIFETIME` / :data:`REFRESH_LIFETIME` (tests change them to prove nothing is
  hard-coded); refresh tokens rotate and replaying a spent one revokes the grant.
* ``/v2/user/info/`` answers ``{"data": {"user": ...}, "error": {"code": "ok", ...}}`` and only
  the fields the granted scopes allow (``scope_not_authorized`` otherwise); a bad token gets
  401 ``access_token_invalid``; see :func:`rate_limited` for 429 ``rate_limit_exceeded``.
"""

from __future__ import annotations

import secrets
from typing import Any

from tests.fakeplatform.core import (
    FakePlatformServer,
    FakeRequest,
    FakeResponse,
    OAuthClient,
    authorize_redirect,
    bearer_grant,
    oauth_error,
    token_endpoint,
)

CLIENT_KEY = "tiktok-test-key"
CLIENT_SECRET = "tiktok-test-secret"
CLIENT = OAuthClient(CLIENT_KEY, CLIENT_SECRET, "body", id_param="client_key")
ACCESS_LIFETIME = 7200
REFRESH_LIFETIME = 180 * 24 * 3600
SCOPES = frozenset(
    {"user.info.basic", "user.info.profile", "user.info.stats", "video.list", "video.upload", "video.publish"}
)
FIELD_SCOPE = {
    "open_id": "user.info.basic",
    "union_id": "user.info.basic",
    "avatar_url": "user.info.basic",
    "display_name": "user.info.basic",
    "username": "user.info.profile",
    "bio_description": "user.info.profile",
    "follower_count": "user.info.stats",
    "following_count": "user.info.stats",
    "likes_count": "user.info.stats",
    "video_count": "user.info.stats",
}

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "open_id": "-000aliceOpenId",
        "union_id": "c9b1-alice-union",
        "display_name": "Alice on TikTok",
        "username": "alice.tt",
        "avatar_url": "https://p16-sign.tiktokcdn.com/alice.jpeg",
        "bio_description": "hi",
        "follower_count": 34000,
        "following_count": 120,
        "likes_count": 880000,
        "video_count": 210,
    },
}


def api_error(status: int, code: str, message: str) -> FakeResponse:
    return FakeResponse(status, {"data": {}, "error": {"code": code, "message": message, "log_id": _log_id()}})


def rate_limited() -> FakeResponse:
    """TikTok's 429 (no documented reset header)."""
    return api_error(429, "rate_limit_exceeded", "API rate limit was exceeded, please try again later.")


def _log_id() -> str:
    return "2026" + secrets.token_hex(8).upper()


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    @server.route("GET", "/tiktok/v2/auth/authorize/")
    def authorize(request: FakeRequest) -> FakeResponse:
        return authorize_redirect(
            request,
            grants,
            client_id=CLIENT_KEY,
            client_id_param="client_key",
            scope_separator=",",
            known_scopes=SCOPES,
            users=frozenset(USERS),
        )

    def refused(error: str, description: str, status: int = 400) -> FakeResponse:
        return oauth_error(error, description, status, log_id=_log_id())

    def issue(grant: Any) -> FakeResponse:
        return FakeResponse(
            200,
            {
                "open_id": USERS[grant.user]["open_id"],
                "scope": ",".join(grant.scopes),
                "access_token": grants.new_access(grant, ACCESS_LIFETIME, prefix="act."),
                "expires_in": ACCESS_LIFETIME,
                "refresh_token": grants.new_refresh(grant, prefix="rft."),
                "refresh_expires_in": REFRESH_LIFETIME,
                "token_type": "Bearer",
            },
        )

    @server.route("POST", "/tiktok/v2/oauth/token/")
    def token(request: FakeRequest) -> FakeResponse:
        return token_endpoint(
            request,
            grants,
            CLIENT,
            rotate=True,
            issue=issue,
            bad_client=refused("invalid_client", "Client key or secret is incorrect.", 401),
            bad_code=lambda _: refused("invalid_grant", "Authorization code is expired."),
            bad_refresh=refused("invalid_grant", "Refresh token is invalid or expired."),
            bad_grant_type=refused("unsupported_grant_type", "grant_type not supported"),
        )

    @server.route("POST", "/tiktok/v2/oauth/revoke/")
    def revoke(request: FakeRequest) -> FakeResponse:
        if not CLIENT.authenticates(request):
            return refused("invalid_client", "Client key or secret is incorrect.", 401)
        grant, _ = grants.check_access(request.form.get("token"))
        if grant is None:
            return api_error(401, "access_token_invalid", "The access token is invalid or not found in the request.")
        grants.revoke_token(request.form["token"])
        return FakeResponse(200, {})

    @server.route("GET", "/tiktok/v2/user/info/")
    def user_info(request: FakeRequest) -> FakeResponse:
        grant, _ = bearer_grant(request, grants, CLIENT_KEY)
        if grant is None:
            return api_error(401, "access_token_invalid", "The access token is invalid or not found in the request.")
        fields = [f for f in request.query.get("fields", "").split(",") if f]
        if not fields or any(f not in FIELD_SCOPE for f in fields):
            return api_error(400, "invalid_params", "fields is invalid")
        if any(FIELD_SCOPE[f] not in grant.scopes for f in fields):
            return api_error(401, "scope_not_authorized", "The user did not authorize the scope required.")
        user = USERS[grant.user]
        return FakeResponse(
            200, {"data": {"user": {f: user[f] for f in fields}}, "error": {"code": "ok", "message": "", "log_id": ""}}
        )


def settings_env(base_url: str) -> dict[str, str]:
    return {
        "TIKTOK_CLIENT_KEY": CLIENT_KEY,
        "TIKTOK_CLIENT_SECRET": CLIENT_SECRET,
        "TIKTOK_AUTHORIZE_URL": f"{base_url}/tiktok/v2/auth/authorize/",
        "TIKTOK_TOKEN_URL": f"{base_url}/tiktok/v2/oauth/token/",
        "TIKTOK_API_URL": f"{base_url}/tiktok/v2",
        "TIKTOK_REVOKE_URL": f"{base_url}/tiktok/v2/oauth/revoke/",
    }
