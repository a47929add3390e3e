"""Bluesky by AT Protocol OAuth: the client, discovery, PAR, and the DPoP-bound token grants.

The atproto profile of OAuth (https://atproto.com/specs/oauth, docs/platforms.md "Bluesky") is
strict, and this module speaks exactly it:

* **Discovery.** The account's PDS (found by ``BlueskyAdapter.resolve_identity``: handle, DID,
  DID document) names its authorization server in ``/.well-known/oauth-protected-resource``;
  that server's ``/.well-known/oauth-authorization-server`` must carry the very ``issuer`` it was
  fetched from. Every fetch goes through the SSRF guard.
* **The request.** A pushed authorization request (PAR, RFC 9126) with PKCE S256, our signed
  ``state`` and ``login_hint``; the browser then gets only ``client_id`` and ``request_uri``.
* **DPoP** on every request to the authorization server and the PDS (:mod:`platforms.dpop`),
  with one key per session; the tokens' ``sub`` must be the DID resolved at the start.
* **The client.** A confidential web client whose ``client_id`` is the URL of its metadata
  (``PUBLIC_URL/oauth/bluesky/client-metadata.json``), authenticating with ``private_key_jwt``
  (keys from ``BLUESKY_OAUTH_KEYS``, the first signs, all are in the JWKS so a rotation never
  breaks a pending assertion check). On a loopback ``PUBLIC_URL`` it is the spec's loopback
  development client instead (``http://localhost?redirect_uri=…&scope=…``, no client auth), so
  ``run`` works on a laptop.

The JOSE work is ``joserfc``'s; only the claims are assembled here.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from platforms import dpop
from platforms.http import default_timeout, json_body, oauth_error, retry_after
from platforms.netguard import NetGuard, guarded_send
from social_accounts.clock import Clock
from social_accounts.errors import (
    ConfigError,
    NeedsReconnect,
    Permanent,
    PlatformError,
    RateLimited,
)
from social_accounts.settings import Settings
from social_accounts.values import RevokeResult, TokenSet

__all__ = [
    "ASSERTION_TYPE",
    "AuthServer",
    "BlueskyOAuth",
    "ClientIdentity",
    "OAuthStart",
    "is_oauth",
    "parse_signing_keys",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: how long a client assertion is valid (the spec asks for a short life)
ASSERTION_LIFETIME = 60
#: used when a token answer names no ``expires_in``
DEFAULT_ACCESS_LIFETIME = timedelta(minutes=30)
METADATA_PATH = "/oauth/bluesky/client-metadata.json"
JWKS_PATH = "/oauth/bluesky/jwks.json"
_PLATFORM = "bluesky"
Context = Literal["resolve", "par", "exchange", "refresh", "revoke"]


def parse_signing_keys(raw: str | None) -> list[ECKey]:
    """``kid:base64url(P-256 scalar)[,…]`` into keys, first (signing) key first.

    Raises ConfigError naming the key id, never the key.
    """
    keys: list[ECKey] = []
    for item in (part.strip() for part in (raw or "").split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not kid.strip() or not encoded.strip():
            raise ConfigError("BLUESKY_OAUTH_KEYS is malformed: expected kid:base64key[,kid:base64key...]")
        kid = kid.strip()
        if any(k.kid == kid for k in keys):
            raise ConfigError(f"BLUESKY_OAUTH_KEYS names key id {kid!r} twice")
        try:
            scalar = base64.urlsafe_b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4))
            private = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
        except (binascii.Error, ValueError):
            raise ConfigError(f"BLUESKY_OAUTH_KEYS key {kid!r} is not a P-256 private key") from None
        if len(scalar) != 32:
            raise ConfigError(f"BLUESKY_OAUTH_KEYS key {kid!r} is {len(scalar)} bytes; it must be 32")
        keys.append(ECKey.import_key(private, parameters={"kid": kid, "alg": "ES256", "use": "sig"}))
    return keys


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientIdentity:
    """Who we are to the authorization server: metadata, JWKS and client authentication."""

    def __init__(self, settings: Settings) -> None:
        self.public_url = settings.public_url.rstrip("/")
        self.scope = " ".join(settings.bluesky_oauth_scope.split())
        #: the atproto loopback development client (https://atproto.com/specs/oauth#localhost-client-development)
        self.loopback = _is_loopback(self.public_url)
        redirect = urlsplit(settings.redirect_uri)
        if self.loopback and redirect.hostname == "localhost":  # the spec wants the IP literal there
            redirect = redirect._replace(netloc=redirect.netloc.replace("localhost", "127.0.0.1", 1))
        self.redirect_uri = redirect.geturl()
        self._raw_keys = settings.bluesky_oauth_keys

    @property
    def keys(self) -> list[ECKey]:
        return parse_signing_keys(self._raw_keys)

    @property
    def metadata_url(self) -> str:
        """Where the client metadata is served: the confidential client's ``client_id``."""
        return self.public_url + METADATA_PATH

    @property
    def client_id(self) -> str:
        if self.loopback:
            return "http://localhost?" + urlencode({"redirect_uri": self.redirect_uri, "scope": self.scope})
        return self.metadata_url

    def missing(self) -> list[str]:
        """What this client still needs (env var names); empty when it can start a connect."""
        if self.loopback:
            return []
        missing = [] if self._raw_keys else ["BLUESKY_OAUTH_KEYS"]
        if not self.public_url.startswith("https://"):
            missing.append("PUBLIC_URL (https)")
        return missing

    def metadata(self) -> dict[str, Any]:
        """The client metadata document served at ``client_id`` (https://atproto.com/specs/oauth#client-id-metadata-document)."""
        return {
            "client_id": self.metadata_url,
            "client_name": "social-accounts",
            "client_uri": self.public_url,
            "application_type": "web",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": self.scope,
            "redirect_uris": [self.redirect_uri],
            "dpop_bound_access_tokens": True,
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "jwks_uri": self.public_url + JWKS_PATH,
        }

    def jwks(self) -> dict[str, Any]:
        """Every configured key's public half (all of them: a rotation keeps old ones listed)."""
        return {"keys": [key.as_dict(private=False) for key in self.keys]}

    def assertion(self, issuer: str, *, now: float | None = None) -> str:
        """A ``private_key_jwt`` client assertion for ``issuer``, signed by the first key."""
        keys = self.keys
        if not keys:
            raise ConfigError("BLUESKY_OAUTH_KEYS is not set: the Bluesky OAuth client cannot authenticate")
        iat = int(time.time() if now is None else now)
        claims = {
            "iss": self.metadata_url,
            "sub": self.metadata_url,
            "aud": issuer,
            "jti": secrets.token_urlsafe(16),
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        }
        return jwt.encode({"alg": "ES256", "kid": keys[0].kid}, claims, keys[0], algorithms=["ES256"])

    def auth_fields(self, issuer: str) -> dict[str, str]:
        """The client authentication fields of a PAR, token or revocation request."""
        if self.loopback:
            return {"client_id": self.client_id}
        return {
            "client_id": self.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(issuer),
        }


