"""A fake Mastodon instance, mounted at the ROOT of the shared fake server.

Mastodon has no fixed host: the instance is whatever the user names, so the tests use the fake
server's own base URL (``http://127.0.0.1:PORT``, with ``ALLOW_PRIVATE_NETWORK``) as the instance
and the real Mastodon paths (docs/platforms.md, "Mastodon"): app registration, OAuth with optional PKCE,
``verify_credentials``, revocation, the 4.3+ authorization-server metadata and the instance JSON.

Tests make the server older (no metadata → no PKCE, ``read:accounts``) with a 404 fault on
``/.well-known/oauth-authorization-server``, and inject 401/429/5xx with ``server.fail``.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from urllib.parse import urlencode

from tests.fakeplatform.core import FakePlatformServer, FakeRequest, FakeResponse

#: the users of the fake instance; ``fake_user`` on the authorization URL picks one
USERS: dict[str, dict[str, object]] = {
    "alice": {
        "id": "109384",
        "username": "alice",
        "display_name": "Alice Example",
        "avatar": "https://files.example/avatars/alice.png",
        "followers_count": 321,
        "following_count": 45,
        "statuses_count": 678,
    },
    "bob": {
        "id": "207",
        "username": "bob",
        "display_name": "",
        "avatar": "https://files.example/avatars/bob.png",
        "followers_count": 0,
        "following_count": 1,
        "statuses_count": 2,
    },
}

ALL_SCOPES = ("read", "write", "profile", "read:accounts", "write:statuses", "write:media")


@dataclass
class App:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    scopes: list[str]


class FakeMastodon:
    """The instance's state: registered apps (the grants live in ``server.grants``)."""

    def __init__(self, server: FakePlatformServer) -> None:
        self.server = server
        self.apps: dict[str, App] = {}
        self.lock = threading.Lock()

    def app(self, client_id: str | None) -> App | None:
        with self.lock:
            return self.apps.get(client_id or "")


_STATE: dict[int, FakeMastodon] = {}


def state(server: FakePlatformServer) -> FakeMastodon:
    """The fake instance installed on ``server``."""
    return _STATE[id(server)]


def settings_env(base_url: str) -> dict[str, str]:
    """Mastodon needs no settings: the instance is named per connect."""
    return {}


