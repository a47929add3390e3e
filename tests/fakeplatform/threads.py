"""Fake Threads API (``graph.threads.com``, ``threads.com/oauth/authorize``) under ``/threads``.

Routes, shaped as docs/platforms.md (Threads) documents them:

* ``GET /threads/oauth/authorize`` - the consent screen: ``302`` to ``redirect_uri`` with
  ``code`` and ``state`` at once (``error=access_denied`` for a denying user).
* ``POST /threads/oauth/access_token`` - code → short-lived token (1 h) and ``user_id``
  (a JSON number, as Meta sends it).
* ``GET /threads/access_token?grant_type=th_exchange_token&client_secret=…&access_token=…`` -
  short → long-lived (``expires_in`` 5183944).
* ``GET /threads/refresh_access_token?grant_type=th_refresh_token&access_token=…`` - a new
  60-day token; refused unless the token is long-lived, not expired and at least 24 h old.
* ``GET /threads/v1.0/me?fields=…`` - the profile.
* ``GET /threads/v1.0/{id}/threads_insights?metric=followers_count`` - needs the
  ``threads_manage_insights`` permission, else Meta error code 10.

Errors are Meta-shaped, as the real Threads API answers. Fake-only knobs: ``fake_user=<name>``
on the authorize URL (default ``THREADS.default_user``, ``alice``); ``dave`` (or ``fake_deny=1``) denies the consent;
``erin`` declines ``threads_manage_insights`` (so her followers are unavailable);
``THREADS.age(token, seconds)`` backdates a token's issue time so a test can refresh it without
waiting 24 h; ``THREADS.followers`` sets the count. ``THREADS.reset()`` restores everything.
The message for a too-young token is the fake's own (Meta's wording is not documented).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakeplatform.core import FakePlatformServer, FakeRequest, FakeResponse, Grant, OAuthClient
from tests.fakeplatform.facebook import consent_redirect, meta_error

APP_ID = "threads-test-app-id"
APP_SECRET = "threads-test-app-secret-0123456789"
CLIENT = OAuthClient(APP_ID, APP_SECRET, "body")

SHORT_LIVED = 3600
LONG_LIVED = 5183944
MIN_REFRESH_AGE = 24 * 3600


@dataclass
class ThreadsUser:
    name: str
    id: int
    username: str
    display: str
    deny: bool = False
    declined: tuple[str, ...] = ()


@dataclass
class IssuedToken:
    user: str
    long_lived: bool
    issued_at: float = field(default_factory=time.time)


class ThreadsWorld:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, IssuedToken] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.users = {
                "alice": ThreadsUser("alice", 3141592653, "alice.threads", "Alice T"),
                "dave": ThreadsUser("dave", 2718281828, "dave.threads", "Dave", deny=True),
                "erin": ThreadsUser("erin", 1618033988, "erin.threads", "Erin", declined=("threads_manage_insights",)),
            }
            self.default_user = "alice"
            self.followers = 4321
            self.revoked: list[str] = []

    def age(self, token: str, seconds: float) -> None:
        """Pretend ``token`` was issued ``seconds`` earlier than it was."""
        with self.lock:
            self.tokens[token].issued_at -= seconds


THREADS = ThreadsWorld()


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    def issue(grant: Grant, long_lived: bool) -> str:
        token = grants.new_access(
            grant, LONG_LIVED if long_lived else SHORT_LIVED, prefix="THl" if long_lived else "THs"
        )
        with THREADS.lock:
            THREADS.tokens[token] = IssuedToken(grant.user, long_lived)
        return token

    def check(token: str | None) -> tuple[Grant, IssuedToken] | FakeResponse:
        grant, status = grants.check_access(token)
        issued = THREADS.tokens.get(token or "")
        if grant is None or issued is None:
            if status == "expired":
                return meta_error(190, "Error validating access token: Session has expired.", subcode=463)
            return meta_error(190, "Error validating access token")
        return grant, issued

    @server.route("GET", "/threads/oauth/authorize")
    def authorize(req: FakeRequest) -> FakeResponse:
        q = req.query
        if q.get("client_id") != APP_ID or not q.get("redirect_uri"):
            return FakeResponse(400, "Invalid client_id or redirect_uri")
        user = THREADS.users.get(q.get("fake_user") or THREADS.default_user)
        if user is None:
            return FakeResponse(400, "unknown fake_user")
        return consent_redirect(q, grants, app_id=APP_ID, user=user.name, deny=user.deny, declined=user.declined)

    @server.route("POST", "/threads/oauth/access_token")
    def access_token(req: FakeRequest) -> FakeResponse:
        f = req.form
        if not CLIENT.authenticates(req):
            return meta_error(101, "Error validating client secret.")
        if f.get("grant_type") != "authorization_code" or not f.get("code"):
            return meta_error(100, "Invalid grant_type or missing code")
        grant, _ = grants.redeem_code(
            f["code"], client_id=APP_ID, redirect_uri=f.get("redirect_uri"), code_verifier=None
        )
        if grant is None:
            return meta_error(100, "Invalid authorization code", subcode=36007)
        token = issue(grant, long_lived=False)
        return FakeResponse(200, {"access_token": token, "user_id": THREADS.users[grant.user].id})

    @server.route("GET", "/threads/access_token")
    def exchange(req: FakeRequest) -> FakeResponse:
        q = req.query
        if q.get("grant_type") != "th_exchange_token":
            return meta_error(100, "Unsupported grant_type")
        if q.get("client_secret") != APP_SECRET:
            return meta_error(101, "Error validating client secret.")
        checked = check(q.get("access_token"))
        if isinstance(checked, FakeResponse):
            return checked
        grant, issued = checked
        if issued.long_lived:
            return meta_error(100, "The access token is already long-lived")
        return FakeResponse(200, {"access_token": issue(grant, True), "token_type": "bearer", "expires_in": LONG_LIVED})

    @server.route("GET", "/threads/refresh_access_token")
    def refresh(req: FakeRequest) -> FakeResponse:
        q = req.query
        if q.get("grant_type") != "th_refresh_token":
            return meta_error(100, "Unsupported grant_type")
        checked = check(q.get("access_token"))
        if isinstance(checked, FakeResponse):
            return checked
        grant, issued = checked
        if not issued.long_lived:
            return meta_error(100, "Only long-lived tokens can be refreshed")
        if time.time() - issued.issued_at < MIN_REFRESH_AGE:
            return meta_error(100, "The token is less than 24 hours old and cannot be refreshed yet (fake)")
        return FakeResponse(200, {"access_token": issue(grant, True), "token_type": "bearer", "expires_in": LONG_LIVED})

    def authenticate(req: FakeRequest) -> tuple[Grant, ThreadsUser] | FakeResponse:
        checked = check(req.bearer())
        if isinstance(checked, FakeResponse):
            return checked
        grant, _ = checked
        return grant, THREADS.users[grant.user]

    @server.route("GET", "/threads/v1.0/me")
    def me(req: FakeRequest) -> FakeResponse:
        auth = authenticate(req)
        if isinstance(auth, FakeResponse):
            return auth
        _, user = auth
        values: dict[str, Any] = {
            "id": str(user.id),
            "username": user.username,
            "name": user.display,
            "threads_profile_picture_url": f"https://cdn.example.test/threads/{user.id}.jpg",
            "threads_biography": "",
            "is_verified": False,
        }
        fields = [f for f in (req.query.get("fields") or "id").split(",") if f in values]
        return FakeResponse(200, {k: values[k] for k in ["id", *fields]})

    @server.route("GET", "/threads/v1.0/{uid}/threads_insights")
    def insights(req: FakeRequest) -> FakeResponse:
        auth = authenticate(req)
        if isinstance(auth, FakeResponse):
            return auth
        grant, user = auth
        if req.match["uid"] not in (str(user.id), "me"):
            return meta_error(100, "Unsupported get request.", subcode=33)
        if "threads_manage_insights" not in grant.scopes:
            return meta_error(10, "Application does not have permission for this action", status=403)
        if req.query.get("metric") != "followers_count":
            return meta_error(100, "Unsupported metric")
        item = {
            "name": "followers_count",
            "period": "day",
            "title": "followers_count",
            "description": "The number of followers",
            "total_value": {"value": THREADS.followers},
            "id": f"{user.id}/insights/followers_count/day",
        }
        return FakeResponse(200, {"data": [item]})

    @server.route("POST", "/threads/fake-revoke")
    def fake_revoke(req: FakeRequest) -> FakeResponse:
        """Fake-only RFC 7009 endpoint, for THREADS_REVOKE_URL (Threads documents none)."""
        f = req.form
        if not CLIENT.authenticates(req):
            return FakeResponse(401, {"error": "invalid_client"})
        grants.revoke_token(f.get("token", ""))
        with THREADS.lock:
            THREADS.revoked.append(f.get("token", ""))
        return FakeResponse(200, {})


def settings_env(base_url: str) -> dict[str, str]:
    return {
        "THREADS_APP_ID": APP_ID,
        "THREADS_APP_SECRET": APP_SECRET,
        "THREADS_AUTHORIZE_URL": f"{base_url}/threads/oauth/authorize",
        "THREADS_TOKEN_URL": f"{base_url}/threads/oauth/access_token",
        "THREADS_API_URL": f"{base_url}/threads",
    }
