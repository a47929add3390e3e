"""Mastodon: OAuth 2.0 against whichever instance the user names (docs/platforms.md, "Mastodon").

What is particular here:

* There is no global app: we register one per instance (``POST /api/v1/apps``) the first time a
  user of that instance connects, and reuse it afterwards. The adapter does not touch the
  database; it is given a :class:`MastodonAppStore` (attribute ``app_store``, or the
  ``app_store=`` constructor keyword). The default is a fresh :class:`InMemoryMastodonAppStore`,
  which is right for tests and a single process only: the worker/web code must inject the
  DB-backed store (built on ``models.repository.find_mastodon_app/save_mastodon_app``), because
  the app that issued a code is needed again to exchange and to revoke it.
* The instance is user input, so every request goes through :mod:`platforms.netguard` (https
  only, public addresses only, redirects checked hop by hop) unless ``ALLOW_PRIVATE_NETWORK``.
* PKCE S256 and the ``profile`` scope exist since 4.3; older servers answer 404 at
  ``/.well-known/oauth-authorization-server``. The metadata decides both, and the scopes chosen at
  registration are stored with the app and sent unchanged in every authorization URL (an
  authorization may only ask for a subset of the registered scopes).
* Tokens never expire and there is no refresh grant (``refresh_model`` ``none``), so a 401 means
  the token was revoked: ``NeedsReconnect``.
* Account ids are local to an instance: ``platform_account_id`` is ``"<id>@<host>"``, the handle
  ``"@<username>@<host>"``. The instance base URL travels in ``TokenSet.metadata["instance"]``.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol
from urllib.parse import urlencode, urlsplit

import httpx

from platforms.base import PlatformAdapter, RateHint
from platforms.http import as_int, bearer, default_timeout, header_is_zero, json_body, oauth_error, retry_after
from platforms.netguard import NetGuard, Resolver, guarded_send, is_public_address, system_resolver
from platforms.oauth2 import RECONNECT_ERRORS
from social_accounts.clock import Clock, utcnow
from social_accounts.errors import (
    InputError,
    InstanceUnreachable,
    NeedsReconnect,
    Permanent,
    PlatformError,
    RateLimited,
    UnsafeAddress,
)
from social_accounts.settings import Settings
from social_accounts.values import AccountProfile, RefreshModel, RevokeResult, Stats, TokenSet

__all__ = [
    "InMemoryMastodonAppStore",
    "MastodonAdapter",
    "MastodonApp",
    "MastodonAppStore",
    "normalise_instance",
]

#: longest instance value accepted from a user (a host name is at most 253 characters)
MAX_INSTANCE_LENGTH = 300
#: the name our app is registered under at each instance
CLIENT_NAME = "social-accounts"
#: what we publish with; the account scope is negotiated (``profile`` on 4.3+, else ``read:accounts``)
WRITE_SCOPES = ("write:statuses", "write:media")
#: Mastodon's default window (300 requests / 5 minutes), used when a 429 names no reset time
WINDOW_SECONDS = 300.0

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class MastodonApp:
    """Our registered client at one instance. ``instance`` is the base URL (``https://host``)."""

    instance: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...]
    redirect_uri: str


class MastodonAppStore(Protocol):
    """Where registered apps are kept, one per instance base URL.

    ``put`` stores ``app`` unless an app for the same instance *and* redirect URI is already
    stored (another process registered first): then it returns that one, the winner, which the
    caller uses. An app stored for a different redirect URI (``PUBLIC_URL`` changed) is replaced.
    """

    def get(self, instance: str) -> MastodonApp | None: ...

    def put(self, app: MastodonApp) -> MastodonApp: ...


class InMemoryMastodonAppStore:
    """A :class:`MastodonAppStore` in a dict: tests and one-process use."""

    def __init__(self) -> None:
        self._apps: dict[str, MastodonApp] = {}
        self._lock = threading.Lock()

    def get(self, instance: str) -> MastodonApp | None:
        with self._lock:
            return self._apps.get(instance)

    def put(self, app: MastodonApp) -> MastodonApp:
        with self._lock:
            current = self._apps.get(app.instance)
            if current is not None and current.redirect_uri == app.redirect_uri:
                return current
            self._apps[app.instance] = app
            return app


