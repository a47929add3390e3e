"""Bluesky / AT Protocol: an app-password session at the user's own PDS (docs/platforms.md, "Bluesky").

What is particular here:

* No redirect flow: ``login(handle, app_password)`` resolves the handle to a DID on the
  configured service (``com.atproto.identity.resolveHandle``), reads the DID document (PLC
  directory for ``did:plc``, ``https://<host>/.well-known/did.json`` for ``did:web``), takes the
  PDS from its ``#atproto_pds`` service and calls ``createSession`` there, once. createSession is
  limited to 30 per 5 minutes per account, so the session is kept and refreshed afterwards; the
  app password is never stored, logged or put into an error.
* Sessions rotate: ``refreshSession`` (Bearer **refresh** JWT) returns a new pair, which the
  caller must persist before anything else uses it. Lifetimes come from the JWTs' own ``exp``.
* An expired access token is answered **400** ``ExpiredToken`` (not 401): ``AccessTokenExpired``.
  The same answer to ``refreshSession`` means the session is gone (``deleteSession`` makes the
  PDS say "Token has been revoked"): ``NeedsReconnect``.
* A PDS without an AppView (self-hosted) answers ``app.bsky.actor.getProfile`` with 502
  ``UpstreamFailure``. A connect then takes name and avatar from the repo's
  ``app.bsky.actor.profile/self`` record and leaves the counts unknown: it never fails for counts.
* The service, PLC and PDS URLs and DID documents are outside our control, so every request goes
  through :mod:`platforms.netguard` unless ``ALLOW_PRIVATE_NETWORK``.

Why raw XRPC rather than the ``atproto`` SDK client: the SDK's ``Client`` and ``IdResolver``
create their own HTTP clients (bypassing the injected ``httpx.Client``, the SSRF guard and our
error classification) and its ``login`` fetches the profile, which fails without an AppView. The
SDK is used where it genuinely helps: ``atproto_core.did_doc.DidDocument`` parses and validates
DID documents and finds the PDS endpoint.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote

import httpx
from atproto_core.did_doc import DidDocument

from platforms.base import PlatformAdapter, RateHint
from platforms.http import bearer, default_timeout, header_is_zero, json_body, oauth_error, retry_after
from platforms.netguard import NetGuard, Resolver, guarded_send, system_resolver
from social_accounts.clock import Clock, utcnow
from social_accounts.errors import (
    AccessTokenExpired,
    LoginFailed,
    NeedsReconnect,
    Permanent,
    PlatformError,
    RateLimited,
    RequestMaybeSent,
    Transient,
)
from social_accounts.settings import Settings
from social_accounts.signing import b64url_decode
from social_accounts.values import AccountProfile, RefreshModel, RevokeResult, Stats, TokenSet

__all__ = ["BlueskyAdapter", "jwt_expiry", "parse_handle"]

#: documented lifetimes, used only when a JWT carries no readable ``exp``
ACCESS_LIFETIME = timedelta(minutes=120)
REFRESH_LIFETIME = timedelta(days=90)
#: used when a 429 names neither RateLimit-Reset nor Retry-After
DEFAULT_RETRY_AFTER = 60.0
#: XRPC errors meaning "this server cannot answer that" (no AppView behind the PDS)
NO_APPVIEW_ERRORS = frozenset({"UpstreamFailure", "MethodNotImplemented", "XRPCNotSupported", "NotImplemented"})

#: atproto handle syntax (atproto.com/specs/handle)
_HANDLE = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_DID_PLC = re.compile(r"^did:plc:[a-z2-7]{24}$")
_DID_WEB = re.compile(r"^did:web:[a-zA-Z0-9._%-]+$")

Context = Literal["login", "refresh", "api", "resolve"]


def parse_handle(value: str) -> str:
    """A handle as typed (``@Alice.bsky.social``) in its canonical form, or a DID unchanged.

    Raises:
      LoginFailed: not a valid handle or DID.
    """
    text = (value or "").strip()
    if text.startswith("did:"):
        if _DID_PLC.match(text) or _DID_WEB.match(text):
            return text
        raise LoginFailed("not a valid DID", platform="bluesky")
    text = text.lstrip("@").lower()
    if len(text) > 253 or not _HANDLE.match(text):
        raise LoginFailed("not a valid Bluesky handle", platform="bluesky")
    return text


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded without verifying (we only read ``exp`` and ``scope``)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(b64url_decode(payload))
    except (IndexError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT as an aware UTC time (None when absent or unreadable)."""
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _did_web_url(did: str) -> str:
    """``did:web:example.com`` → ``https://example.com/.well-known/did.json``.

    atproto allows host-level did:web only: a raw ``:`` (a path) is refused; ``%3A`` is a port.
    """
    rest = did[len("did:web:") :]
    host = unquote(rest)
    if ":" in rest or not re.fullmatch(r"[a-zA-Z0-9.-]+(:[0-9]{1,5})?", host):
        raise LoginFailed("not a did:web this service can resolve", platform="bluesky")
    return f"https://{host}/.well-known/did.json"


