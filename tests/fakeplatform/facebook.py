"""Fake Meta Graph API: Facebook Pages and Instagram business accounts, both under ``/meta``.

Facebook and Instagram (via Facebook Login) are one platform at Meta: the same dialog, token
endpoint, ``fb_exchange_token`` and Graph. So one module serves both, and ``settings_env`` points
the ``FACEBOOK_*`` and the ``INSTAGRAM_*`` overrides at the same routes.

Routes (``{ver}`` is any Graph version, e.g. ``v27.0``):

* ``GET /meta/dialog/oauth`` - the login dialog. It never shows a page: it answers ``302`` to
  ``redirect_uri`` with ``code`` and ``state`` at once.
* ``GET|POST /meta/graph/{ver}/oauth/access_token`` - code exchange (short-lived user token,
  1 h) and ``grant_type=fb_exchange_token`` (long-lived, 60 d; an expired token is refused
  with 190/463). Client id and secret are checked (code 1 when wrong).
* ``GET /meta/graph/{ver}/me`` and ``/me/accounts`` - the user, and their Pages in result pages
  of ``META.page_size`` (default 2) with ``paging.cursors`` and ``paging.next``. Like Meta,
  ``next`` carries ``access_token`` in its query. Each Page gets a Page token (no expiry when the
  user token was long-lived, 1 h otherwise).
* ``GET /meta/graph/{ver}/{id}`` - a Page (``followers_count``, ``fan_count``...) or an
  Instagram business account (``followers_count``, ``follows_count``, ``media_count``...).
* ``DELETE /meta/graph/{ver}/{user-id}/permissions`` - de-authorizes the app for that user
  (app token ``app_id|app_secret`` or the user's own token); every token of the user dies (190/458).

Every Graph answer carries ``X-App-Usage``; Page and Instagram reads also carry
``X-Business-Use-Case-Usage``. Errors are Meta-shaped (``{"error": {"message", "type", "code",
"error_subcode", "fbtrace_id"}}``). A supplied ``appsecret_proof`` is verified.

Fake-only knobs (Meta has nothing like them):

* the user who "logs in" is ``fake_user=<name>`` on the dialog URL, else ``META.default_user``
  (``alice``: three Pages, two linked to Instagram accounts; ``bob``: no Pages);
* ``carol`` is configured to deny (as does ``fake_deny=1``, the convention of ``core.py``): the
  dialog redirects with ``error=access_denied``;
* ``META.usage_percent`` / ``META.regain_minutes`` set what the usage headers report;
  ``META.page_size`` the result-page size of ``/me/accounts``; ``META.require_proof`` makes
  ``appsecret_proof`` mandatory. ``META.reset()`` restores all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.fakeplatform.core import FakePlatformServer, FakeRequest, FakeResponse, Grant, GrantStore

APP_ID = "meta-test-app-id"
APP_SECRET = "meta-test-app-secret-0123456789"
GRAPH_VERSION = "v27.0"

SHORT_LIVED = 3600
LONG_LIVED = 5184000


# ---- the fake world --------------------------------------------------------------------------


@dataclass
class FakeIG:
    id: str
    username: str
    name: str
    followers: int
    follows: int
    media: int

    @property
    def picture(self) -> str:
        return f"https://cdn.example.test/ig/{self.id}.jpg"


@dataclass
class FakePage:
    id: str
    name: str
    username: str | None
    followers: int
    fans: int
    ig: FakeIG | None = None

    @property
    def picture(self) -> str:
        return f"https://cdn.example.test/page/{self.id}.jpg"


@dataclass
class FakeBusiness:
    """A Business Manager business: Pages it owns and its clients' Pages it may act for."""

    id: str
    name: str
    owned: list[FakePage] = field(default_factory=list)
    client: list[FakePage] = field(default_factory=list)


@dataclass
class FakeUser:
    name: str
    id: str
    pages: list[FakePage] = field(default_factory=list)
    deny: bool = False
    businesses: list[FakeBusiness] = field(default_factory=list)
    declined: tuple[str, ...] = ()

    def all_pages(self) -> list[FakePage]:
        """Every Page this user can reach: their own, then those of their businesses."""
        seen: dict[str, FakePage] = {}
        for page in [*self.pages, *(p for b in self.businesses for p in (*b.owned, *b.client))]:
            seen.setdefault(page.id, page)
        return list(seen.values())


