"""Fake Pinterest OAuth and API v5, under ``/pinterest/`` (docs/platforms.md, "Pinterest").

* HTTP Basic ``app_id:app_secret`` is required at the token endpoint; credentials in the body
  alone get 401. Comma-separated scopes; no PKCE.
* Continuous refresh: every refresh answer carries a new refresh token with its own
  ``refresh_token_expires_in``; the spent one stops working and replaying it revokes the grant.
* Errors use Pinterest's ``{"code", "message"}`` model (the numeric codes here are illustrative):
  401 for a bad token, 400 for a refused code, 429 from :func:`rate_limited`. At the token
  endpoint a 401 comes in two bodies: :data:`BAD_CLIENT` (wrong Basic credentials) and
  :data:`BAD_REFRESH` (a refresh token that is expired, revoked, spent or unknown).
* Pinterest documents no revocation endpoint. ``/pinterest/test-only/revoke`` stands in for one an
  operator would set with PINTEREST_REVOKE_URL (RFC 7009, Basic); ``settings_env`` leaves it unset.
"""

from __future__ import annotations

from typing import Any

from tests.fakeplatform.core import (
    FakePlatformServer,
    FakeRequest,
    FakeResponse,
    OAuthClient,
    authorize_redirect,
    bearer_grant,
    revoke_endpoint,
    token_endpoint,
)

APP_ID = "1480000"
APP_SECRET = "pinterest-test-secret"
CLIENT = OAuthClient(APP_ID, APP_SECRET, "basic")
ACCESS_LIFETIME = 30 * 24 * 3600
REFRESH_LIFETIME = 60 * 24 * 3600
SCOPES = frozenset({"user_accounts:read", "boards:read", "boards:write", "pins:read", "pins:write"})

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "id": "549755885175",
        "username": "alicepins",
        "account_type": "BUSINESS",
        "business_name": "Alice's Studio",
        "profile_image": "https://i.pinimg.com/600x600_R/alice.jpg",
        "website_url": "https://alice.example",
        "follower_count": 812,
        "following_count": 64,
        "pin_count": 1530,
        "board_count": 12,
        "monthly_views": 40000,
    },
    "personal": {
        "id": "549755800001",
        "username": "pat_p",
        "account_type": "PINNER",
        "profile_image": "https://i.pinimg.com/600x600_R/pat.jpg",
        "follower_count": 3,
        "following_count": 40,
        "pin_count": 77,
    },
}


def error(status: int, code: int, message: str) -> FakeResponse:
    return FakeResponse(status, {"code": code, "message": message})


#: the token endpoint's answer to wrong app credentials
BAD_CLIENT = (401, 2, "Authentication failed.")
#: the token endpoint's answer to a refresh token it no longer honours
BAD_REFRESH = (401, 2, "Authentication failed: the refresh token is invalid, expired or revoked.")


def rate_limited(retry_after: int | None = None) -> FakeResponse:
    response = error(429, 8, "You have exceeded your rate limit. Try again later.")
    if retry_after is not None:
        response.headers["retry-after"] = str(retry_after)
    return response


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    @server.route("GET", "/pinterest/oauth/")
    def authorize(request: FakeRequest) -> FakeResponse:
        return authorize_redirect(
            request, grants, client_id=APP_ID, scope_separator=",", known_scopes=SCOPES, users=frozenset(USERS)
        )

    def issue(grant: Any) -> FakeResponse:
        return FakeResponse(
            200,
            {
                "access_token": grants.new_access(grant, ACCESS_LIFETIME, prefix="pina_"),
                "refresh_token": grants.new_refresh(grant, prefix="pinr_"),
                "response_type": "authorization_code",
                "token_type": "bearer",
                "expires_in": ACCESS_LIFETIME,
                "refresh_token_expires_in": REFRESH_LIFETIME,
                "scope": ",".join(grant.scopes),
            },
        )

    @server.route("POST", "/pinterest/v5/oauth/token")
    def token(request: FakeRequest) -> FakeResponse:
        return token_endpoint(
            request,
            grants,
            CLIENT,
            pkce=False,
            rotate=True,
            issue=issue,
            bad_client=error(*BAD_CLIENT),
            bad_code=lambda _: error(400, 1, "Invalid authorization code."),
            bad_refresh=error(*BAD_REFRESH),
            bad_grant_type=error(400, 1, "Invalid grant_type."),
        )

    @server.route("POST", "/pinterest/test-only/revoke")
    def revoke(request: FakeRequest) -> FakeResponse:
        return revoke_endpoint(request, grants, CLIENT, bad_client=error(*BAD_CLIENT), revoked=FakeResponse(200, {}))

    @server.route("GET", "/pinterest/v5/user_account")
    def user_account(request: FakeRequest) -> FakeResponse:
        grant, _ = bearer_grant(request, grants, APP_ID)
        if grant is None:
            return error(401, 2, "Authentication failed.")
        if "user_accounts:read" not in grant.scopes:
            return error(403, 3, "Not authorized to access the user associated with this token.")
        return FakeResponse(200, USERS[grant.user])


def settings_env(base_url: str) -> dict[str, str]:
    return {
        "PINTEREST_APP_ID": APP_ID,
        "PINTEREST_APP_SECRET": APP_SECRET,
        "PINTEREST_AUTHORIZE_URL": f"{base_url}/pinterest/oauth/",
        "PINTEREST_TOKEN_URL": f"{base_url}/pinterest/v5/oauth/token",
        "PINTEREST_API_URL": f"{base_url}/pinterest/v5",
    }
