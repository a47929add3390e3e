"""The demo platform's provider side: a small OAuth 2.0 server under ``/demo`` in this process.

Mounted only by ``social-accounts run --demo`` (``service.embedded``); never by ``web``.
``platforms.demo.DemoAdapter`` talks to it over HTTP like to any platform, so a newcomer sees the
real flow end to end without credentials or internet:

* ``GET /demo/authorize`` — a consent page (Allow / Deny, and which made-up account to share);
  ``POST /demo/authorize`` sends the browser to ``/oauth/callback`` with a code or
  ``error=access_denied``. Only our own redirect URI is accepted (no open redirect).
* ``POST /demo/token`` — ``authorization_code`` (PKCE S256 checked, codes single use, 2 minutes)
  and ``refresh_token`` grants. Access tokens live 5 minutes; refresh tokens ROTATE: each use
  returns a new one, and presenting a spent one revokes the whole grant (what X or TikTok do),
  so a double refresh would show up as a disconnected account instead of going unnoticed.
* ``GET /demo/api/me`` — profile and counts (they drift a little every minute, so a sync shows
  change); a missing, expired or revoked token is ``401``.
* ``POST /demo/revoke`` — RFC 7009: revokes the grant of an access or refresh token.

Tokens are HMAC-signed (key derived from ``STATE_SECRET``), so they survive a restart; which
refresh token is current and which grants were revoked is kept in memory (after a restart the
first refresh token presented for a grant is trusted). Nothing here is a secret worth keeping:
it is a toy provider, but it never logs a token either.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from platforms.demo import ACCESS_TOKEN_SECONDS, DEMO_CLIENT_ID, demo_client_secret
from platforms.oauth2 import s256_challenge
from social_accounts.settings import Settings
from social_accounts.signing import BadSignature, Signer, constant_time_equal, derive_key
from web_callback.forms import read_form

__all__ = ["PERSONAS", "DemoProvider", "install", "routes"]

CODE_SECONDS = 120
REFRESH_TOKEN_SECONDS = 30 * 24 * 3600
CONSENT_SECONDS = 600


@dataclass(frozen=True)
class Persona:
    key: str
    name: str
    username: str
    followers: int
    following: int
    posts: int
    colour: str


#: the made-up accounts a demo user can share
PERSONAS: dict[str, Persona] = {
    "cafe": Persona("cafe", "Corner Café", "corner_cafe", 1234, 180, 342, "#c0673b"),
    "studio": Persona("studio", "Blue Door Studio", "bluedoor", 87, 45, 12, "#2f5bea"),
}


@dataclass
class _Grant:
    persona: str
    current_refresh: str  # nonce of the one refresh token that may be used next
    revoked: bool = False


class DemoProvider:
    """Signed tokens plus the little state rotation needs. Thread-safe."""

    def __init__(self, settings: Settings, *, clock: Any = time.time) -> None:
        self._signer = Signer(derive_key(settings.state_secret or "", b"sa-demo-provider-v1"))
        self.client_secret = demo_client_secret(settings)
        self.redirect_uri = settings.redirect_uri
        self.clock = clock
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}
        self._used_codes: dict[str, float] = {}

    # ---- signed values ------------------------------------------------------------------------

    def sign(self, kind: str, data: dict[str, Any], lifetime: int) -> str:
        body = {**data, "k": kind, "exp": int(self.clock()) + lifetime, "n": secrets.token_urlsafe(12)}
        return "demo." + self._signer.sign_json(body)

    def verify(self, kind: str, token: str | None) -> dict[str, Any] | None:
        if not token or len(token) > 2048 or not token.startswith("demo."):
            return None
        try:
            data = self._signer.unsign_json(token[5:], expiry="exp", now=self.clock())
        except BadSignature:
            return None
        return data if data.get("k") == kind else None

    # ---- the grant life cycle -----------------------------------------------------------------

    def issue_code(self, persona: str, challenge: str | None) -> str:
        return self.sign("code", {"p": persona, "cc": challenge or ""}, CODE_SECONDS)

    def _tokens(self, grant_id: str, persona: str) -> dict[str, Any]:
        refresh = self.sign("rt", {"g": grant_id, "p": persona}, REFRESH_TOKEN_SECONDS)
        nonce = self.verify("rt", refresh)["n"]  # type: ignore[index]
        self._grants[grant_id] = _Grant(persona, nonce)
        return {
            "access_token": self.sign("at", {"g": grant_id, "p": persona}, ACCESS_TOKEN_SECONDS),
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TOKEN_SECONDS,
            "scope": "profile stats",
        }

    def exchange(self, code: str, verifier: str | None) -> dict[str, Any] | None:
        """Tokens for a valid, unused code whose PKCE challenge the verifier meets; else None."""
        data = self.verify("code", code)
        if data is None:
            return None
        with self._lock:
            now = self.clock()
            self._used_codes = {n: t for n, t in self._used_codes.items() if t > now}
            if data["n"] in self._used_codes:
                return None
            self._used_codes[data["n"]] = float(data["exp"])
            if data["cc"] and (not verifier or s256_challenge(verifier) != data["cc"]):
                return None
            return self._tokens(secrets.token_urlsafe(12), str(data["p"]))

    def refresh(self, refresh_token: str) -> dict[str, Any] | None:
        """Rotate: the current refresh token buys a new pair; a spent one revokes the grant."""
        data = self.verify("rt", refresh_token)
        if data is None:
            return None
        with self._lock:
            grant = self._grants.get(data["g"])
            if grant is None:  # the process restarted: trust the first token presented
                grant = self._grants[data["g"]] = _Grant(str(data["p"]), str(data["n"]))
            if grant.revoked:
                return None
            if grant.current_refresh != data["n"]:
                grant.revoked = True  # reuse of a spent refresh token: end the whole grant
                return None
            return self._tokens(str(data["g"]), grant.persona)

    def revoke(self, token: str) -> None:
        data = self.verify("rt", token) or self.verify("at", token)
        if data is None:
            return
        with self._lock:
            grant = self._grants.setdefault(data["g"], _Grant(str(data["p"]), ""))
            grant.revoked = True

    def profile(self, access_token: str | None) -> dict[str, Any] | None:
        data = self.verify("at", access_token)
        if data is None:
            return None
        with self._lock:
            grant = self._grants.get(data["g"])
            if grant is not None and grant.revoked:
                return None
        persona = PERSONAS.get(str(data["p"]))
        if persona is None:
            return None
        drift = int(self.clock() // 60)
        return {
            "id": f"demo-{persona.key}",
            "name": persona.name,
            "username": persona.username,
            "avatar_url": f"/demo/avatar/{persona.key}.svg",
            "followers_count": persona.followers + drift % 37,
            "following_count": persona.following + drift % 5,
            "posts_count": persona.posts + drift % 11,
        }

    def client_ok(self, form: dict[str, str]) -> bool:
        return form.get("client_id") == DEMO_CLIENT_ID and constant_time_equal(
            form.get("client_secret", ""), self.client_secret
        )


# ---- HTTP -----------------------------------------------------------------------------------------


def _provider(request: Request) -> DemoProvider:
    provider: DemoProvider = request.app.state.demo_provider
    return provider


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers={"Cache-Control": "no-store"}
    )


def _consent_error(request: Request, text: str) -> Response:
    from web_callback.pages import TEMPLATES, page_headers

    return TEMPLATES.TemplateResponse(
        request, "message.html", {"title": "Demo platform", "text": text}, status_code=400, headers=page_headers()
    )


async def authorize(request: Request) -> Response:
    """The consent page. Anything but our own client and redirect URI is refused on the spot."""
    from web_callback.pages import TEMPLATES, page_headers

    provider = _provider(request)
    q = request.query_params
    if q.get("client_id") != DEMO_CLIENT_ID or q.get("redirect_uri") != provider.redirect_uri:
        return _consent_error(request, "Unknown application or redirect address.")
    if q.get("response_type") != "code" or not q.get("state"):
        return _consent_error(request, "This sign-in request is incomplete.")
    if q.get("code_challenge") and q.get("code_challenge_method") != "S256":
        return _consent_error(request, "Only S256 PKCE challenges are supported.")
    ticket = provider.sign(
        "consent", {"s": q["state"][:2048], "cc": q.get("code_challenge", "")[:128]}, CONSENT_SECONDS
    )
    return TEMPLATES.TemplateResponse(
        request,
        "demo_consent.html",
        {"ticket": ticket, "personas": list(PERSONAS.values()), "scopes": q.get("scope", "").split()},
        headers=page_headers(),
    )


async def decide(request: Request) -> Response:
    """Allow or Deny: back to our callback with a code or ``error=access_denied``."""
    provider = _provider(request)
    form = await read_form(request, max_fields=10)
    if form is None:
        return _consent_error(request, "The form was too large.")
    ticket = provider.verify("consent", str(form.get("ticket") or ""))
    if ticket is None:
        return _consent_error(request, "This consent page expired; please start connecting again.")
    params: dict[str, str] = {"state": ticket["s"]}
    persona = str(form.get("persona") or "")
    if form.get("decision") == "allow" and persona in PERSONAS:
        params["code"] = provider.issue_code(persona, ticket["cc"] or None)
    else:
        params.update(error="access_denied", error_description="The user denied the request.")
    return RedirectResponse(f"{provider.redirect_uri}?{urlencode(params)}", status_code=303)


async def token(request: Request) -> Response:
    provider = _provider(request)
    posted = await read_form(request, max_fields=20)
    if posted is None:
        return _oauth_error(413, "invalid_request", "the request body is too large")
    form = {k: str(v) for k, v in posted.items()}
    if not provider.client_ok(form):
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        if form.get("redirect_uri") != provider.redirect_uri:
            return _oauth_error(400, "invalid_grant", "redirect_uri does not match")
        tokens = provider.exchange(form.get("code", ""), form.get("code_verifier"))
    elif grant_type == "refresh_token":
        tokens = provider.refresh(form.get("refresh_token", ""))
    else:
        return _oauth_error(400, "unsupported_grant_type", "use authorization_code or refresh_token")
    if tokens is None:
        return _oauth_error(400, "invalid_grant", "the code or refresh token is invalid, used or revoked")
    return JSONResponse(tokens, headers={"Cache-Control": "no-store"})


async def me(request: Request) -> Response:
    auth = request.headers.get("authorization", "")
    offered = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    profile = _provider(request).profile(offered)
    if profile is None:
        return JSONResponse(
            {"error": "invalid_token", "error_description": "missing, expired or revoked access token"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return JSONResponse(profile)


async def revoke(request: Request) -> Response:
    provider = _provider(request)
    posted = await read_form(request, max_fields=10)
    if posted is None:
        return _oauth_error(413, "invalid_request", "the request body is too large")
    form = {k: str(v) for k, v in posted.items()}
    if not provider.client_ok(form):
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    provider.revoke(form.get("token", ""))
    return Response(status_code=200)


async def avatar(request: Request) -> Response:
    persona = PERSONAS.get(str(request.path_params["persona"]))
    if persona is None:
        return Response(status_code=404)
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96">'
        f'<rect width="96" height="96" rx="48" fill="{persona.colour}"/>'
        '<text x="48" y="60" font-family="sans-serif" font-size="40" font-weight="700" fill="#fff" '
        f'text-anchor="middle">{persona.name[:1]}</text></svg>'
    )
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=3600"})


def routes() -> list[BaseRoute]:
    """The provider's routes, to mount at ``/demo`` (the app needs ``state.demo_provider``)."""
    return [
        Route("/authorize", authorize, methods=["GET"]),
        Route("/authorize", decide, methods=["POST"]),
        Route("/token", token, methods=["POST"]),
        Route("/api/me", me, methods=["GET"]),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/avatar/{persona}.svg", avatar, methods=["GET"]),
    ]


def install(app: Any, settings: Settings) -> None:
    """Mount the provider on ``app`` (a Starlette app from ``create_app``) at ``/demo``."""
    from starlette.routing import Mount

    app.state.demo_provider = DemoProvider(settings)
    app.router.routes.insert(0, Mount("/demo", routes=routes()))