def normalise_instance(value: str, *, allow_private: bool = False) -> str:
    """The base URL ``https://host[:port]`` of what a user typed as their instance.

    Accepts ``mastodon.social``, ``https://Mastodon.Social/about``, ``@user@mastodon.social`` and
    ``user@mastodon.social`` (the part after the last ``@`` is the instance). Only ``https``
    unless ``allow_private`` (then ``http`` too). This is the syntactic half of the check: it
    refuses IP literals outside the public internet but does not resolve names; every request
    goes through :class:`~platforms.netguard.NetGuard`, which does.

    Raises:
      InputError: empty, oversized or malformed.
      UnsafeAddress: a scheme other than https, user-info in a URL, or a non-public IP literal.
    """
    if not isinstance(value, str):
        raise InputError("the instance must be a string", code="invalid_instance")
    text = value.strip()
    if not text:
        raise InputError("the instance is empty", code="invalid_instance")
    if len(text) > MAX_INSTANCE_LENGTH:
        raise InputError("the instance is too long", code="invalid_instance")
    if "://" not in text:
        if "@" in text:  # an account address: @user@host or user@host
            user, _, text = text.lstrip("@").rpartition("@")
            if not user or not text:
                raise InputError("not an instance or account address", code="invalid_instance")
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InputError("not a valid instance URL", code="invalid_instance") from None
    scheme = parts.scheme.lower()
    if scheme not in (("https", "http") if allow_private else ("https",)):
        raise UnsafeAddress("the instance must be an https URL")
    if "@" in parts.netloc:
        raise UnsafeAddress("URLs with user information are not allowed")
    host = _normalise_host(parts.hostname or "", allow_private=allow_private)
    default_port = 443 if scheme == "https" else 80
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return f"{scheme}://{netloc}"


def _normalise_host(raw: str, *, allow_private: bool) -> str:
    host = raw.rstrip(".").lower()
    if not host:
        raise InputError("the instance has no host", code="invalid_instance")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None:
        if not allow_private and not is_public_address(str(addr)):
            raise UnsafeAddress("the instance address is not on the public internet")
        return f"[{addr.compressed}]" if addr.version == 6 else addr.compressed
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InputError("not a valid host name", code="invalid_instance") from None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise InputError("not a valid host name", code="invalid_instance")
    return ascii_host


def _host_of(instance: str) -> str:
    return urlsplit(instance).netloc