class BlueskyAdapter(PlatformAdapter):
    platform = "bluesky"
    auth_type = "app_password"
    refresh_model: ClassVar[RefreshModel] = "rotate"
    required_env: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, settings: Settings, http: httpx.Client, clock: Clock = utcnow, *, resolver: Resolver | None = None
    ) -> None:
        super().__init__(settings, http, clock)
        #: checks the service, PLC, did:web and PDS URLs (``resolver``: tests map names to addresses)
        self.guard = NetGuard(
            allow_private=settings.allow_private_network, resolver=resolver or system_resolver, platform=self.platform
        )

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response, context: Context) -> PlatformError | None:
        """One reading of XRPC errors; ``context`` says which call failed (see module docstring)."""
        status = response.status_code
        error, _description = oauth_error(response)  # XRPC bodies are {"error", "message"}
        kw: dict[str, Any] = {"platform": self.platform, "status": status, "code": error}
        if status == 429:
            return RateLimited("rate limited", retry_after=self._retry_after(response), **kw)
        if status >= 500:
            return None  # Transient by default; getProfile's caller looks at NO_APPVIEW_ERRORS
        if context == "login":
            if error == "AuthFactorTokenRequired":
                return LoginFailed("this account needs an emailed sign-in code; use an app password", **kw)
            if error == "AccountTakedown":
                return LoginFailed("the account is taken down or suspended", **kw)
            return LoginFailed("Bluesky refused the handle or app password", **kw)
        if context == "resolve":
            return LoginFailed("the handle cannot be resolved", **kw)
        if context == "refresh":
            return NeedsReconnect("the Bluesky session is no longer valid", **kw)
        if error == "ExpiredToken" or error == "InvalidToken" or status == 401:
            return AccessTokenExpired("access token rejected; refresh first", **kw)
        return None

    @staticmethod
    def _retry_after(response: httpx.Response) -> float:
        """``RateLimit-Reset`` (Unix seconds), else ``Retry-After``, else a minute."""
        return retry_after(response, DEFAULT_RETRY_AFTER, reset_header="ratelimit-reset")

    def rate_hint(self, response: httpx.Response) -> RateHint | None:
        """``RateLimit-Remaining: 0`` on a success: the PDS will refuse this account until the reset."""
        if not header_is_zero(response, "ratelimit-remaining"):
            return None
        return RateHint(self._retry_after(response), "account")

    # ---- XRPC -------------------------------------------------------------------------------

    def _xrpc(
        self,
        method: str,
        base: str,
        nsid: str,
        *,
        context: Context,
        token: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if token:
            headers.update(bearer(token))
        response = guarded_send(
            self.http,
            method,
            base.rstrip("/") + "/xrpc/" + nsid,
            guard=self.guard,
            platform=self.platform,
            classify=lambda r: self.classify(r, context),
            headers=headers,
            timeout=default_timeout(self.settings.http_timeout_seconds),
            **kwargs,
        )
        body = json_body(response)
        if not isinstance(body, dict):
            raise Permanent(f"{nsid} answered without a JSON object", platform=self.platform)
        return body

    def _get_json(self, url: str) -> Any:
        response = guarded_send(
            self.http,
            "GET",
            url,
            guard=self.guard,
            platform=self.platform,
            classify=lambda r: self.classify(r, "resolve"),
            headers={"Accept": "application/json"},
            timeout=default_timeout(self.settings.http_timeout_seconds),
        )
        return json_body(response)

    # ---- identity ---------------------------------------------------------------------------

    def resolve_handle(self, handle: str) -> str:
        """Handle → DID on the configured service (a DID is returned as is)."""
        if handle.startswith("did:"):
            return handle
        body = self._xrpc(
            "GET",
            self.settings.bluesky_service_url,
            "com.atproto.identity.resolveHandle",
            context="resolve",
            params={"handle": handle},
        )
        did = body.get("did")
        if not isinstance(did, str) or not (_DID_PLC.match(did) or _DID_WEB.match(did)):
            raise LoginFailed("the handle did not resolve to a DID", platform=self.platform)
        return did

    def resolve_pds(self, did: str) -> str:
        """DID → its PDS base URL, from the DID document (PLC directory or did:web)."""
        if did.startswith("did:plc:"):
            url = self.settings.bluesky_plc_url.rstrip("/") + "/" + quote(did, safe=":")
        else:
            url = _did_web_url(did)
        raw = self._get_json(url)
        try:
            doc = DidDocument.from_dict(raw)
            endpoint = doc.get_pds_endpoint() if doc.id == did else None
        except Exception:  # the SDK raises pydantic/its own errors for malformed documents
            endpoint = None
        if not endpoint:
            raise LoginFailed("the account's DID document names no PDS", platform=self.platform)
        return endpoint.rstrip("/")

    # ---- sessions ---------------------------------------------------------------------------

    def _session_tokens(self, body: dict[str, Any], metadata: dict[str, Any]) -> TokenSet:
        access, refresh = body.get("accessJwt"), body.get("refreshJwt")
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise Permanent("the session answer carried no tokens", platform=self.platform)
        now = self.clock()
        scope = jwt_claims(access).get("scope")
        handle = body.get("handle") if isinstance(body.get("handle"), str) else metadata.get("handle")
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            expires_at=jwt_expiry(access) or now + ACCESS_LIFETIME,
            refresh_expires_at=jwt_expiry(refresh) or now + REFRESH_LIFETIME,
            scopes=(scope,) if isinstance(scope, str) else (),
            metadata={**metadata, "handle": handle},
        )

    def login(self, handle: str, app_password: str) -> TokenSet:
        """Resolve the account's PDS and open one session there with the app password.

        Raises:
          LoginFailed: unknown handle, no PDS, or a refused password.
          RateLimited / Transient / UnsafeAddress: as the names say.
        """
        if not app_password:
            raise LoginFailed("the app password is empty", platform=self.platform)
        identifier = parse_handle(handle)
        did = self.resolve_handle(identifier)
        pds_url = self.resolve_pds(did)
        body = self._xrpc(
            "POST",
            pds_url,
            "com.atproto.server.createSession",
            context="login",
            json={"identifier": did, "password": app_password},
        )
        if body.get("did") != did:
            raise LoginFailed("the PDS answered for another account", platform=self.platform)
        if body.get("active") is False:
            raise LoginFailed(f"the account is {str(body.get('status') or 'inactive')[:20]}", platform=self.platform)
        return self._session_tokens(body, {"did": did, "handle": identifier, "pds_url": pds_url})

    @staticmethod
    def _where(tokens: TokenSet) -> tuple[str, str]:
        did, pds_url = tokens.metadata.get("did"), tokens.metadata.get("pds_url")
        if not isinstance(did, str) or not isinstance(pds_url, str) or not did or not pds_url:
            raise Permanent("the session does not say which account and PDS it belongs to", platform="bluesky")
        return did, pds_url

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """``refreshSession`` with the refresh JWT: a rotated pair, merged over ``tokens``.

        A read timeout raises ``RequestMaybeSent``: the PDS may already have rotated. (Its
        2-hour grace period lets the old refresh token be used again, and it then answers the
        same new pair, so a retry within that window is safe here, unlike X.)
        """
        did, pds_url = self._where(tokens)
        if not tokens.refresh_token:
            raise NeedsReconnect("no refresh token is stored for this session", platform=self.platform)
        body = self._xrpc(
            "POST", pds_url, "com.atproto.server.refreshSession", context="refresh", token=tokens.refresh_token
        )
        if body.get("did") not in (None, did):
            raise NeedsReconnect("the PDS refreshed a session of another account", platform=self.platform)
        return tokens.merged_with(self._session_tokens(body, dict(tokens.metadata)))

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """``deleteSession`` with the refresh JWT. A session that is already dead counts as revoked."""
        _did, pds_url = self._where(tokens)
        if not tokens.refresh_token:
            return "none"
        with contextlib.suppress(NeedsReconnect):  # already dead: as good as revoked
            guarded_send(
                self.http,
                "POST",
                pds_url.rstrip("/") + "/xrpc/com.atproto.server.deleteSession",
                guard=self.guard,
                platform=self.platform,
                classify=lambda r: self.classify(r, "refresh"),
                headers=bearer(tokens.refresh_token),
                timeout=default_timeout(self.settings.http_timeout_seconds),
            )
        return "revoked"

    # ---- the connect flow (not used: Bluesky has no redirect) -------------------------------

    def authorization_url(
        self, *, state: str, redirect_uri: str, code_challenge: str | None, instance: str | None = None
    ) -> str:
        raise Permanent("Bluesky connects with a handle and an app password, not a redirect", platform=self.platform)

    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str | None, instance: str | None = None
    ) -> TokenSet:
        raise Permanent("Bluesky connects with a handle and an app password, not a redirect", platform=self.platform)

    # ---- profile and counts -----------------------------------------------------------------

    def _profile_view(self, tokens: TokenSet, *, lenient: bool = False) -> dict[str, Any] | None:
        """``getProfile`` through the PDS; None when no AppView answers behind it.

        ``lenient`` (a connect): any server error of the AppView also gives None, because a
        connect must not fail for counts; a stats sync raises it instead and is retried.
        """
        did, pds_url = self._where(tokens)
        try:
            return self._xrpc(
                "GET",
                pds_url,
                "app.bsky.actor.getProfile",
                context="api",
                token=tokens.access_token,
                params={"actor": did},
            )
        except (Transient, Permanent) as exc:
            if isinstance(exc, AccessTokenExpired | RequestMaybeSent):
                raise
            if exc.code not in NO_APPVIEW_ERRORS and not (lenient and isinstance(exc, Transient) and exc.status):
                raise
            return None

    def _profile_record(self, did: str, pds_url: str) -> dict[str, Any]:
        """The repo's ``app.bsky.actor.profile/self`` record value ({} when there is none)."""
        try:
            body = self._xrpc(
                "GET",
                pds_url,
                "com.atproto.repo.getRecord",
                context="api",
                params={"repo": did, "collection": "app.bsky.actor.profile", "rkey": "self"},
            )
        except Permanent as exc:
            if exc.status == 400 and exc.code == "RecordNotFound":
                return {}
            raise
        value = body.get("value")
        return value if isinstance(value, dict) else {}

    @staticmethod
    def _avatar_url(record: dict[str, Any], did: str, pds_url: str) -> str | None:
        avatar = record.get("avatar")
        ref = avatar.get("ref") if isinstance(avatar, dict) else None
        cid = ref.get("$link") if isinstance(ref, dict) else None
        if not isinstance(cid, str) or not cid:
            return None
        return f"{pds_url}/xrpc/com.atproto.sync.getBlob?did={quote(did, safe=':')}&cid={quote(cid)}"

    @staticmethod
    def _count(value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _stats(self, view: dict[str, Any]) -> Stats:
        return Stats(
            followers=self._count(view.get("followersCount")),
            following=self._count(view.get("followsCount")),
            posts=self._count(view.get("postsCount")),
        )

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        """The account of the session, with counts when an AppView answers (else counts None)."""
        did, pds_url = self._where(tokens)
        handle = tokens.metadata.get("handle")
        view = self._profile_view(tokens, lenient=True)
        if view is not None:
            name, avatar, stats = view.get("displayName"), view.get("avatar"), self._stats(view)
            handle = view.get("handle") or handle
        else:
            record = self._profile_record(did, pds_url)
            name, avatar, stats = record.get("displayName"), self._avatar_url(record, did, pds_url), Stats()
        return [
            AccountProfile(
                platform_account_id=did,
                name=name if isinstance(name, str) and name else None,
                handle=handle if isinstance(handle, str) and handle else None,
                avatar_url=avatar if isinstance(avatar, str) and avatar else None,
                tokens=tokens,
                stats=stats,
                refresh_model="rotate",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        """Counts from the AppView; all None when the PDS has none (not an error)."""
        did, _pds = self._where(tokens)
        if did != platform_account_id:
            raise Permanent("the session belongs to another Bluesky account", platform=self.platform)
        view = self._profile_view(tokens)
        return self._stats(view) if view is not None else Stats()
