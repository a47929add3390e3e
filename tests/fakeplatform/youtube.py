"""Fake Google OAuth 2.0 and YouTube Data API v3, under ``/youtube/`` (docs/platforms.md, "YouTube").

* The authorization endpoint insists on ``access_type=offline`` and ``prompt=consent`` (without
  them real Google may hand out no refresh token on a reconnect; the fake refuses outright so a
  regression shows). PKCE S256 is verified when a challenge was sent.
* Client id and secret in the token body. Refresh answers carry **no** ``refresh_token`` (the
  refresh token does not rotate); a revoked grant's refresh gets 400 ``invalid_grant`` "Token has
  been expired or revoked.".
* ``/youtube/v3/channels`` answers ``mine=true`` with every channel of the user (``brand`` has two,
  one with a hidden subscriber count; ``empty`` has none) and ``id=`` with that channel; counts
  are strings as in the real API. Bad tokens get Google's 401 ``UNAUTHENTICATED``/``authError``.
* :func:`quota_exceeded` and :func:`rate_limit_exceeded` build Google's 403 limit answers.
"""

from __future__ import annotations

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
    token_endpoint,
)

CLIENT_ID = "1234-test.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-youtube-test-secret"
CLIENT = OAuthClient(CLIENT_ID, CLIENT_SECRET, "body")
ACCESS_LIFETIME = 3599
READONLY = "https://www.googleapis.com/auth/youtube.readonly"
SCOPES = frozenset(
    {READONLY, "https://www.googleapis.com/auth/youtube.upload", "https://www.googleapis.com/auth/youtube"}
)


def channel(cid: str, title: str, handle: str, subs: int, videos: int, hidden: bool = False) -> dict[str, Any]:
    thumbs = {size: {"url": f"https://yt3.ggpht.com/{cid}-{size}.jpg"} for size in ("default", "medium", "high")}
    return {
        "kind": "youtube#channel",
        "etag": f"etag-{cid}",
        "id": cid,
        "snippet": {"title": title, "description": "", "customUrl": handle, "thumbnails": thumbs},
        "statistics": {
            "viewCount": str(videos * 1000),
            "subscriberCount": "0" if hidden else str(subs),
            "hiddenSubscriberCount": hidden,
            "videoCount": str(videos),
        },
    }


USERS: dict[str, list[dict[str, Any]]] = {
    "alice": [channel("UCalice0000000000000001", "Alice Makes Things", "@alicemakes", 15300, 87)],
    "brand": [
        channel("UCbrandMain000000000001", "Brand Main", "@brandmain", 1_000_000_000_000, 4200),
        channel("UCbrandHidden0000000002", "Brand Secret", "@brandsecret", 999, 12, hidden=True),
    ],
    "empty": [],
}


def google_error(status: int, reason: str, message: str, *, domain: str = "global", state: str = "") -> FakeResponse:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": domain, "reason": reason}],
    }
    if state:
        error["status"] = state
    return FakeResponse(status, {"error": error})


def quota_exceeded() -> FakeResponse:
    return google_error(
        403,
        "quotaExceeded",
        "The request cannot be completed because you have exceeded your quota.",
        domain="youtube.quota",
    )


def rate_limit_exceeded(reason: str = "rateLimitExceeded") -> FakeResponse:
    return google_error(403, reason, "Rate Limit Exceeded", domain="usageLimits")


def unauthenticated() -> FakeResponse:
    return google_error(
        401,
        "authError",
        "Request had invalid authentication credentials.",
        state="UNAUTHENTICATED",
    )


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    @server.route("GET", "/youtube/o/oauth2/v2/auth")
    def authorize(request: FakeRequest) -> FakeResponse:
        if request.query.get("access_type") != "offline" or request.query.get("prompt") != "consent":
            return FakeResponse(400, "fake Google: access_type=offline&prompt=consent expected")
        return authorize_redirect(request, grants, client_id=CLIENT_ID, known_scopes=SCOPES, users=frozenset(USERS))

    def issue(grant: Grant) -> FakeResponse:
        return FakeResponse(
            200,
            {
                "access_token": grants.new_access(grant, ACCESS_LIFETIME, prefix="ya29."),
                "expires_in": ACCESS_LIFETIME,
                "refresh_token": grants.new_refresh(grant, prefix="1//0g"),
                "scope": " ".join(grant.scopes),
                "token_type": "Bearer",
            },
        )

    def reissue(grant: Grant, refresh: str) -> FakeResponse:
        """Google does not rotate: a refresh answer carries no refresh token."""
        return FakeResponse(
            200,
            {
                "access_token": grants.new_access(grant, ACCESS_LIFETIME, prefix="ya29."),
                "expires_in": ACCESS_LIFETIME,
                "scope": " ".join(grant.scopes),
                "token_type": "Bearer",
            },
        )

    @server.route("POST", "/youtube/token")
    def token(request: FakeRequest) -> FakeResponse:
        return token_endpoint(
            request,
            grants,
            CLIENT,
            rotate=False,
            issue=issue,
            reissue=reissue,
            bad_client=oauth_error("invalid_client", "Unauthorized", 401),
            bad_code=lambda error: oauth_error(error or "invalid_grant", "Bad Request"),
            bad_refresh=oauth_error("invalid_grant", "Token has been expired or revoked."),
            bad_grant_type=oauth_error("unsupported_grant_type", "Invalid grant_type"),
        )

    @server.route("POST", "/youtube/revoke")
    def revoke(request: FakeRequest) -> FakeResponse:
        token_value = request.form.get("token", "")
        grant_id = grants.refresh_owner.get(token_value) or (grants.access.get(token_value) or ("",))[0]
        if not grant_id or grants.grants[grant_id].revoked:
            return oauth_error("invalid_token", "Token expired or revoked")
        grants.revoke_token(token_value)
        return FakeResponse(200, {})

    @server.route("GET", "/youtube/v3/channels")
    def channels(request: FakeRequest) -> FakeResponse:
        grant, _ = bearer_grant(request, grants, CLIENT_ID)
        if grant is None:
            return unauthenticated()
        parts = set(request.query.get("part", "").split(","))
        if not parts or not parts <= {"id", "snippet", "statistics", "contentDetails"}:
            return google_error(400, "invalidPart", "part is invalid")
        if request.query.get("mine") == "true":
            found = USERS[grant.user]
        elif request.query.get("id"):
            wanted = set(request.query["id"].split(","))
            found = [c for chans in USERS.values() for c in chans if c["id"] in wanted]
        else:
            return google_error(400, "missingRequiredParameter", "No filter selected.")
        items = [{k: v for k, v in c.items() if k in parts | {"kind", "etag", "id"}} for c in found]
        return FakeResponse(
            200,
            {
                "kind": "youtube#channelListResponse",
                "etag": "etag-list",
                "pageInfo": {"totalResults": len(items), "resultsPerPage": 5},
                "items": items,
            },
        )


def settings_env(base_url: str) -> dict[str, str]:
    return {
        "GOOGLE_CLIENT_ID": CLIENT_ID,
        "GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
        "YOUTUBE_AUTHORIZE_URL": f"{base_url}/youtube/o/oauth2/v2/auth",
        "YOUTUBE_TOKEN_URL": f"{base_url}/youtube/token",
        "YOUTUBE_API_URL": f"{base_url}/youtube/v3",
        "YOUTUBE_REVOKE_URL": f"{base_url}/youtube/revoke",
    }
