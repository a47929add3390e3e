"""Who may use the accounts page: the API token once, then a signed session cookie; CSRF tokens.

Why this shape:

* The page is for the people who run the dashboard, who already hold ``API_TOKEN``. They type it
  once into a small form; from then on a cookie proves it. No user table; the only server-side
  state is what ``web_callback.signin`` keeps (wrong tokens per address, signed-out sessions).
* The cookie is ``base64url(json {exp, sid}) "." base64url(hmac)``, signed with a key derived
  from ``STATE_SECRET`` *and* a hash of ``API_TOKEN``: rotating either ends every session. It is
  ``HttpOnly`` (scripts cannot read it), ``SameSite=Lax`` (sent on the top-level navigation back
  from a platform's consent screen, never on cross-site POSTs) and expires after
  ``SESSION_SECONDS`` (both in ``Max-Age`` and inside the signed value, so an old cookie replayed
  by hand is refused too).
* ``Secure`` follows ``PUBLIC_URL``: with ``https://`` the cookie is ``Secure`` and named with the
  ``__Host-`` prefix (browsers then refuse it over http, from a subdomain, or with another path).
  On a plain ``http://127.0.0.1`` development URL a ``Secure`` cookie would never come back, so it
  is sent without ``Secure`` there; use https everywhere else.
* Every POST form carries a CSRF token: ``hmac(key, "csrf|" + sid)``, bound to the session, checked
  in constant time. The login form itself has one too, bound to a short-lived pre-login cookie
  (double submit), so another site cannot post a token into the form on the user's behalf.
* Signing out deletes the cookie and records its session id as ended on the server
  (``web_callback.signin``) until the session would have expired, so a copied cookie stops
  working at once; ``SESSION_SECONDS`` stays hours, not weeks, all the same.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from social_accounts.settings import Settings
from social_accounts.signing import BadSignature, Signer, constant_time_equal, derive_key

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_SECONDS",
    "Session",
    "SessionSigner",
    "cookie_name",
    "is_secure",
]

#: how long a session lasts after the token was typed
SESSION_SECONDS = 12 * 3600
#: how long the login form stays usable
LOGIN_SECONDS = 30 * 60
LOGIN_COOKIE = "sa_login"
_MAX_COOKIE = 512


def is_secure(settings: Settings) -> bool:
    """Cookies are ``Secure`` exactly when the service is reached over https."""
    return settings.public_url.lower().startswith("https://")


def cookie_name(settings: Settings) -> str:
    return "__Host-sa_session" if is_secure(settings) else "sa_session"


def login_cookie_name(settings: Settings) -> str:
    return f"__Host-{LOGIN_COOKIE}" if is_secure(settings) else LOGIN_COOKIE


@dataclass(frozen=True)
class Session:
    """A verified session: its id (random, only used to bind CSRF tokens) and its expiry."""

    sid: str
    expires_at: int


class SessionSigner:
    """Signs and checks session cookies and CSRF tokens for one set of settings."""

    def __init__(self, settings: Settings) -> None:
        settings.require("API_TOKEN", "STATE_SECRET")
        assert settings.api_token is not None and settings.state_secret is not None
        token_hash = hashlib.sha256(settings.api_token.encode("utf-8")).digest()
        key = derive_key(settings.state_secret, b"sa-page-session-v1|" + token_hash)
        #: one key, one signer per purpose: a value signed for one is refused by the others
        self._session = Signer(key, b"session|")
        self._login = Signer(key, b"login|")
        self._csrf = Signer(key, b"csrf|")
        self._login_form = Signer(key, b"login-form|")
        self._api_token = settings.api_token
        self.settings = settings

    # ---- the token ----------------------------------------------------------------------------

    def token_matches(self, offered: str) -> bool:
        """Constant-time comparison of a typed token with ``API_TOKEN``."""
        return constant_time_equal(offered.strip(), self._api_token)

    # ---- signed values --------------------------------------------------------------------------

    @staticmethod
    def _verify(signer: Signer, value: str | None, now: float) -> dict[str, object] | None:
        if not value or len(value) > _MAX_COOKIE:
            return None
        try:
            return signer.unsign_json(value, expiry="exp", now=now)
        except BadSignature:
            return None

    # ---- sessions -----------------------------------------------------------------------------

    def new_session(self, now: float | None = None) -> tuple[str, Session]:
        """A fresh cookie value and the session it stands for."""
        session = Session(sid=secrets.token_urlsafe(16), expires_at=int(now or time.time()) + SESSION_SECONDS)
        return self._session.sign_json({"sid": session.sid, "exp": session.expires_at}), session

    def read_session(self, request: Request, now: float | None = None) -> Session | None:
        data = self._verify(self._session, request.cookies.get(cookie_name(self.settings)), now or time.time())
        if data is None or not isinstance(data.get("sid"), str):
            return None
        return Session(sid=str(data["sid"]), expires_at=int(str(data["exp"])))

    def set_session_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            cookie_name(self.settings),
            value,
            max_age=SESSION_SECONDS,
            path="/",
            secure=is_secure(self.settings),
            httponly=True,
            samesite="lax",
        )

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(
            cookie_name(self.settings), path="/", secure=is_secure(self.settings), httponly=True, samesite="lax"
        )

    # ---- CSRF ---------------------------------------------------------------------------------

    def csrf_token(self, session: Session) -> str:
        return self._csrf.mac(session.sid)

    def csrf_ok(self, session: Session, offered: str | None) -> bool:
        return self._csrf.mac_matches(session.sid, offered)

    # ---- the login form's own CSRF (double submit before any session exists) ------------------

    def login_pair(self, request: Request, now: float | None = None) -> tuple[str, str]:
        """``(cookie value, form token)``: the existing pre-login cookie is reused while valid."""
        current = now or time.time()
        data = self._verify(self._login, request.cookies.get(login_cookie_name(self.settings)), current)
        if data is not None and isinstance(data.get("n"), str):
            cookie = request.cookies[login_cookie_name(self.settings)]
            nonce = str(data["n"])
        else:
            nonce = secrets.token_urlsafe(16)
            cookie = self._login.sign_json({"n": nonce, "exp": int(current) + LOGIN_SECONDS})
        return cookie, self._login_form.mac(nonce)

    def login_ok(self, request: Request, offered: str | None, now: float | None = None) -> bool:
        data = self._verify(self._login, request.cookies.get(login_cookie_name(self.settings)), now or time.time())
        if data is None or not isinstance(data.get("n"), str) or not offered:
            return False
        return self._login_form.mac_matches(str(data["n"]), offered)

    def set_login_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            login_cookie_name(self.settings),
            value,
            max_age=LOGIN_SECONDS,
            path="/",
            secure=is_secure(self.settings),
            httponly=True,
            samesite="strict",
        )

    def clear_login_cookie(self, response: Response) -> None:
        response.delete_cookie(
            login_cookie_name(self.settings),
            path="/",
            secure=is_secure(self.settings),
            httponly=True,
            samesite="strict",
        )