def _business_world(name: str, user_id: str, declined: tuple[str, ...] = ()) -> FakeUser:
    """One Page of their own (also owned by the business), one owned only through Business
    Manager (with an Instagram account), one client Page."""
    shop = FakePage("301", "Dora Shop", "dorashop", 900, 850, FakeIG("17841400000301", "dora.shop", "Shop", 300, 20, 7))
    outlet = FakePage(
        "302", "Dora Outlet", "doraoutlet", 450, 400, FakeIG("17841400000302", "dora.outlet", "Outlet", 150, 9, 3)
    )
    client = FakePage("303", "Client Co", None, 70, 60)
    business = FakeBusiness("9001", "Dora Group", owned=[shop, outlet], client=[client])
    return FakeUser(name, user_id, [shop], businesses=[business], declined=declined)


def _world() -> dict[str, FakeUser]:
    return {
        "alice": FakeUser(
            "alice",
            "10001",
            [
                FakePage(
                    "201",
                    "Alice Bakery",
                    "alicebakery",
                    5120,
                    4800,
                    FakeIG("17841400000001", "alice.bakery", "Bakery", 1200, 80, 45),
                ),
                FakePage("202", "Alice Cafe", None, 310, 290),
                FakePage(
                    "203",
                    "Alice Books",
                    "alicebooks",
                    77,
                    70,
                    FakeIG("17841400000003", "alice.books", "Books", 64, 12, 9),
                ),
            ],
        ),
        "bob": FakeUser("bob", "10002", []),
        "carol": FakeUser("carol", "10003", [], deny=True),
        # Pages reached through Business Manager; erin declines business_management
        "dora": _business_world("dora", "10004"),
        "erin": _business_world("erin", "10005", declined=("business_management",)),
    }


@dataclass
class TokenInfo:
    kind: str  # "user" | "page"
    user: str
    long_lived: bool = False
    page_id: str | None = None