def install(server: FakePlatformServer) -> None:
    fake = FakeMastodon(server)
    _STATE[id(server)] = fake
    grants = server.grants

    def unauthorized() -> FakeResponse:
        return FakeResponse(401, {"error": "The access token is invalid"})

    @server.route("GET", "/api/v1/instance")
    def instance(request: FakeRequest) -> FakeResponse:
        host = request.headers.get("host", "127.0.0.1")
        return FakeResponse(
            200,
            {"uri": host, "title": "Fake Mastodon", "version": "4.3.2", "registrations": False},
        )

    @server.route("GET", "/.well-known/oauth-authorization-server")
    def metadata(request: FakeRequest) -> FakeResponse:
        base = "http://" + request.headers.get("host", "127.0.0.1")
        return FakeResponse(
            200,
            {
                "issuer": base + "/",
                "authorization_endpoint": base + "/oauth/authorize",
                "token_endpoint": base + "/oauth/token",
                "revocation_endpoint": base + "/oauth/revoke",
                "app_registration_endpoint": base + "/api/v1/apps",
                "scopes_supported": list(ALL_SCOPES),
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code", "client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            },
        )

    @server.route("POST", "/api/v1/apps")
    def register(request: FakeRequest) -> FakeResponse:
        params = request.form or (request.json if isinstance(request.json, dict) else {})
        name = params.get("client_name")
        redirect = params.get("redirect_uris")
        if not name or not redirect:
            return FakeResponse(422, {"error": "Validation failed: Name can't be blank, Redirect URI can't be blank"})
        uris = redirect if isinstance(redirect, list) else str(redirect).split()
        scopes = str(params.get("scopes") or "read").split()
        if any(s not in ALL_SCOPES for s in scopes):
            return FakeResponse(422, {"error": "Validation failed: Scopes are invalid"})
        app = App("cid_" + secrets.token_urlsafe(12), "csec_" + secrets.token_urlsafe(24), uris, scopes)
        with fake.lock:
            fake.apps[app.client_id] = app
        return FakeResponse(
            200,
            {
                "id": str(len(fake.apps)),
                "name": name,
                "website": params.get("website"),
                "scopes": scopes,
                "redirect_uris": uris,
                "redirect_uri": "\n".join(uris),
                "client_id": app.client_id,
                "client_secret": app.client_secret,
                "client_secret_expires_at": 0,
            },
        )

    @server.route("GET", "/oauth/authorize")
    def authorize(request: FakeRequest) -> FakeResponse:
        q = request.query
        app = fake.app(q.get("client_id"))
        if app is None:
            return FakeResponse(401, "Client authentication failed due to unknown client")
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            return FakeResponse(400, "The redirect uri included is not valid.")
        if q.get("response_type") != "code":
            return FakeResponse(400, "response_type must be code")

        def back(**params: str) -> FakeResponse:
            return FakeResponse(302, "", {"location": redirect_uri + "?" + urlencode(params)})

        state_value = q.get("state", "")
        scopes = q.get("scope", "read").split()
        if any(s not in app.scopes for s in scopes):
            return back(error="invalid_scope", state=state_value)
        challenge = q.get("code_challenge")
        if challenge and q.get("code_challenge_method") != "S256":
            return back(error="invalid_request", state=state_value)
        if q.get("fake_deny") == "1":
            return back(error="access_denied", state=state_value)
        user = q.get("fake_user", "alice")
        if user not in USERS:
            return FakeResponse(400, "no such fake user")
        code = grants.issue_code(
            client_id=app.client_id, redirect_uri=redirect_uri, user=user, scopes=scopes, code_challenge=challenge
        )
        return back(code=code, state=state_value)

    def client_of(request: FakeRequest) -> App | None:
        basic = request.basic()
        client_id, secret = basic if basic else (request.form.get("client_id"), request.form.get("client_secret"))
        app = fake.app(client_id)
        return app if app is not None and app.client_secret == secret else None

    @server.route("POST", "/oauth/token")
    def token(request: FakeRequest) -> FakeResponse:
        form = request.form
        app = client_of(request)
        if app is None:
            return FakeResponse(401, {"error": "invalid_client", "error_description": "Client authentication failed"})
        if form.get("grant_type") != "authorization_code":
            return FakeResponse(400, {"error": "unsupported_grant_type"})
        grant, error = grants.redeem_code(
            form.get("code", ""),
            client_id=app.client_id,
            redirect_uri=form.get("redirect_uri"),
            code_verifier=form.get("code_verifier"),
        )
        if grant is None:
            return FakeResponse(
                400, {"error": error, "error_description": "The provided authorization grant is invalid"}
            )
        access = grants.new_access(grant, None, prefix="masto_")
        return FakeResponse(
            200,
            {"access_token": access, "token_type": "Bearer", "scope": " ".join(grant.scopes), "created_at": 1},
        )

    @server.route("POST", "/oauth/revoke")
    def revoke(request: FakeRequest) -> FakeResponse:
        if client_of(request) is None:
            return FakeResponse(403, {"error": "unauthorized_client"})
        grants.revoke_token(request.form.get("token", ""))
        return FakeResponse(200, {})

    @server.route("GET", "/api/v1/accounts/verify_credentials")
    def verify_credentials(request: FakeRequest) -> FakeResponse:
        grant, problem = grants.check_access(request.bearer())
        if grant is None:
            return unauthorized()
        if not {"profile", "read:accounts", "read"} & set(grant.scopes):
            return FakeResponse(403, {"error": "This action is outside the authorized scopes"})
        account = dict(USERS[grant.user])
        account["acct"] = account["username"]
        account["avatar_static"] = account["avatar"]
        return FakeResponse(200, account)
