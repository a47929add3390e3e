"""Fake TikTok Login Kit v2 and user info API, under ``/tiktok/`` (platforms.md §5).

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

from tests.fakeplatform.core import FakePlatformServer, FakeRequest, FakeResponse, authorize_redirect

CLIENT_KEY = "tiktok-test-key"
CLIENT_SECRET = "tiktok-test-secret"
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

    def oauth_error(error: str, description: str, status: int = 400) -> FakeResponse:
        return FakeResponse(status, {"error": error, "error_description": description, "log_id": _log_id()})

    def client_ok(request: FakeRequest) -> bool:
        return request.form.get("client_key") == CLIENT_KEY and request.form.get("client_secret") == CLIENT_SECRET

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
        if not client_ok(request):
            return oauth_error("invalid_client", "Client key or secret is incorrect.", 401)
        form = request.form
        if form.get("grant_type") == "authorization_code":
            grant, _ = grants.redeem_code(
                form.get("code", ""),
                client_id=CLIENT_KEY,
                redirect_uri=form.get("redirect_uri", ""),
                code_verifier=form.get("code_verifier"),
            )
            if grant is None:
                return oauth_error("invalid_grant", "Authorization code is expired.")
            return issue(grant)
        if form.get("grant_type") == "refresh_token":
            grant, _ = grants.use_refresh(form.get("refresh_token"), rotate=True)
            if grant is None:
                return oauth_error("invalid_grant", "Refresh token is invalid or expired.")
            return issue(grant)
        return oauth_error("unsupported_grant_type", "grant_type not supported")

    @server.route("POST", "/tiktok/v2/oauth/revoke/")
    def revoke(request: FakeRequest) -> FakeResponse:
        if not client_ok(request):
            return oauth_error("invalid_client", "Client key or secret is incorrect.", 401)
        grant, _ = grants.check_access(request.form.get("token"))
        if grant is None:
            return api_error(401, "access_token_invalid", "The access token is invalid or not found in the request.")
        grants.revoke_token(request.form["token"])
        return FakeResponse(200, {})

    @server.route("GET", "/tiktok/v2/user/info/")
    def user_info(request: FakeRequest) -> FakeResponse:
        grant, _ = grants.check_access(request.bearer())
        if grant is None or grant.client_id != CLIENT_KEY:
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
