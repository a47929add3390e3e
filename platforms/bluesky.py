"""Bluesky / AT Protocol: an app-password session at the user's own PDS (docs/platforms.md, "Bluesky").

What is particular here:

* No redirect flow: ``login(handle, app_password)`` resolves the handle to a DID the way the
  handle spec says (https://atproto.com/specs/handle#handle-resolution): DNS TXT
  ``_atproto.<handle>`` and ``https://<handle>/.well-known/atproto-did``, both at once (the
  HTTPS one through the SSRF guard); only when neither answers, ``resolveHandle`` at the
  configured service. It reads the DID document (PLC directory for ``did:plc``,
  ``https://<host>/.well-known/did.json`` for ``did:web``), checks that its ``alsoKnownAs``
  names the handle (bidirectional verification: anyone can point a DNS name at any DID), takes
  the PDS from its ``#atproto_pds`` service and calls ``createSession`` there, once.
  createSession is limited to 30 per 5 minutes per account, so the session is kept and
  refreshed afterwards; the app password is never stored, logged or put into an error.
* App passwords only: a session opened with the account's main password has the full scope
  ``com.atproto.access`` (it could delete the account). Its access JWT's ``scope`` is read and
  anything but ``com.atproto.appPass`` / ``com.atproto.appPassPrivileged`` is deleted at the PDS
  at once (``deleteSession``) and refused with ``AppPasswordRequired``
  (https://docs.bsky.app/docs/api/com-atproto-server-create-app-password).
* ``refreshSession`` answers ``active`` and ``status``: a ``takendown``, ``suspended`` or
  ``deactivated`` account is ``NeedsReconnect`` with that status as the reason
  (https://docs.bsky.app/docs/api/com-atproto-server-refresh-session).
* Accounts move between PDSes (https://atproto.com/guides/account-migration). The PDS is looked
  up again from the DID document once a day (``pds_resolved_at`` in the token metadata) and
  whenever the PDS answers that the account is not (or no longer active) there: an inactive
  ``refreshSession`` answer, or the errors in :data:`MOVED_ERRORS`. When the document then
  names another PDS, the call is repeated there once and the new PDS is stored.
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
import contextvars
import json
import logging
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote

import dns.exception
import dns.resolver
import httpx
from atproto_core.did_doc import DidDocument

from platforms import dpop
from platforms.base import PlatformAdapter, RateHint
from platforms.bluesky_oauth import BlueskyOAuth, OAuthStart, is_oauth
from platforms.http import bearer, default_timeout, header_is_zero, json_body, oauth_error, retry_after, scrub
from platforms.netguard import NetGuard, Resolver, guarded_send, system_resolver
from social_accounts.clock import Clock, utcnow
from social_accounts.errors import (
    AccessTokenExpired,
    AppPasswordRequired,
    LoginFailed,
    NeedsReconnect,
    Permanent,
    PlatformError,
    RateLimited,
    RequestMaybeSent,
    SocialAccountsError,
    Transient,
)
from social_accounts.settings import Settings
from social_accounts.signing import b64url_decode
from social_accounts.values import AccountProfile, RefreshModel, RevokeResult, Stats, TokenSet

__all__ = ["BlueskyAdapter", "TxtLookup", "dns_txt", "jwt_expiry", "parse_handle"]

log = logging.getLogger(__name__)

#: documented lifetimes, used only when a JWT carries no readable ``exp``
ACCESS_LIFETIME = timedelta(minutes=120)
REFRESH_LIFETIME = timedelta(days=90)
#: used when a 429 names neither RateLimit-Reset nor Retry-After
DEFAULT_RETRY_AFTER = 60.0
#: XRPC errors meaning "this server cannot answer that" (no AppView behind the PDS)
NO_APPVIEW_ERRORS = frozenset({"UpstreamFailure", "MethodNotImplemented", "XRPCNotSupported", "NotImplemented"})
#: the access JWT scopes of app-password sessions; the main password gives ``com.atproto.access``
APP_PASSWORD_SCOPES = frozenset({"com.atproto.appPass", "com.atproto.appPassPrivileged"})
#: XRPC errors meaning "this account is not (active) here": look the PDS up again
MOVED_ERRORS = frozenset({"AccountNotFound", "RepoNotFound", "AccountDeactivated", "RepoDeactivated"})
#: how long a PDS looked up in the DID document is trusted before it is looked up again
PDS_RECHECK = timedelta(days=1)
#: the most a ``/.well-known/atproto-did`` answer may hold (a DID is far shorter)
WELL_KNOWN_MAX = 2048

#: ``txt(name) -> the TXT strings published at name`` (raises dns.exception.DNSException)
TxtLookup = Callable[[str], Iterable[str]]

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


def _is_did(value: object) -> bool:
    return isinstance(value, str) and bool(_DID_PLC.match(value) or _DID_WEB.match(value))


def dns_txt(name: str, timeout: float = 5.0) -> list[str]:
    """The TXT strings at ``name`` from the system's DNS resolver (dnspython)."""
    answer = dns.resolver.Resolver().resolve(name, "TXT", lifetime=timeout)
    return [b"".join(record.strings).decode("ascii", "replace") for record in answer]


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
    #: XRPC methods at the account's PDS: the Bluesky app's (``app.bsky.*``, proxied by the PDS
    #: to its AppView), repository writes and reads, handle resolution and blob reads; never
    #: ``com.atproto.server.*`` (sessions, app passwords, account deletion)
    api_prefixes: ClassVar[tuple[str, ...]] = (
        "/xrpc/app.bsky.*",
        "/xrpc/com.atproto.repo.*",
        "/xrpc/com.atproto.identity.resolveHandle",
        "/xrpc/com.atproto.sync.get*",
    )

    def __init__(
        self,
        settings: Settings,
        http: httpx.Client,
        clock: Clock = utcnow,
        *,
        resolver: Resolver | None = None,
        txt: TxtLookup | None = None,
    ) -> None:
        super().__init__(settings, http, clock)
        #: checks the service, PLC, did:web and PDS URLs (``resolver``: tests map names to addresses)
        self.guard = NetGuard(
            allow_private=settings.allow_private_network, resolver=resolver or system_resolver, platform=self.platform
        )
        #: DNS TXT lookups for handles (``txt``: tests answer from a table, with no network)
        self.txt: TxtLookup = txt or (lambda name: dns_txt(name, settings.http_timeout_seconds))
        #: the AT Protocol OAuth side: sessions whose token metadata says ``auth: oauth``
        self.oauth = BlueskyOAuth(settings, http, self.guard, clock, dpop.NONCES)

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
            if error == "AccountTakedown":
                return NeedsReconnect("the Bluesky account is takendown", **kw)
            return NeedsReconnect("the Bluesky session is no longer valid", **kw)
        if error == "ExpiredToken" or error == "InvalidToken" or status == 401:
            return AccessTokenExpired("access token rejected; refresh first", **kw)
        return None

    # ---- requests for other modules -----------------------------------------------------

    def request_base(self, tokens: TokenSet) -> str:
        """The account's own PDS (from its session's metadata)."""
        return self._where(tokens)[1]

    def check_request_url(self, url: str) -> None:
        self.guard.check_url(url)

    def authorize_request(self, request: httpx.Request, tokens: TokenSet) -> httpx.Request:
        """An OAuth session: ``Authorization: DPoP <token>`` with a proof signed for this method
        and URL (``ath``, the PDS's nonce), as every call of ours (https://atproto.com/specs/oauth).
        An app-password session: its access JWT as a Bearer token. A session that is neither (its
        scopes are known and are not an app password's) is refused before anything is sent.
        """
        if is_oauth(tokens):
            return self.oauth.authorize(request, tokens)
        if tokens.scopes and not set(tokens.scopes) & APP_PASSWORD_SCOPES:
            raise Permanent("this Bluesky session is neither an app password's nor OAuth's", platform=self.platform)
        return super().authorize_request(request, tokens)

    def retry_authorization(
        self, request: httpx.Request, response: httpx.Response, tokens: TokenSet
    ) -> httpx.Request | None:
        """An OAuth session: the PDS's ``DPoP-Nonce`` is kept, and a ``use_dpop_nonce`` refusal
        is answered once with a proof carrying the new nonce (RFC 9449, section 9)."""
        return self.oauth.authorize_again(request, response, tokens) if is_oauth(tokens) else None

    def read_failure(self, response: httpx.Response) -> PlatformError | None:
        return self.classify(response, "api")

    def token_rejected(self, response: httpx.Response) -> bool:
        """``ExpiredToken``/``InvalidToken`` (a PDS answers 400, not 401) or a 401; a DPoP nonce
        demand is not (a new token would not help)."""
        return not dpop.wants_nonce(response) and isinstance(self.classify(response, "api"), AccessTokenExpired)

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
        token: str | TokenSet | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        url = base.rstrip("/") + "/xrpc/" + nsid
        timeout = default_timeout(self.settings.http_timeout_seconds)
        if isinstance(token, TokenSet) and is_oauth(token):  # DPoP-bound (platforms.bluesky_oauth)
            response = self.oauth.pds_send(
                method,
                url,
                token,
                lambda r: self.classify(r, context),
                headers=headers,
                timeout=timeout,
                **kwargs,
            )
        else:
            if isinstance(token, TokenSet):
                token = token.access_token
            if token:
                headers.update(bearer(token))
            response = guarded_send(
                self.http,
                method,
                url,
                guard=self.guard,
                platform=self.platform,
                classify=lambda r: self.classify(r, context),
                headers=headers,
                timeout=timeout,
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

    def _did_from_dns(self, handle: str) -> str | None:
        """The DID of a ``did=`` TXT record at ``_atproto.<handle>``; None when there is no single one."""
        try:
            records = list(self.txt("_atproto." + handle))
        except (dns.exception.DNSException, OSError, UnicodeError):
            return None
        dids = {r[len("did=") :].strip() for r in records if r.startswith("did=")}
        # several different DIDs: the spec says resolution fails (atproto.com/specs/handle)
        return dids.pop() if len(dids) == 1 and _is_did(next(iter(dids))) else None

    def _did_from_well_known(self, handle: str) -> str | None:
        """The DID at ``https://<handle>/.well-known/atproto-did`` (through the guard); None on any failure."""
        try:
            response = guarded_send(
                self.http,
                "GET",
                f"https://{handle}/.well-known/atproto-did",
                guard=self.guard,
                platform=self.platform,
                classify=lambda r: self.classify(r, "resolve"),
                timeout=default_timeout(self.settings.http_timeout_seconds),
            )
        except SocialAccountsError:  # unreachable, refused, unsafe address: the method gave no DID
            return None
        text = response.content[:WELL_KNOWN_MAX].decode("ascii", "replace").strip()
        return text if len(response.content) <= WELL_KNOWN_MAX and _is_did(text) else None

    def resolve_handle(self, handle: str) -> str:
        """Handle → DID: DNS TXT and HTTPS well-known at once, ``resolveHandle`` as the fallback.

        A DID is returned as is. Raises LoginFailed when the two methods name different DIDs.
        """
        if handle.startswith("did:"):
            return handle
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="atproto-handle") as pool:
            # each lookup in its own copy of our context (platforms.http keeps its observer there)
            by_dns = pool.submit(contextvars.copy_context().run, self._did_from_dns, handle)
            by_https = pool.submit(contextvars.copy_context().run, self._did_from_well_known, handle)
            found = {did for did in (by_dns.result(), by_https.result()) if did}
        if len(found) > 1:
            raise LoginFailed("the handle's DNS and HTTPS records name different accounts", platform=self.platform)
        if found:
            return found.pop()
        body = self._xrpc(
            "GET",
            self.settings.bluesky_service_url,
            "com.atproto.identity.resolveHandle",
            context="resolve",
            params={"handle": handle},
        )
        did = body.get("did")
        if not _is_did(did):
            raise LoginFailed("the handle did not resolve to a DID", platform=self.platform)
        return str(did)

    def did_document(self, did: str) -> DidDocument:
        """The DID document (PLC directory or did:web), checked to be the document of ``did``."""
        if did.startswith("did:plc:"):
            url = self.settings.bluesky_plc_url.rstrip("/") + "/" + quote(did, safe=":")
        else:
            url = _did_web_url(did)
        raw = self._get_json(url)
        try:
            doc = DidDocument.from_dict(raw)
        except Exception:  # the SDK raises pydantic/its own errors for malformed documents
            doc = None
        if doc is None or doc.id != did:
            raise LoginFailed("the account's DID document is not valid", platform=self.platform)
        return doc

    def _pds_of(self, doc: DidDocument) -> str:
        try:
            endpoint = doc.get_pds_endpoint()
        except Exception:  # as above
            endpoint = None
        if not endpoint:
            raise LoginFailed("the account's DID document names no PDS", platform=self.platform)
        return endpoint.rstrip("/")

    def resolve_pds(self, did: str) -> str:
        """DID → its PDS base URL, from the DID document."""
        return self._pds_of(self.did_document(did))

    def resolve_identity(self, identifier: str) -> tuple[str, str]:
        """Handle or DID → ``(did, pds_url)``, with the handle verified both ways."""
        did = self.resolve_handle(identifier)
        doc = self.did_document(did)
        if not identifier.startswith("did:"):
            names = {str(aka).lower() for aka in (doc.also_known_as or [])}
            if "at://" + identifier not in names:
                raise LoginFailed(
                    "the account's DID document does not confirm the handle (alsoKnownAs)", platform=self.platform
                )
        return did, self._pds_of(doc)

    def _stamp(self, metadata: dict[str, Any], pds_url: str) -> dict[str, Any]:
        return {**metadata, "pds_url": pds_url, "pds_resolved_at": self.clock().isoformat()}

    def _recheck_due(self, metadata: dict[str, Any]) -> bool:
        try:
            when = datetime.fromisoformat(str(metadata.get("pds_resolved_at")))
        except ValueError:
            return True
        if when.tzinfo is None:
            return True
        return self.clock() - when >= PDS_RECHECK

    def _lookup_pds(self, did: str) -> str | None:
        """The PDS the DID document names now; None when it cannot be read (keep the one we know)."""
        try:
            return self.resolve_pds(did)
        except SocialAccountsError as exc:  # unreachable, invalid or unsafe
            log.info("bluesky: could not look up the PDS of %s again (%s)", did, type(exc).__name__)
            return None

    def _moved_to(self, did: str, pds_url: str) -> str | None:
        """The account's PDS now, when it is not ``pds_url`` (None: not moved, or unknown)."""
        current = self._lookup_pds(did)
        return current if current is not None and current != pds_url.rstrip("/") else None

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
          AppPasswordRequired: the account's main password was given (its session is deleted).
          LoginFailed: unknown or unverified handle, no PDS, or a refused password.
          RateLimited / Transient / UnsafeAddress: as the names say.
        """
        if not app_password:
            raise LoginFailed("the app password is empty", platform=self.platform)
        identifier = parse_handle(handle)
        did, pds_url = self.resolve_identity(identifier)
        body = self._xrpc(
            "POST",
            pds_url,
            "com.atproto.server.createSession",
            context="login",
            json={"identifier": did, "password": app_password},
        )
        tokens = self._session_tokens(body, self._stamp({"did": did, "handle": identifier}, pds_url))
        if not set(tokens.scopes) & APP_PASSWORD_SCOPES:
            self._delete_session(pds_url, tokens.refresh_token)
            raise AppPasswordRequired(
                "this is the account's main password; create an app password in Bluesky "
                "(Settings, Privacy and security, App passwords) and connect with it",
                platform=self.platform,
                code=scrub(tokens.scopes[0] if tokens.scopes else "no scope", 60),
            )
        if body.get("did") != did:
            raise LoginFailed("the PDS answered for another account", platform=self.platform)
        if body.get("active") is False:
            raise LoginFailed(f"the account is {self._status(body)}", platform=self.platform)
        return tokens

    @staticmethod
    def _status(body: dict[str, Any]) -> str:
        """The account status of a session answer (``takendown``, ``suspended``, ``deactivated``...)."""
        return scrub(body.get("status") or "inactive", 30)

    def _delete_session(self, pds_url: str, refresh_token: str | None) -> bool:
        """``deleteSession`` with the refresh JWT; True when the session is gone (or was already)."""
        if not refresh_token:
            return False
        try:
            guarded_send(
                self.http,
                "POST",
                pds_url.rstrip("/") + "/xrpc/com.atproto.server.deleteSession",
                guard=self.guard,
                platform=self.platform,
                classify=lambda r: self.classify(r, "refresh"),
                headers=bearer(refresh_token),
                timeout=default_timeout(self.settings.http_timeout_seconds),
            )
        except NeedsReconnect:  # already dead: as good as deleted
            return True
        except SocialAccountsError as exc:
            log.warning("bluesky: deleteSession failed (%s); the session expires on its own", type(exc).__name__)
            return False
        return True

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

        Once a day, and when the PDS says the account is inactive or unknown there, the PDS is
        looked up again in the DID document; a moved account is refreshed at its new PDS.

        Raises:
          NeedsReconnect: the session is gone, or the account is taken down, suspended or
            deactivated (the platform's status is the message and the code).
        """
        if is_oauth(tokens):
            return self.oauth.refresh(tokens)
        did, pds_url = self._where(tokens)
        if not tokens.refresh_token:
            raise NeedsReconnect("no refresh token is stored for this session", platform=self.platform)
        metadata = dict(tokens.metadata)
        if self._recheck_due(metadata):
            current = self._lookup_pds(did)
            if current is not None:
                pds_url, metadata = current, self._stamp(metadata, current)
        refresh_token = tokens.refresh_token
        try:
            body = self._refresh_at(pds_url, refresh_token, did)
        except NeedsReconnect as exc:
            moved = self._moved_to(did, pds_url) if exc.code in MOVED_ERRORS else None
            if moved is None:
                raise
            pds_url, metadata = moved, self._stamp(metadata, moved)
            body = self._refresh_at(pds_url, refresh_token, did)
        if body.get("active") is False:
            moved = self._moved_to(did, pds_url)
            if moved is not None:
                rotated = body.get("refreshJwt")  # the old PDS may have rotated already
                pds_url, metadata = moved, self._stamp(metadata, moved)
                body = self._refresh_at(pds_url, rotated if isinstance(rotated, str) else refresh_token, did)
            if body.get("active") is False:
                status = self._status(body)
                raise NeedsReconnect(f"the Bluesky account is {status}", platform=self.platform, code=status)
        return tokens.merged_with(self._session_tokens(body, metadata))

    def _refresh_at(self, pds_url: str, refresh_token: str, did: str) -> dict[str, Any]:
        body = self._xrpc("POST", pds_url, "com.atproto.server.refreshSession", context="refresh", token=refresh_token)
        if body.get("did") not in (None, did):
            raise NeedsReconnect("the PDS refreshed a session of another account", platform=self.platform)
        return body

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """``deleteSession`` with the refresh JWT (an OAuth session: the authorization server's
        revocation endpoint). A session that is already dead counts as revoked."""
        if is_oauth(tokens):
            return self.oauth.revoke(tokens)
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

    # ---- the connect flow: OAuth (platforms.bluesky_oauth); authorization_url is not used -----

    def start_oauth(self, handle: str, *, sign_state: Callable[[str], str], code_challenge: str) -> OAuthStart:
        """Discovery and the pushed request: handle, DID, PDS, its authorization server (issuer
        checked), then PAR. ``sign_state(issuer)`` makes the state, so the callback can check
        ``iss`` without the database.

        Raises LoginFailed (unknown handle), Permanent (no usable authorization server),
        UnsafeAddress, Transient.
        """
        identifier = parse_handle(handle)
        did, pds_url = self.resolve_identity(identifier)
        issuer = self.oauth.issuer_of(pds_url)
        server = self.oauth.server(issuer)
        return self.oauth.start(
            did=did,
            handle=identifier,
            pds_url=pds_url,
            server=server,
            state=sign_state(server.issuer),
            code_challenge=code_challenge,
        )

    def exchange_oauth_code(self, *, code: str, code_verifier: str | None, session: str) -> TokenSet:
        """The OAuth callback's code for a DPoP-bound session (``session``: what the start stored)."""
        return self.oauth.exchange(code=code, code_verifier=code_verifier, session=session)

    def authorization_url(
        self, *, state: str, redirect_uri: str, code_challenge: str | None, instance: str | None = None
    ) -> str:
        raise Permanent("Bluesky's OAuth starts with a pushed request (start_oauth)", platform=self.platform)

    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str | None, instance: str | None = None
    ) -> TokenSet:
        raise Permanent("Bluesky connects with a handle and an app password, not a redirect", platform=self.platform)

    # ---- profile and counts -----------------------------------------------------------------

    def _at_account_pds(self, did: str, pds_url: str, call: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """``call(pds_url)``; when the PDS says the account is not there, once more at the PDS the
        DID document names now (the next refresh stores it: module docstring)."""
        try:
            return call(pds_url)
        except Permanent as exc:
            moved = self._moved_to(did, pds_url) if exc.code in MOVED_ERRORS else None
            if moved is None:
                raise
            return call(moved)

    def _profile_view(self, tokens: TokenSet, *, lenient: bool = False) -> dict[str, Any] | None:
        """``getProfile`` through the PDS; None when no AppView answers behind it.

        ``lenient`` (a connect): any server error of the AppView also gives None, because a
        connect must not fail for counts; a stats sync raises it instead and is retried.
        """
        did, pds_url = self._where(tokens)
        try:
            return self._at_account_pds(
                did,
                pds_url,
                lambda url: self._xrpc(
                    "GET",
                    url,
                    "app.bsky.actor.getProfile",
                    context="api",
                    token=tokens,
                    params={"actor": did},
                ),
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
            body = self._at_account_pds(
                did,
                pds_url,
                lambda url: self._xrpc(
                    "GET",
                    url,
                    "com.atproto.repo.getRecord",
                    context="api",
                    params={"repo": did, "collection": "app.bsky.actor.profile", "rkey": "self"},
                ),
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
