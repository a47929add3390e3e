"""Fake Instagram API with Instagram Login under ``/iglogin``: three hosts, one module.

Routes, shaped as docs/platforms.md ("Instagram by Instagram Login") cites Meta's pages:

* ``GET /iglogin/oauth/authorize`` (``www.instagram.com/oauth/authorize``) - the consent screen:
  ``302`` to ``redirect_uri`` with ``code`` and ``state`` at once (``error=access_denied`` for a
  denying user). The comma-separated ``scope`` must hold ``instagram_business_basic``.
* ``POST /iglogin/api/oauth/access_token`` (``api.instagram.com``) - code → one-hour token, as
  the business-login page shows it: ``{"data": [{"access_token", "user_id", "permissions"}]}``
  (``user_id`` app-scoped, ``permissions`` a comma-separated string). A spent or unknown code gets
  the documented flat refusal ``{"error_type": "OAuthException", "code": 400, "error_message":
  "Matching code was not found or was already used"}``.
* ``GET /iglogin/graph/access_token?grant_type=ig_exchange_token&client_secret=…&access_token=…``
  - short → long-lived (``{"access_token", "token_type": "bearer", "expires_in": 5183944}``).
* ``GET /iglogin/graph/refresh_access_token?grant_type=ig_refresh_token&access_token=…`` - a new
  60-day token; refused unless the token is long-lived, not expired and at least 24 h old.
* ``GET /iglogin/graph/{ver}/me?fields=…`` - the professional account: ``user_id`` (its
  Instagram id), ``id`` (app-scoped), ``username``, ``name``, ``profile_picture_url`` and the
  three counts, with ``X-Business-Use-Case-Usage`` for that account (type ``instagram``).

Graph errors are Meta-shaped (``{"error": {"message", "type", "code", "error_subcode",
"fbtrace_id"}}``): an unknown token 190, an expired one 190/463. Fake-only knobs:
``fake_user=<name>`` on the authorize URL (default ``alice``); ``dave`` (or ``fake_deny=1``)
denies; ``IGLOGIN.age(token, seconds)`` backdates a token so a test can refresh it without waiting
a day; ``IGLOGIN.usage_percent`` / ``IGLOGIN.regain_minutes`` set the usage header;
``IGLOGIN.followers`` the count. The messages for a bad client secret and a too-young token are
the fake's own (Meta's wording is not documented). ``IGLOGIN.reset()`` restores everything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakeplatform.core import FakePlatformServer, FakeRequest, FakeResponse, Grant
from tests.fakeplatform.facebook import buc_header, consent_redirect, meta_error

APP_ID = "ig-login-test-app-id"
APP_SECRET = "ig-login-test-app-secret-0123456789"

SHORT_LIVED = 3600
LONG_LIVED = 5183944
MIN_REFRESH_AGE = 24 * 3600
BASIC = "instagram_business_basic"


@dataclass
class IGUser:
    name: str
    user_id: str  # the professional account's Instagram id
    scoped_id: str  # the app-scoped id the code exchange answers
    username: str
    display: str
    deny: bool = False


@dataclass
class IssuedToken:
    user: str
    long_lived: bool
    issued_at: float = field(default_factory=time.time)


class InstagramLoginWorld:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, IssuedToken] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.users = {
                "alice": IGUser("alice", "17841405822304914", "10203040506070", "alice.creates", "Alice Creates"),
                "dave": IGUser("dave", "17841400000000042", "10203040500042", "dave.ig", "Dave", deny=True),
            }
            self.followers = 2718
            self.follows = 314
            self.media = 42
            self.usage_percent = 5
            self.regain_minutes = 0

    def age(self, token: str, seconds: float) -> None:
        """Pretend ``token`` was issued ``seconds`` earlier than it was."""
        with self.lock:
            self.tokens[token].issued_at -= seconds


IGLOGIN = InstagramLoginWorld()


def flat_error(message: str, code: int = 400) -> FakeResponse:
    """The refusal shape of ``api.instagram.com/oauth/access_token``."""
    return FakeResponse(400, {"error_type": "OAuthException", "code": code, "error_message": message})


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    def issue(grant: Grant, long_lived: bool) -> str:
        token = grants.new_access(
            grant, LONG_LIVED if long_lived else SHORT_LIVED, prefix="IGl" if long_lived else "IGs"
        )
        with IGLOGIN.lock:
            IGLOGIN.tokens[token] = IssuedToken(grant.user, long_lived)
        return token

    def check(token: str | None) -> tuple[Grant, IssuedToken] | FakeResponse:
        grant, status = grants.check_access(token)
        issued = IGLOGIN.tokens.get(token or "")
        if grant is None or issued is None or grant.client_id != APP_ID:
            if status == "expired":
                return meta_error(190, "Error validating access token: Session has expired.", subcode=463)
            return meta_error(190, "Invalid OAuth access token - Cannot parse access token")
        return grant, issued

    def long_lived_answer(grant: Grant) -> FakeResponse:
        return FakeResponse(200, {"access_token": issue(grant, True), "token_type": "bearer", "expires_in": LONG_LIVED})

    @server.route("GET", "/iglogin/oauth/authorize")
    def authorize(req: FakeRequest) -> FakeResponse:
        q = req.query
        if q.get("client_id") != APP_ID or not q.get("redirect_uri") or q.get("response_type") != "code":
            return FakeResponse(400, "Invalid client_id, redirect_uri or response_type")
        if BASIC not in q.get("scope", "").split(","):
            return FakeResponse(400, f"scope must include {BASIC}")
        user = IGLOGIN.users.get(q.get("fake_user") or "alice")
        if user is None:
            return FakeResponse(400, "unknown fake_user")
        return consent_redirect(q, grants, app_id=APP_ID, user=user.name, deny=user.deny)

    @server.route("POST", "/iglogin/api/oauth/access_token")
    def access_token(req: FakeRequest) -> FakeResponse:
        f = req.form
        if f.get("client_id") != APP_ID or f.get("client_secret") != APP_SECRET:
            return flat_error("Error validating client secret (fake)", 101)
        if f.get("grant_type") != "authorization_code" or not f.get("code"):
            return flat_error("Invalid grant_type or missing code")
        grant, _ = grants.redeem_code(
            f["code"], client_id=APP_ID, redirect_uri=f.get("redirect_uri"), code_verifier=None
        )
        if grant is None:
            return flat_error("Matching code was not found or was already used")
        user = IGLOGIN.users[grant.user]
        item = {"access_token": issue(grant, False), "user_id": user.scoped_id, "permissions": ",".join(grant.scopes)}
        return FakeResponse(200, {"data": [item]})

    @server.route("GET", "/iglogin/graph/access_token")
    def exchange(req: FakeRequest) -> FakeResponse:
        q = req.query
        if q.get("grant_type") != "ig_exchange_token":
            return meta_error(100, "Unsupported grant_type")
        if q.get("client_secret") != APP_SECRET:
            return meta_error(101, "Error validating client secret.")
        checked = check(q.get("access_token"))
        if isinstance(checked, FakeResponse):
            return checked
        grant, issued = checked
        if issued.long_lived:
            return meta_error(100, "The access token is already long-lived (fake)")
        return long_lived_answer(grant)

    @server.route("GET", "/iglogin/graph/refresh_access_token")
    def refresh(req: FakeRequest) -> FakeResponse:
        q = req.query
        if q.get("grant_type") != "ig_refresh_token":
            return meta_error(100, "Unsupported grant_type")
        checked = check(q.get("access_token"))
        if isinstance(checked, FakeResponse):
            return checked
        grant, issued = checked
        if not issued.long_lived:
            return meta_error(100, "Only long-lived tokens can be refreshed (fake)")
        if time.time() - issued.issued_at < MIN_REFRESH_AGE:
            return meta_error(100, "The token is less than 24 hours old and cannot be refreshed yet (fake)")
        return long_lived_answer(grant)

    @server.route("GET", "/iglogin/graph/{ver}/me")
    def me(req: FakeRequest) -> FakeResponse:
        checked = check(req.bearer())
        if isinstance(checked, FakeResponse):
            return checked
        grant, _ = checked
        if BASIC not in grant.scopes:
            return meta_error(10, "Application does not have permission for this action", status=403)
        user = IGLOGIN.users[grant.user]
        values: dict[str, Any] = {
            "user_id": user.user_id,
            "username": user.username,
            "name": user.display,
            "profile_picture_url": f"https://cdn.example.test/ig/{user.user_id}.jpg",
            "followers_count": IGLOGIN.followers,
            "follows_count": IGLOGIN.follows,
            "media_count": IGLOGIN.media,
            "account_type": "MEDIA_CREATOR",
        }
        fields = [f for f in (req.query.get("fields") or "id").split(",") if f in values]
        body = {**{k: values[k] for k in fields}, "id": user.scoped_id}
        usage = buc_header(user.user_id, IGLOGIN.usage_percent, IGLOGIN.regain_minutes, kind="instagram")
        return FakeResponse(200, body, usage)


def settings_env(base_url: str) -> dict[str, str]:
    return {
        "INSTAGRAM_APP_ID": APP_ID,
        "INSTAGRAM_APP_SECRET": APP_SECRET,
        "INSTAGRAM_LOGIN_AUTHORIZE_URL": f"{base_url}/iglogin/oauth/authorize",
        "INSTAGRAM_LOGIN_TOKEN_URL": f"{base_url}/iglogin/api/oauth/access_token",
        "INSTAGRAM_LOGIN_API_URL": f"{base_url}/iglogin/graph",
    }