class MetaWorld:
    """Users, Pages and Instagram accounts of the fake, plus the knobs tests turn."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, TokenInfo] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.users = _world()
            self.default_user = "alice"
            self.usage_percent = 3
            self.regain_minutes = 0
            self.page_size = 2
            self.require_proof = False
            self.revocations: list[str] = []

    def user(self, name: str) -> FakeUser | None:
        return self.users.get(name)

    def user_by_id(self, user_id: str) -> FakeUser | None:
        return next((u for u in self.users.values() if u.id == user_id), None)


META = MetaWorld()


# ---- helpers tests use too ---------------------------------------------------------------------


def meta_error_body(code: int, message: str, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "A" + secrets.token_hex(8),
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def meta_error(
    code: int, message: str, *, subcode: int | None = None, status: int = 400, headers: dict[str, str] | None = None
) -> FakeResponse:
    """A Meta error answer (also for ``server.fail(...)`` in tests)."""
    return FakeResponse(status, meta_error_body(code, message, subcode), dict(headers or {}))


def buc_header(entity_id: str, percent: int, regain_minutes: int = 0, kind: str = "pages") -> dict[str, str]:
    """An ``X-Business-Use-Case-Usage`` header for one Page / Instagram account."""
    entry = {
        "type": kind,
        "call_count": percent,
        "total_cputime": max(1, percent // 2),
        "total_time": max(1, percent // 2),
        "estimated_time_to_regain_access": regain_minutes,
    }
    return {"X-Business-Use-Case-Usage": json.dumps({entity_id: [entry]})}


def app_usage_header(percent: int) -> dict[str, str]:
    return {"X-App-Usage": json.dumps({"call_count": percent, "total_cputime": 1, "total_time": 1})}


def proof(token: str) -> str:
    return hmac.new(APP_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()


# ---- routes ------------------------------------------------------------------------------------


def _redirect(redirect_uri: str, params: dict[str, str]) -> FakeResponse:
    sep = "&" if "?" in redirect_uri else "?"
    return FakeResponse(302, "", {"Location": redirect_uri + sep + urlencode(params)})


def consent_redirect(
    query: dict[str, str], grants: GrantStore, *, app_id: str, user: str, deny: bool, declined: tuple[str, ...] = ()
) -> FakeResponse:
    """The end of a Meta consent screen (Facebook Login and Threads alike), once the app id, the
    redirect URI and the user are checked: ``access_denied`` back to ``redirect_uri`` for a
    denying user (or ``fake_deny=1``), else a code for the comma-separated scopes the user did
    not decline."""
    state = query.get("state", "")
    if deny or query.get("fake_deny") == "1":
        return _redirect(
            query["redirect_uri"],
            {
                "error": "access_denied",
                "error_reason": "user_denied",
                "error_description": "Permissions error",
                "state": state,
            },
        )
    scopes = [s for s in query.get("scope", "").split(",") if s and s not in declined]
    code = grants.issue_code(
        client_id=app_id, redirect_uri=query["redirect_uri"], user=user, scopes=scopes, code_challenge=None
    )
    return _redirect(query["redirect_uri"], {"code": code, "state": state})


def _usage(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = app_usage_header(META.usage_percent)
    headers.update(extra or {})
    return headers


def install(server: FakePlatformServer) -> None:
    grants = server.grants

    def issue_user_token(grant: Grant, long_lived: bool) -> tuple[str, int]:
        lifetime = LONG_LIVED if long_lived else SHORT_LIVED
        token = grants.new_access(grant, lifetime, prefix="EAAl" if long_lived else "EAAs")
        with META.lock:
            META.tokens[token] = TokenInfo("user", grant.user, long_lived)
        return token, lifetime

    def page_token(grant: Grant, page: FakePage, long_lived: bool) -> str:
        token = grants.new_access(grant, None if long_lived else SHORT_LIVED, prefix="EAAp")
        with META.lock:
            META.tokens[token] = TokenInfo("page", grant.user, long_lived, page.id)
        return token

    def token_error(status: str | None) -> FakeResponse:
        if status == "expired":
            return meta_error(190, "Error validating access token: Session has expired.", subcode=463)
        if status == "revoked":
            return meta_error(
                190, "Error validating access token: The user has not authorized application.", subcode=458
            )
        return meta_error(190, "Invalid OAuth access token - Cannot parse access token")

    def authenticate(req: FakeRequest) -> tuple[TokenInfo, Grant] | FakeResponse:
        token = req.bearer()
        if not token:
            return meta_error(104, "An access token is required to request this resource.")
        given = req.query.get("appsecret_proof")
        if given is not None and not hmac.compare_digest(given, proof(token)):
            return meta_error(100, "Invalid appsecret_proof provided in the API argument")
        if given is None and META.require_proof:
            return meta_error(100, "API calls from the server require an appsecret_proof argument")
        grant, status = grants.check_access(token)
        info = META.tokens.get(token)
        if grant is None or info is None:
            return token_error(status)
        return info, grant

    # -- the dialog

    @server.route("GET", "/meta/dialog/oauth")
    def dialog(req: FakeRequest) -> FakeResponse:
        q = req.query
        if q.get("client_id") != APP_ID or not q.get("redirect_uri"):
            return FakeResponse(400, "Invalid App ID or redirect_uri")
        user = META.user(q.get("fake_user") or META.default_user)
        if user is None:
            return FakeResponse(400, "unknown fake_user")
        return consent_redirect(q, grants, app_id=APP_ID, user=user.name, deny=user.deny, declined=user.declined)

    # -- the token endpoint

    def access_token(req: FakeRequest) -> FakeResponse:
        p = req.params
        if p.get("client_id") != APP_ID or p.get("client_secret") != APP_SECRET:
            return meta_error(1, "Error validating client secret.")
        if p.get("grant_type") == "fb_exchange_token":
            old = p.get("fb_exchange_token")
            grant, status = grants.check_access(old)
            info = META.tokens.get(old or "")
            if grant is None or info is None:
                return token_error(status)
            if info.kind != "user":
                return meta_error(100, "Invalid fb_exchange_token: not a user access token")
            token, lifetime = issue_user_token(grant, long_lived=True)
            return FakeResponse(200, {"access_token": token, "token_type": "bearer", "expires_in": lifetime})
        code = p.get("code")
        if not code:
            return meta_error(100, "Missing authorization code")
        grant, _ = grants.redeem_code(code, client_id=APP_ID, redirect_uri=p.get("redirect_uri"), code_verifier=None)
        if grant is None:
            return meta_error(100, "This authorization code has been used or is invalid.", subcode=36007)
        token, lifetime = issue_user_token(grant, long_lived=False)
        return FakeResponse(200, {"access_token": token, "token_type": "bearer", "expires_in": lifetime})

    server.route("POST", "/meta/graph/{ver}/oauth/access_token")(access_token)
    server.route("GET", "/meta/graph/{ver}/oauth/access_token")(access_token)

    # -- Graph reads

    @server.route("GET", "/meta/graph/{ver}/me")
    def me(req: FakeRequest) -> FakeResponse:
        auth = authenticate(req)
        if isinstance(auth, FakeResponse):
            return auth
        info, _ = auth
        user = META.users[info.user]
        return FakeResponse(200, {"id": user.id, "name": user.name.title()}, _usage())

    def page_edge(req: FakeRequest, info: TokenInfo, grant: Grant, pages: list[FakePage]) -> FakeResponse:
        """A paginated edge of Page nodes (``/me/accounts``, ``owned_pages``, ``client_pages``)."""
        fields = set((req.query.get("fields") or "id,name").split(","))
        try:
            start = int(req.query.get("after") or 0)
            limit = min(int(req.query.get("limit") or 25), META.page_size)
        except ValueError:
            return meta_error(100, "Invalid paging parameter")
        chunk = pages[start : start + limit]
        data = []
        for page in chunk:
            item: dict[str, Any] = {"id": page.id}
            if "name" in fields:
                item["name"] = page.name
            if "username" in fields and page.username:
                item["username"] = page.username
            if "access_token" in fields:
                item["access_token"] = page_token(grant, page, info.long_lived)
            if "picture" in fields:
                item["picture"] = {"data": {"height": 50, "width": 50, "is_silhouette": False, "url": page.picture}}
            if "instagram_business_account" in fields and page.ig is not None:
                item["instagram_business_account"] = {"id": page.ig.id}
            data.append(item)
        paging: dict[str, Any] = {"cursors": {"before": str(start), "after": str(start + len(chunk))}}
        if start + limit < len(pages):
            query = {
                "access_token": req.bearer() or "",
                "fields": req.query.get("fields") or "id,name",
                "limit": str(limit),
                "after": str(start + limit),
            }
            paging["next"] = f"http://{req.headers['host']}{req.path}?{urlencode(query)}"
        return FakeResponse(200, {"data": data, "paging": paging}, _usage())

    def user_only(req: FakeRequest) -> tuple[TokenInfo, Grant] | FakeResponse:
        auth = authenticate(req)
        if isinstance(auth, FakeResponse):
            return auth
        if auth[0].kind != "user":
            return meta_error(100, "(#100) Tried accessing nonexisting field on node type (Page)")
        return auth

    @server.route("GET", "/meta/graph/{ver}/me/accounts")
    def accounts(req: FakeRequest) -> FakeResponse:
        auth = user_only(req)
        if isinstance(auth, FakeResponse):
            return auth
        info, grant = auth
        return page_edge(req, info, grant, META.users[info.user].pages)

    @server.route("GET", "/meta/graph/{ver}/me/permissions")
    def permissions(req: FakeRequest) -> FakeResponse:
        """What the user granted: ``{"data": [{"permission", "status"}]}`` (declined ones too)."""
        auth = user_only(req)
        if isinstance(auth, FakeResponse):
            return auth
        info, grant = auth
        data = [{"permission": "public_profile", "status": "granted"}]
        data += [{"permission": p, "status": "granted"} for p in grant.scopes]
        data += [{"permission": p, "status": "declined"} for p in META.users[info.user].declined]
        return FakeResponse(200, {"data": data}, _usage())

    def business_of(req: FakeRequest) -> tuple[TokenInfo, Grant, FakeBusiness] | FakeResponse:
        auth = user_only(req)
        if isinstance(auth, FakeResponse):
            return auth
        info, grant = auth
        if "business_management" not in grant.scopes:
            return meta_error(200, "(#200) Requires business_management permission to manage the object", status=403)
        for business in META.users[info.user].businesses:
            if business.id == req.match.get("node"):
                return info, grant, business
        return meta_error(100, "Unsupported get request.", subcode=33)

    @server.route("GET", "/meta/graph/{ver}/me/businesses")
    def businesses(req: FakeRequest) -> FakeResponse:
        auth = user_only(req)
        if isinstance(auth, FakeResponse):
            return auth
        info, grant = auth
        if "business_management" not in grant.scopes:
            return meta_error(200, "(#200) Requires business_management permission to manage the object", status=403)
        data = [{"id": b.id, "name": b.name} for b in META.users[info.user].businesses]
        return FakeResponse(200, {"data": data, "paging": {"cursors": {}}}, _usage())

    @server.route("GET", "/meta/graph/{ver}/{node}/owned_pages")
    def owned_pages(req: FakeRequest) -> FakeResponse:
        found = business_of(req)
        if isinstance(found, FakeResponse):
            return found
        info, grant, business = found
        return page_edge(req, info, grant, business.owned)

    @server.route("GET", "/meta/graph/{ver}/{node}/client_pages")
    def client_pages(req: FakeRequest) -> FakeResponse:
        found = business_of(req)
        if isinstance(found, FakeResponse):
            return found
        info, grant, business = found
        return page_edge(req, info, grant, business.client)

    @server.route("GET", "/meta/graph/{ver}/{node}")
    def node(req: FakeRequest) -> FakeResponse:
        auth = authenticate(req)
        if isinstance(auth, FakeResponse):
            return auth
        info, grant = auth
        user = META.users[info.user]
        node_id = req.match["node"]
        fields = [f for f in (req.query.get("fields") or "id").split(",") if f]
        for page in user.all_pages():
            # a Page token reads its own Page and that Page's Instagram account, nothing else
            own = info.kind == "user" or info.page_id == page.id
            if page.id == node_id and own:
                values: dict[str, Any] = {
                    "id": page.id,
                    "name": page.name,
                    "username": page.username,
                    "followers_count": page.followers,
                    "fan_count": page.fans,
                    "picture": {"data": {"url": page.picture}},
                }
                body = {k: values[k] for k in fields if values.get(k) is not None}
                body["id"] = page.id
                if "access_token" in fields and info.kind == "user":
                    body["access_token"] = page_token(grant, page, info.long_lived)
                return FakeResponse(200, body, _usage(buc_header(page.id, META.usage_percent, META.regain_minutes)))
            if page.ig is not None and page.ig.id == node_id and own:
                ig = page.ig
                values = {
                    "id": ig.id,
                    "username": ig.username,
                    "name": ig.name,
                    "profile_picture_url": ig.picture,
                    "followers_count": ig.followers,
                    "follows_count": ig.follows,
                    "media_count": ig.media,
                }
                body = {k: values[k] for k in fields if k in values}
                body["id"] = ig.id
                headers = buc_header(ig.id, META.usage_percent, META.regain_minutes, kind="instagram")
                return FakeResponse(200, body, _usage(headers))
        return meta_error(
            100,
            f"Unsupported get request. Object with ID '{node_id}' does not exist, cannot be loaded due to "
            "missing permissions, or does not support this operation.",
            subcode=33,
        )

    @server.route("DELETE", "/meta/graph/{ver}/{node}/permissions")
    def deauthorize(req: FakeRequest) -> FakeResponse:
        token = req.bearer() or ""
        user = META.user_by_id(req.match["node"])
        if user is None:
            return meta_error(100, "Unsupported delete request.", subcode=33)
        if token != f"{APP_ID}|{APP_SECRET}":
            auth = authenticate(req)
            if isinstance(auth, FakeResponse):
                return auth
            info, _ = auth
            if info.kind != "user" or info.user != user.name:
                return meta_error(200, "(#200) Permissions error")
        with grants.lock:
            for grant in grants.grants.values():
                if grant.user == user.name and grant.client_id == APP_ID:
                    grant.revoked = True
        with META.lock:
            META.revocations.append(user.id)
        return FakeResponse(200, {"success": True}, _usage())


def settings_env(base_url: str) -> dict[str, str]:
    graph = f"{base_url}/meta/graph/{GRAPH_VERSION}"
    env = {"META_APP_ID": APP_ID, "META_APP_SECRET": APP_SECRET, "META_GRAPH_VERSION": GRAPH_VERSION}
    for platform in ("FACEBOOK", "INSTAGRAM"):
        env[f"{platform}_AUTHORIZE_URL"] = f"{base_url}/meta/dialog/oauth"
        env[f"{platform}_TOKEN_URL"] = f"{graph}/oauth/access_token"
        env[f"{platform}_API_URL"] = graph
    return env


def follow_dialog(http: Any, authorization_url: str, fake_user: str | None = None) -> dict[str, str]:
    """Play the user's browser: open the authorization URL and return the redirect's query.

    ``http`` is an ``httpx.Client``; the fake dialog answers 302 at once, so no page is parsed.
    """
    from urllib.parse import parse_qsl, urlsplit

    url = authorization_url + (f"&fake_user={fake_user}" if fake_user else "")
    response = http.get(url, follow_redirects=False)
    assert response.status_code == 302, response.text
    return dict(parse_qsl(urlsplit(response.headers["location"]).query))
