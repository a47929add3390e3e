"""Fake LinkedIn OAuth 2.0, OIDC userinfo and member follower count, under ``/linkedin/`` (docs/platforms.md).

* Client credentials in the form body (no Basic, no PKCE); 60-day access tokens.
* Refresh tokens only for partner apps: here, only for the fake user ``partner``. They do not
  rotate and their lifetime is fixed from the first authorization (``refresh_token_expires_in``
  shrinks on each refresh).
* ``/rest/memberFollowersCount?q=me`` insists on the ``LinkedIn-Version`` and
  ``X-Restli-Protocol-Version: 2.0.0`` headers, and answers 403 unless the grant holds
  ``r_member_profileAnalytics`` and the member's app has the analytics product (only
  ``partner``).
* 401 bodies: ``serviceErrorCode`` 65601 ``REVOKED_ACCESS_TOKEN`` for a revoked grant, 65600 for
  an unknown token; an expired token gets ``EXPIRED_ACCESS_TOKEN`` (that code string is
  UNCONFIRMED upstream). 429 (see :func:`rate_limited`) carries no headers at all.
* ``/oauth/v2/revoke`` exists here but ``settings_env`` does not point LINKEDIN_REVOKE_URL at it:
  the adapter's default is "no revocation"; a test opts in with the override.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.fakeplatform.core import (
    FakePlatformServer,
    FakeRequest,
    FakeResponse,
    Grant,
    OAuthClient,
    authorize_redirect,
    bearer_grant,
    oauth_error,
    revoke_endpoint,
    token_endpoint,
)

CLIENT_ID = "linkedin-test-client"
CLIENT_SECRET = "linkedin-test-secret"
CLIENT = OAuthClient(CLIENT_ID, CLIENT_SECRET, "body")
ACCESS_LIFETIME = 60 * 24 * 3600
REFRESH_LIFETIME = 365 * 24 * 3600
SCOPES = frozenset({"openid", "profile", "email", "w_member_social", "r_basicprofile", "r_member_profileAnalytics"})

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "sub": "782bbtaQ",
        "name": "Alice Example",
        "given_name": "Alice",
        "family_name": "Example",
        "picture": "https://media.licdn.com/dms/image/alice.jpg",
        "email": "alice@example.com",
        "partner": False,
        "followers": None,
    },
    "partner": {
        "sub": "Zx9PartnerQ",
        "name": "Pat Partner",
        "picture": "https://media.licdn.com/dms/image/pat.jpg",
        "partner": True,
        "followers": 5400,
    },
}

#: refresh token -> epoch when its (fixed) lifetime ends
_refresh_ends: dict[str, float] = {}


def rate_limited() -> FakeResponse:
    """LinkedIn's 429: daily limit, no Retry-After, no rate-limit headers."""
    return FakeResponse(429, {"status": 429, "message": "Resource level throttle APPLICATION DAY limit reached"})


