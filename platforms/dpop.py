"""DPoP (RFC 9449) for AT Protocol OAuth: per-session keys, proofs, and the servers' nonces.

Why its own module: every request of a Bluesky OAuth session, to the authorization server and
to the PDS, must carry a fresh proof signed by the one key the session's tokens are bound to
(https://atproto.com/specs/oauth#dpop). The JOSE work is ``joserfc``'s; this module only
assembles the claims (``htm``, ``htu`` without query or fragment, ``iat``, ``jti``, ``nonce``,
``ath`` for an access token) and keeps each server's latest ``DPoP-Nonce``.

Nonces: a server may demand one (authorization server: ``400 {"error": "use_dpop_nonce"}``;
resource server: ``401`` with ``WWW-Authenticate: DPoP error="use_dpop_nonce"``) and changes it
from time to time. :func:`dpop_send` keeps the latest nonce per server origin (every answer's
``DPoP-Nonce`` header, success or not) and repeats a refused request exactly once with the new
one, as RFC 9449 sections 8 and 9 describe. A sender that builds its own ``httpx.Request``
(``workers.proxy``, through the Bluesky adapter's hooks) gets the same from :func:`sign_request`
and :func:`signed_again`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

from platforms.http import Classifier, oauth_error
from platforms.netguard import NetGuard, guarded_send
from social_accounts.errors import Permanent, PlatformError
from social_accounts.signing import b64url_encode

__all__ = [
    "NONCES",
    "NonceStore",
    "access_token_hash",
    "dpop_send",
    "export_key",
    "htu",
    "import_key",
    "make_proof",
    "new_key",
    "proof_headers",
    "sign_request",
    "signed_again",
    "wants_nonce",
]


def new_key() -> ECKey:
    """A fresh ES256 (P-256) key: one per session, never shared between sessions."""
    return ECKey.generate_key("P-256", private=True, auto_kid=True)


def export_key(key: ECKey) -> str:
    """The private JWK as JSON text (to be encrypted before it is stored anywhere)."""
    return json.dumps(key.as_dict(private=True), separators=(",", ":"))


def import_key(text: str) -> ECKey:
    """The key :func:`export_key` wrote."""
    return ECKey.import_key(json.loads(text))


def htu(url: str) -> str:
    """The ``htu`` claim: the request URL without query and fragment (RFC 9449, section 4.2)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url(SHA-256(access token)) (RFC 9449, section 4.2)."""
    return b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def make_proof(
    key: ECKey,
    method: str,
    url: str,
    *,
    nonce: str | None = None,
    access_token: str | None = None,
    now: float | None = None,
) -> str:
    """One DPoP proof JWT for ``method url`` (the public key in its header, as RFC 9449 asks)."""
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": method.upper(),
        "htu": htu(url),
        "iat": int(time.time() if now is None else now),
    }
    if nonce:
        claims["nonce"] = nonce
    if access_token:
        claims["ath"] = access_token_hash(access_token)
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    return jwt.encode(header, claims, key, algorithms=["ES256"])


class NonceStore:
    """The latest ``DPoP-Nonce`` of each server origin (thread-safe; one per process).

    Nonces are not secrets and not per session: a server hands the same one to every client
    until it rotates it, so sharing them across sessions saves a refused request per call.
    """

    def __init__(self) -> None:
        self._nonces: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def get(self, url: str) -> str | None:
        with self._lock:
            return self._nonces.get(self.origin(url))

    def put(self, url: str, nonce: str | None) -> None:
        if nonce and len(nonce) <= 512:
            with self._lock:
                self._nonces[self.origin(url)] = nonce


#: the process's nonce store
NONCES = NonceStore()


class _UseNonce(Permanent):
    """The server refused the proof for want of its current nonce (repeated once)."""


def wants_nonce(response: httpx.Response) -> bool:
    """True when the answer refuses the proof for want of the server's current nonce."""
    if response.status_code not in (400, 401):
        return False
    if "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
        return True
    error, _description = oauth_error(response)
    return error == "use_dpop_nonce"


def proof_headers(
    key: ECKey, method: str, url: str, *, access_token: str | None = None, nonces: NonceStore = NONCES
) -> dict[str, str]:
    """The ``DPoP`` proof for ``method url`` with the server's latest nonce, and
    ``Authorization: DPoP <token>`` when ``access_token`` (the proof then carries its ``ath``)."""
    headers = {"DPoP": make_proof(key, method, url, nonce=nonces.get(url), access_token=access_token)}
    if access_token:
        headers["Authorization"] = f"DPoP {access_token}"
    return headers


def sign_request(
    request: httpx.Request, key: ECKey, *, access_token: str | None = None, nonces: NonceStore = NONCES
) -> httpx.Request:
    """``request`` with :func:`proof_headers` for its own method and URL (a fresh proof each time)."""
    request.headers.update(
        proof_headers(key, request.method, str(request.url), access_token=access_token, nonces=nonces)
    )
    return request


def signed_again(
    request: httpx.Request,
    response: httpx.Response,
    key: ECKey,
    *,
    access_token: str | None = None,
    nonces: NonceStore = NONCES,
) -> httpx.Request | None:
    """After ``response`` to ``request``: keep its nonce; when it refused the proof for want of
    one, a copy of ``request`` with a new proof carrying it (send that once), else None."""
    nonces.put(str(request.url), response.headers.get("dpop-nonce"))
    if not wants_nonce(response):
        return None
    again = httpx.Request(
        request.method, request.url, headers=request.headers, content=request.content, extensions=request.extensions
    )
    return sign_request(again, key, access_token=access_token, nonces=nonces)


def dpop_send(
    http: httpx.Client,
    method: str,
    url: str,
    key: ECKey,
    *,
    guard: NetGuard,
    platform: str,
    classify: Classifier | None = None,
    access_token: str | None = None,
    nonces: NonceStore = NONCES,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """``guarded_send`` with a DPoP proof (and ``Authorization: DPoP`` when ``access_token``).

    A ``use_dpop_nonce`` refusal is repeated once with the nonce the server just sent; every
    answer's nonce is kept for the next request to that server.
    """

    def watching(response: httpx.Response) -> PlatformError | None:
        nonces.put(url, response.headers.get("dpop-nonce"))
        if wants_nonce(response):
            return _UseNonce("the server asks for a DPoP nonce", platform=platform, status=response.status_code)
        return classify(response) if classify is not None else None

    def once() -> httpx.Response:
        extra = {**(headers or {}), **proof_headers(key, method, url, access_token=access_token, nonces=nonces)}
        response = guarded_send(
            http, method, url, guard=guard, platform=platform, classify=watching, headers=extra, **kwargs
        )
        nonces.put(url, response.headers.get("dpop-nonce"))
        return response

    try:
        return once()
    except _UseNonce:
        return once()