@dataclass(frozen=True)
class AuthServer:
    """The endpoints of one authorization server, from its checked metadata."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    par_endpoint: str
    revocation_endpoint: str | None = None


@dataclass(frozen=True)
class OAuthStart:
    """A pushed request: where the browser goes, and the session the worker continues with
    (``session``: JSON with the DPoP key, DID, handle, PDS and issuer; store it encrypted)."""

    authorization_url: str
    session: str
    issuer: str


class BlueskyOAuth:
    """The OAuth side of the Bluesky adapter (shares its HTTP client, guard and clock)."""

    def __init__(
        self, settings: Settings, http: httpx.Client, guard: NetGuard, clock: Clock, nonces: dpop.NonceStore
    ) -> None:
        self.settings = settings
        self.http = http
        self.guard = guard
        self.clock = clock
        self.nonces = nonces
        self.client = ClientIdentity(settings)

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response, context: Context) -> PlatformError | None:
        status = response.status_code
        error, description = oauth_error(response)
        kw: dict[str, Any] = {"platform": _PLATFORM, "status": status, "code": error}
        if status == 429:
            return RateLimited("rate limited", retry_after=retry_after(response, 60.0), **kw)
        if status >= 500:
            return None
        if context == "refresh" and error in ("invalid_grant", "invalid_token", "unauthorized_client"):
            return NeedsReconnect("the Bluesky session is no longer valid", **kw)
        if context == "revoke" and error in ("invalid_grant", "invalid_token"):
            return None  # handled by the caller: already dead counts as revoked
        return Permanent(f"{context}: {description or error or 'refused'}", **kw)

    # ---- discovery --------------------------------------------------------------------------

    def _get_json(self, url: str) -> dict[str, Any]:
        response = guarded_send(
            self.http,
            "GET",
            url,
            guard=self.guard,
            platform=_PLATFORM,
            classify=lambda r: self.classify(r, "resolve"),
            headers={"Accept": "application/json"},
            timeout=default_timeout(self.settings.http_timeout_seconds),
        )
        body = json_body(response)
        if not isinstance(body, dict):
            raise Permanent(f"{urlsplit(url).path} answered without a JSON object", platform=_PLATFORM)
        return body

    def issuer_of(self, pds_url: str) -> str:
        """The authorization server the PDS names (``/.well-known/oauth-protected-resource``)."""
        body = self._get_json(pds_url.rstrip("/") + "/.well-known/oauth-protected-resource")
        servers = body.get("authorization_servers")
        if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
            raise Permanent("the PDS names no authorization server", platform=_PLATFORM)
        return servers[0].rstrip("/")

    def server(self, issuer: str) -> AuthServer:
        """The authorization server's metadata, checked: its ``issuer`` must be ``issuer``."""
        body = self._get_json(issuer.rstrip("/") + "/.well-known/oauth-authorization-server")
        if body.get("issuer") != issuer:
            raise Permanent("the authorization server's metadata names another issuer", platform=_PLATFORM)
        fields = {}
        for name in ("authorization_endpoint", "token_endpoint", "pushed_authorization_request_endpoint"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise Permanent(f"the authorization server's metadata lacks {name}", platform=_PLATFORM)
            fields[name] = value
        revocation = body.get("revocation_endpoint")
        return AuthServer(
            issuer=issuer,
            authorization_endpoint=fields["authorization_endpoint"],
            token_endpoint=fields["token_endpoint"],
            par_endpoint=fields["pushed_authorization_request_endpoint"],
            revocation_endpoint=revocation if isinstance(revocation, str) and revocation else None,
        )

    # ---- requests to the authorization server -----------------------------------------------

    def _post(self, url: str, key: ECKey, data: dict[str, str], context: Context) -> dict[str, Any]:
        response = dpop.dpop_send(
            self.http,
            "POST",
            url,
            key,
            guard=self.guard,
            platform=_PLATFORM,
            classify=lambda r: self.classify(r, context),
            nonces=self.nonces,
            data=data,
            headers={"Accept": "application/json"},
            timeout=default_timeout(self.settings.http_timeout_seconds),
        )
        body = json_body(response)
        return body if isinstance(body, dict) else {}

    def start(
        self, *, did: str, handle: str, pds_url: str, server: AuthServer, state: str, code_challenge: str
    ) -> OAuthStart:
        """Push the authorization request (PAR) with a fresh session key; where the browser goes."""
        key = dpop.new_key()
        form = {
            **self.client.auth_fields(server.issuer),
            "response_type": "code",
            "redirect_uri": self.client.redirect_uri,
            "scope": self.client.scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "login_hint": handle,
        }
        body = self._post(server.par_endpoint, key, form, "par")
        request_uri = body.get("request_uri")
        if not isinstance(request_uri, str) or not request_uri:
            raise Permanent("the authorization server answered the PAR without a request_uri", platform=_PLATFORM)
        query = urlencode({"client_id": self.client.client_id, "request_uri": request_uri})
        session = {"jwk": key.as_dict(private=True), "did": did, "handle": handle, "pds_url": pds_url}
        session["issuer"] = server.issuer
        return OAuthStart(f"{server.authorization_endpoint}?{query}", json.dumps(session), server.issuer)

    def _token_set(self, body: dict[str, Any], did: str, key_json: str, metadata: dict[str, Any]) -> TokenSet:
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if not isinstance(access, str) or not access:
            raise Permanent("the token answer carried no access token", platform=_PLATFORM)
        if str(body.get("token_type", "")).lower() != "dpop":
            raise Permanent("the token answer is not DPoP-bound", platform=_PLATFORM)
        if body.get("sub") != did:
            raise Permanent("the token belongs to another account than the one resolved", platform=_PLATFORM)
        scope = body.get("scope")
        scopes = tuple(scope.split()) if isinstance(scope, str) else ()
        if "atproto" not in scopes:
            raise Permanent("the token lacks the atproto scope", platform=_PLATFORM)
        expires_in = body.get("expires_in")
        now = self.clock()
        lifetime = (
            timedelta(seconds=expires_in)
            if isinstance(expires_in, int) and not isinstance(expires_in, bool) and expires_in > 0
            else DEFAULT_ACCESS_LIFETIME
        )
        return TokenSet(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=now + lifetime,
            scopes=scopes,
            metadata=metadata,
            dpop_key=key_json,
        )

    def exchange(self, *, code: str, code_verifier: str | None, session: str) -> TokenSet:
        """The code for tokens, with the session's DPoP key and the PKCE verifier."""
        facts = json.loads(session)
        key = ECKey.import_key(facts["jwk"])
        issuer, did = facts["issuer"], facts["did"]
        server = self.server(issuer)
        form = {
            **self.client.auth_fields(issuer),
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.client.redirect_uri,
            "code_verifier": code_verifier or "",
        }
        body = self._post(server.token_endpoint, key, form, "exchange")
        metadata = {
            "auth": "oauth",
            "did": did,
            "handle": facts.get("handle"),
            "pds_url": facts["pds_url"],
            "pds_resolved_at": self.clock().isoformat(),
            "issuer": issuer,
        }
        return self._token_set(body, did, dpop.export_key(key), metadata)

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """The refresh grant with the session's key: a rotated pair, merged over ``tokens``."""
        did, issuer = str(tokens.metadata.get("did")), str(tokens.metadata.get("issuer"))
        if not tokens.refresh_token or not tokens.dpop_key:
            raise NeedsReconnect("no refresh token or DPoP key is stored for this session", platform=_PLATFORM)
        key = dpop.import_key(tokens.dpop_key)
        server = self.server(issuer)
        form = {**self.client.auth_fields(issuer), "grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        body = self._post(server.token_endpoint, key, form, "refresh")
        return tokens.merged_with(self._token_set(body, did, tokens.dpop_key, dict(tokens.metadata)))

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """Revoke the refresh token (and with it the session) at the revocation endpoint."""
        token = tokens.refresh_token or tokens.access_token
        if not token or not tokens.dpop_key:
            return "none"
        server = self.server(str(tokens.metadata.get("issuer")))
        if server.revocation_endpoint is None:
            return "none"
        key = dpop.import_key(tokens.dpop_key)
        form = {**self.client.auth_fields(server.issuer), "token": token}
        try:
            self._post(server.revocation_endpoint, key, form, "revoke")
        except Permanent as exc:
            if exc.code not in ("invalid_grant", "invalid_token"):
                raise
        return "revoked"

    # ---- requests to the PDS ----------------------------------------------------------------

    def pds_send(self, method: str, url: str, tokens: TokenSet, classify: Any, **kwargs: Any) -> httpx.Response:
        """A resource request with ``Authorization: DPoP <token>`` and a proof carrying ``ath``."""
        return dpop.dpop_send(
            self.http,
            method,
            url,
            self._key(tokens),
            guard=self.guard,
            platform=_PLATFORM,
            classify=classify,
            access_token=tokens.access_token,
            nonces=self.nonces,
            **kwargs,
        )

    def _key(self, tokens: TokenSet) -> ECKey:
        if not tokens.dpop_key:
            raise NeedsReconnect("no DPoP key is stored for this session", platform=_PLATFORM)
        return dpop.import_key(tokens.dpop_key)

    def authorize(self, request: httpx.Request, tokens: TokenSet) -> httpx.Request:
        """A request built elsewhere (``workers.proxy``), signed as :meth:`pds_send` signs: a
        proof for its method and URL with ``ath`` and the PDS's latest nonce, and
        ``Authorization: DPoP <token>``."""
        return dpop.sign_request(request, self._key(tokens), access_token=tokens.access_token, nonces=self.nonces)

    def authorize_again(
        self, request: httpx.Request, response: httpx.Response, tokens: TokenSet
    ) -> httpx.Request | None:
        """The answer's nonce kept; a ``use_dpop_nonce`` refusal gives the request re-signed with it."""
        return dpop.signed_again(
            request, response, self._key(tokens), access_token=tokens.access_token, nonces=self.nonces
        )


def is_oauth(tokens: TokenSet) -> bool:
    """True for a session made by OAuth (the app-password path leaves no ``auth`` mark)."""
    return tokens.metadata.get("auth") == "oauth"