def unauthorized(reason: str | None) -> FakeResponse:
    if reason == "revoked":
        body = {
            "status": 401,
            "serviceErrorCode": 65601,
            "code": "REVOKED_ACCESS_TOKEN",
            "message": "The token used in the request has been revoked by the user",
        }
    elif reason == "expired":
        body = {"status": 401, "code": "EXPIRED_ACCESS_TOKEN", "message": "The token used in the request has expired"}
    else:
        body = {"serviceErrorCode": 65600, "message": "Invalid access token", "status": 401}
    return FakeResponse(401, body)


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    @server.route("GET", "/linkedin/oauth/v2/authorization")
    def authorize(request: FakeRequest) -> FakeResponse:
        return authorize_redirect(request, grants, client_id=CLIENT_ID, known_scopes=SCOPES, users=frozenset(USERS))

    def bad_client() -> FakeResponse:
        return oauth_error("invalid_client", "Client authentication failed", 401)

    def bad_refresh() -> FakeResponse:
        return oauth_error("invalid_grant", "The provided refresh token is invalid, expired or revoked")

    def issue(grant: Grant) -> FakeResponse:
        body: dict[str, Any] = {
            "access_token": grants.new_access(grant, ACCESS_LIFETIME, prefix="li_at_"),
            "expires_in": ACCESS_LIFETIME,
            "scope": ",".join(grant.scopes),
            "token_type": "Bearer",
        }
        if USERS[grant.user]["partner"]:
            refresh = grants.new_refresh(grant, prefix="li_rt_")
            _refresh_ends[refresh] = time.time() + REFRESH_LIFETIME
            body.update(refresh_token=refresh, refresh_token_expires_in=REFRESH_LIFETIME)
        return FakeResponse(200, body)

    def reissue(grant: Grant, refresh: str) -> FakeResponse:
        if _refresh_ends.get(refresh, 0) < time.time():  # the lifetime fixed at the first consent
            return bad_refresh()
        return FakeResponse(
            200,
            {
                "access_token": grants.new_access(grant, ACCESS_LIFETIME, prefix="li_at_"),
                "expires_in": ACCESS_LIFETIME,
                "refresh_token": refresh,
                "refresh_token_expires_in": int(_refresh_ends[refresh] - time.time()),
                "scope": ",".join(grant.scopes),
            },
        )

    @server.route("POST", "/linkedin/oauth/v2/accessToken")
    def token(request: FakeRequest) -> FakeResponse:
        return token_endpoint(
            request,
            grants,
            CLIENT,
            pkce=False,
            rotate=False,
            issue=issue,
            reissue=reissue,
            bad_client=bad_client(),
            bad_code=lambda error: oauth_error(error or "invalid_grant", "authorization code is invalid or expired"),
            bad_refresh=bad_refresh(),
            bad_grant_type=oauth_error("unsupported_grant_type", "grant_type not supported"),
        )

    @server.route("POST", "/linkedin/oauth/v2/revoke")
    def revoke(request: FakeRequest) -> FakeResponse:
        return revoke_endpoint(request, grants, CLIENT, bad_client=bad_client(), revoked=FakeResponse(200, ""))

    def member(request: FakeRequest) -> tuple[dict[str, Any] | None, FakeResponse | None]:
        grant, reason = bearer_grant(request, grants, CLIENT_ID)
        if grant is None:
            return None, unauthorized(reason)
        return {**USERS[grant.user], "scopes": tuple(grant.scopes)}, None

    @server.route("GET", "/linkedin/v2/userinfo")
    def userinfo(request: FakeRequest) -> FakeResponse:
        user, failure = member(request)
        if user is None:
            assert failure is not None
            return failure
        return FakeResponse(200, {k: v for k, v in user.items() if k not in {"partner", "followers", "scopes"}})

    @server.route("GET", "/linkedin/rest/memberFollowersCount")
    def followers(request: FakeRequest) -> FakeResponse:
        if not re.fullmatch(r"\d{6}", request.headers.get("linkedin-version", "")):
            return FakeResponse(400, {"status": 400, "code": "VERSION_MISSING", "message": "LinkedIn-Version missing"})
        if request.headers.get("x-restli-protocol-version") != "2.0.0" or request.query.get("q") != "me":
            return FakeResponse(400, {"status": 400, "message": "bad request"})
        user, failure = member(request)
        if user is None:
            assert failure is not None
            return failure
        if user["followers"] is None or "r_member_profileAnalytics" not in user["scopes"]:
            return FakeResponse(
                403,
                {
                    "status": 403,
                    "serviceErrorCode": 100,
                    "code": "ACCESS_DENIED",
                    "message": "Not enough permissions to access: memberFollowersCount.FINDER-me",
                },
            )
        return FakeResponse(200, {"elements": [{"memberFollowersCount": user["followers"]}], "paging": {}})


def settings_env(base_url: str) -> dict[str, str]:
    return {
        "LINKEDIN_CLIENT_ID": CLIENT_ID,
        "LINKEDIN_CLIENT_SECRET": CLIENT_SECRET,
        "LINKEDIN_AUTHORIZE_URL": f"{base_url}/linkedin/oauth/v2/authorization",
        "LINKEDIN_TOKEN_URL": f"{base_url}/linkedin/oauth/v2/accessToken",
        "LINKEDIN_API_URL": f"{base_url}/linkedin/v2",
    }