class MastodonAdapter(PlatformAdapter):
    """One adapter for every instance; the instance comes with each call (see module docstring).

    Parameters:
      app_store(MastodonAppStore): registered apps (default: a new in-memory store).
      resolver(Resolver): name resolution for the SSRF guard (tests inject one).
    """

    platform = "mastodon"
    auth_type = "oauth2"
    refresh_model: ClassVar[RefreshModel] = "none"
    required_env: ClassVar[tuple[str, ...]] = ()
    #: the REST API of the account's instance; never ``/oauth/...``
    api_prefixes: ClassVar[tuple[str, ...]] = ("/api/v1", "/api/v2")

    def __init__(
        self,
        settings: Settings,
        http: httpx.Client,
        clock: Clock = utcnow,
        *,
        app_store: MastodonAppStore | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        super().__init__(settings, http, clock)
        self.app_store: MastodonAppStore = app_store if app_store is not None else InMemoryMastodonAppStore()
        self.guard = NetGuard(
            allow_private=settings.allow_private_network,
            resolver=resolver or system_resolver,
            platform=self.platform,
        )

    # ---- the instance -----------------------------------------------------------------------

    def instance_url(self, value: str) -> str:
        """Normalise a user's instance and check it with the guard (resolving the name)."""
        base = normalise_instance(value, allow_private=self.settings.allow_private_network)
        try:
            self.guard.check_url(base)
        except UnsafeAddress:
            raise
        except PlatformError:
            raise InstanceUnreachable("the instance's host name does not resolve", platform=self.platform) from None
        return base

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", default_timeout(self.settings.http_timeout_seconds))
        kwargs.setdefault("classify", self.classify)
        return guarded_send(self.http, method, url, guard=self.guard, platform=self.platform, **kwargs)

    def _discovery(self, method: str, url: str, **kwargs: Any) -> Any:
        """A call made while finding out whether a host is a Mastodon server.

        Anything but a rate limit or an unsafe address means "not a (reachable) Mastodon".
        """
        try:
            response = self._call(method, url, **kwargs)
        except (RateLimited, UnsafeAddress):
            raise
        except PlatformError as exc:
            raise InstanceUnreachable(
                "the instance is not a reachable Mastodon server", platform=self.platform, status=exc.status
            ) from None
        return json_body(response)

    def check_instance(self, base: str) -> dict[str, Any]:
        """``GET /api/v1/instance``: the host must answer as a Mastodon server does."""
        body = self._discovery("GET", base + "/api/v1/instance")
        if not isinstance(body, dict) or not isinstance(body.get("version"), str) or not body.get("uri"):
            raise InstanceUnreachable("the host does not answer like a Mastodon server", platform=self.platform)
        return body

    def server_metadata(self, base: str) -> dict[str, Any]:
        """RFC 8414 metadata (4.3+); ``{}`` when the server is older and answers 404.

        Other failures raise (never a silent downgrade): PKCE must be decided the same way at
        authorization and at exchange, or the exchange fails.
        """
        try:
            response = self._call(
                "GET",
                base + "/.well-known/oauth-authorization-server",
                classify=lambda r: (
                    Permanent("no metadata", platform=self.platform, status=404) if r.status_code == 404 else None
                ),
            )
        except Permanent as exc:
            if exc.status == 404:
                return {}
            raise
        body = json_body(response)
        return body if isinstance(body, dict) else {}

    @staticmethod
    def supports_pkce(metadata: dict[str, Any]) -> bool:
        methods = metadata.get("code_challenge_methods_supported")
        return isinstance(methods, list) and "S256" in methods

    @staticmethod
    def negotiated_scopes(metadata: dict[str, Any]) -> tuple[str, ...]:
        supported = metadata.get("scopes_supported")
        account = "profile" if isinstance(supported, list) and "profile" in supported else "read:accounts"
        return (account, *WRITE_SCOPES)

    # ---- app registration -------------------------------------------------------------------

    def ensure_app(self, instance: str, redirect_uri: str) -> MastodonApp:
        """Our app at ``instance``: the stored one, or registered now and stored.

        Raises:
          UnsafeAddress / InputError: the instance is refused.
          InstanceUnreachable: the host does not answer, or not like Mastodon.
          RateLimited: the instance asked us to slow down.
        """
        base = self.instance_url(instance)
        stored = self.app_store.get(base)
        if stored is not None and stored.redirect_uri == redirect_uri:
            return stored
        self.check_instance(base)
        scopes = self.negotiated_scopes(self._metadata_or_unreachable(base))
        body = self._discovery(
            "POST",
            base + "/api/v1/apps",
            data={
                "client_name": CLIENT_NAME,
                "redirect_uris": redirect_uri,
                "scopes": " ".join(scopes),
                "website": self.settings.public_url,
            },
        )
        if not isinstance(body, dict) or not body.get("client_id") or not body.get("client_secret"):
            raise InstanceUnreachable("the instance did not register our app", platform=self.platform)
        app = MastodonApp(
            instance=base,
            client_id=str(body["client_id"]),
            client_secret=str(body["client_secret"]),
            scopes=scopes,
            redirect_uri=redirect_uri,
        )
        return self.app_store.put(app)

    def _metadata_or_unreachable(self, base: str) -> dict[str, Any]:
        try:
            return self.server_metadata(base)
        except (RateLimited, UnsafeAddress):
            raise
        except PlatformError:
            raise InstanceUnreachable("the instance's OAuth metadata cannot be read", platform=self.platform) from None

    def _stored_app(self, base: str) -> MastodonApp:
        app = self.app_store.get(base)
        if app is None:
            raise Permanent("no app is registered for this instance", platform=self.platform)
        return app

    # ---- reading failures -------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> PlatformError | None:
        status = response.status_code
        if status == 429:
            return RateLimited(
                "rate limited",
                retry_after=self._retry_after(response),
                platform=self.platform,
                status=429,
            )
        if status == 401:
            return NeedsReconnect("the access token was revoked", platform=self.platform, status=401)
        error, description = oauth_error(response)
        if error in RECONNECT_ERRORS:
            return NeedsReconnect(
                description or "the authorization is no longer valid",
                platform=self.platform,
                status=status,
                code=error,
            )
        return None

    # ---- requests for other modules -----------------------------------------------------

    def request_base(self, tokens: TokenSet) -> str:
        """The account's own instance (checked by the SSRF guard again)."""
        return self._instance_of(tokens)

    def check_request_url(self, url: str) -> None:
        self.guard.check_url(url)

    def read_failure(self, response: httpx.Response) -> PlatformError | None:
        return self.classify(response)

    def _retry_after(self, response: httpx.Response) -> float:
        """``X-RateLimit-Reset`` is an ISO 8601 time; else ``Retry-After``; else the 5-minute window."""
        reset = response.headers.get("x-ratelimit-reset", "").strip()
        if reset:
            try:
                when = datetime.fromisoformat(reset.replace("Z", "+00:00"))
            except ValueError:
                when = None
            if when is not None and when.tzinfo is not None:
                return max(0.0, (when - self.clock()).total_seconds())
        return retry_after(response, WINDOW_SECONDS)

    def rate_hint(self, response: httpx.Response) -> RateHint | None:
        """``X-RateLimit-Remaining: 0`` on a success: this account's window is spent until the reset."""
        if not header_is_zero(response, "x-ratelimit-remaining"):
            return None
        return RateHint(self._retry_after(response), "account")

    # ---- the flow ---------------------------------------------------------------------------

    def _instance_arg(self, instance: str | None) -> str:
        if not instance:
            raise InputError("mastodon needs the instance", code="instance_required")
        return self.instance_url(instance)

    def authorization_url(
        self, *, state: str, redirect_uri: str, code_challenge: str | None, instance: str | None = None
    ) -> str:
        """Registers the app at the instance if needed (network calls), then builds the URL."""
        base = self._instance_arg(instance)
        app = self.ensure_app(base, redirect_uri)
        params = {
            "response_type": "code",
            "client_id": app.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(app.scopes),
            "state": state,
        }
        if code_challenge and self.supports_pkce(self._metadata_or_unreachable(base)):
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        return base + "/oauth/authorize?" + urlencode(params)

    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str | None, instance: str | None = None
    ) -> TokenSet:
        """``POST /oauth/token`` (client_secret_post). The verifier is sent exactly when the
        authorization URL carried a challenge: both follow the server's metadata."""
        base = self._instance_arg(instance)
        app = self._stored_app(base)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": app.client_id,
            "client_secret": app.client_secret,
        }
        if code_verifier and self.supports_pkce(self.server_metadata(base)):
            form["code_verifier"] = code_verifier
        response = self._call("POST", base + "/oauth/token", data=form, headers={"Accept": "application/json"})
        body = json_body(response)
        access = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access:
            raise Permanent("token response carried no access token", platform=self.platform)
        scope = body.get("scope") if isinstance(body, dict) else None
        scopes = tuple(str(scope).split()) if isinstance(scope, str) else app.scopes
        return TokenSet(access_token=access, scopes=scopes, metadata={"instance": base})

    def _instance_of(self, tokens: TokenSet) -> str:
        instance = tokens.metadata.get("instance")
        if not isinstance(instance, str) or not instance:
            raise Permanent("the token does not say which instance it belongs to", platform=self.platform)
        return self.instance_url(instance)

    def _me(self, tokens: TokenSet) -> tuple[str, dict[str, Any]]:
        base = self._instance_of(tokens)
        response = self._call(
            "GET",
            base + "/api/v1/accounts/verify_credentials",
            headers=bearer(tokens.access_token),
        )
        body = json_body(response)
        if not isinstance(body, dict) or body.get("id") in (None, "") or not body.get("username"):
            raise Permanent("verify_credentials answered without an account", platform=self.platform)
        return base, body

    @staticmethod
    def _stats(account: dict[str, Any]) -> Stats:
        return Stats(
            followers=as_int(account.get("followers_count")),
            following=as_int(account.get("following_count")),
            posts=as_int(account.get("statuses_count")),
        )

    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        base, account = self._me(tokens)
        host = _host_of(base)
        return [
            AccountProfile(
                platform_account_id=f"{account['id']}@{host}",
                name=account.get("display_name") or account.get("username") or None,
                handle=f"@{account['username']}@{host}",
                avatar_url=account.get("avatar") or None,
                tokens=tokens,
                stats=self._stats(account),
                refresh_model="none",
            )
        ]

    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        base, account = self._me(tokens)
        if f"{account['id']}@{_host_of(base)}" != platform_account_id:
            raise Permanent("the token belongs to another Mastodon account", platform=self.platform)
        return self._stats(account)

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """``POST /oauth/revoke`` with our app's credentials; ``none`` when the app is unknown."""
        base = self._instance_of(tokens)
        app = self.app_store.get(base)
        if app is None:
            return "none"
        self._call(
            "POST",
            base + "/oauth/revoke",
            data={"client_id": app.client_id, "client_secret": app.client_secret, "token": tokens.access_token},
        )
        return "revoked"
