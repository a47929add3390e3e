"""The one small interface every platform adapter implements.

An adapter is the only place that knows its platform's quirks. It speaks HTTP through an
injected ``httpx.Client`` (tests pass one whose transport reaches the fake platform server), reads
the time from an injected clock, and raises only the errors of ``social_accounts.errors``.
It never touches the database or the broker: callers persist what it returns.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Literal

import httpx

from social_accounts.clock import Clock, utcnow
from social_accounts.errors import Permanent, PlatformError
from social_accounts.settings import Settings
from social_accounts.values import AccountProfile, RefreshModel, RevokeResult, Stats, TokenSet

__all__ = [
    "PlatformAdapter",
    "RateHint",
    "RateSignalSink",
    "engagement_rate",
    "no_rate_signals",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateHint:
    """A successful answer's warning that the next calls would be refused.

    ``scope``: ``"app"`` (every account of the platform) or ``"account"`` (the account whose
    token made the call).
    """

    seconds: float
    scope: Literal["app", "account"]


#: ``(platform, seconds, scope, account hint)``: where an adapter reports a :class:`RateHint`.
#: The workers wire it to the shared cooldowns; the account hint is None when no account is
#: known yet (a connect), and an account-scoped hint without one is then dropped by the sink.
RateSignalSink = Callable[[str, float, str, str | None], None]


def no_rate_signals(platform: str, seconds: float, scope: str, account: str | None) -> None:
    """The default sink: nobody listens (adapter tests, the web app)."""


def engagement_rate(engagements: int | None, posts: int | None, followers: int | None) -> float | None:
    """Average engagements per post as a share of followers (0.034 is 3.4 %); None when unknowable.

    Only computed from totals a platform gives in one profile read (TikTok's ``likes_count``
    over ``video_count``): per-post reads would cost a call per post on every sync. No posts
    or no followers leaves the rate unknown rather than 0, which would read as "nobody engages".
    """
    if engagements is None or not posts or not followers or engagements < 0 or posts < 0 or followers < 0:
        return None
    return round(engagements / posts / followers, 6)


class PlatformAdapter(ABC):
    """Base class of the ten adapters.

    Class attributes describe the platform; instances hold its settings, HTTP client and clock.
    """

    #: platform id from the contract (``facebook``, ``twitter``...)
    platform: ClassVar[str]
    #: ``oauth2`` (redirect flow), ``app_password`` (Bluesky)
    auth_type: ClassVar[str] = "oauth2"
    #: how tokens of this platform stay valid (per account it may differ: see AccountProfile)
    refresh_model: ClassVar[RefreshModel] = "none"
    #: refresh this long before expiry (capped at half the token's lifetime by the caller)
    refresh_margin: ClassVar[timedelta] = timedelta(minutes=10)
    #: the access token's documented lifetime, assumed when a token answer carries no
    #: ``expires_in`` (docs/platforms.md); None where a token really never expires (Mastodon)
    default_lifetime: ClassVar[timedelta | None] = None
    #: env vars that must be set for this platform to be usable
    required_env: ClassVar[tuple[str, ...]] = ()
    #: API path prefixes other modules may call through ``workers.proxy.platform_request``,
    #: relative to :meth:`request_base` and matched segment by segment
    #: (``platforms.apipath.path_allowed``). Empty: no requests for other modules.
    #: Token, OAuth and session endpoints are never on it.
    api_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings, http: httpx.Client, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.http = http
        self.clock = clock
        #: where :meth:`report_rate_hint` sends proactive rate-limit signals (workers inject one)
        self.rate_signals: RateSignalSink = no_rate_signals

    # ---- configuration ----------------------------------------------------------------------

    def missing_env(self) -> list[str]:
        """The required env vars that are not set (empty list: configured)."""
        return [name for name in self.required_env if not getattr(self.settings, name.lower(), None)]

    @property
    def configured(self) -> bool:
        return not self.missing_env()

    def endpoint(self, kind: str, default: str) -> str:
        """The ``P_<KIND>`` override from settings, else the platform's real endpoint."""
        return self.settings.endpoint(self.platform, kind) or default

    # ---- the connect flow -------------------------------------------------------------------

    @abstractmethod
    def authorization_url(
        self, *, state: str, redirect_uri: str, code_challenge: str | None, instance: str | None = None
    ) -> str:
        """The URL the user's browser is sent to. ``code_challenge`` is the S256 PKCE challenge."""

    @abstractmethod
    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str | None, instance: str | None = None
    ) -> TokenSet:
        """Exchange an authorization code (plus any follow-up exchange) for a token set.

        Raises ``RequestMaybeSent`` when the request may have reached the platform without an
        answer: codes are single-use, so the caller must not try again.
        """

    @abstractmethod
    def fetch_accounts(self, tokens: TokenSet) -> list[AccountProfile]:
        """Every account this token gives access to (one for most platforms)."""

    # ---- keeping it alive -------------------------------------------------------------------

    @abstractmethod
    def fetch_stats(self, platform_account_id: str, tokens: TokenSet) -> Stats:
        """Current counts for one account."""

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """Return a fresh token set following the platform's own model.

        The result is already merged with ``tokens`` (a response without a refresh token keeps
        the old one), so the caller persists it as is, before anything else uses it.
        """
        raise Permanent("this platform has nothing to refresh", platform=self.platform)

    def revoke(self, tokens: TokenSet) -> RevokeResult:
        """Revoke the grant at the platform where it has an endpoint; ``none`` where it has not."""
        return "none"

    # ---- requests made for other modules (workers.proxy) ------------------------------------

    def request_base(self, tokens: TokenSet) -> str:
        """The API base a relative path of :attr:`api_prefixes` is joined to, for this account."""
        raise Permanent("this platform takes no requests for other modules", platform=self.platform)

    def request_url(self, path: str, tokens: TokenSet) -> str:
        """The URL of a checked relative ``path`` (``platforms.apipath.check_relative_path``)."""
        return self.request_base(tokens).rstrip("/") + path

    def check_request_url(self, url: str) -> None:
        """Refuse a URL before it is requested; platforms on user-chosen hosts run their SSRF guard."""
        return None

    def authorize_request(self, request: httpx.Request, tokens: TokenSet) -> httpx.Request:
        """Put the account's credentials on ``request`` the platform's way (default: Bearer).

        The hook for other authentication schemes: a DPoP-bound token signs a proof of this
        very method and URL here, per request.
        """
        request.headers["Authorization"] = f"Bearer {tokens.access_token}"
        return request

    def retry_authorization(
        self, request: httpx.Request, response: httpx.Response, tokens: TokenSet
    ) -> httpx.Request | None:
        """A second try the authentication scheme itself asks for (a DPoP server's fresh
        ``DPoP-Nonce``), or None (the default: no scheme here asks for one)."""
        return None

    def read_failure(self, response: httpx.Response) -> PlatformError | None:
        """The platform's reading of a failed answer (rate limit, dead grant...); None: no opinion."""
        return None

    def token_rejected(self, response: httpx.Response) -> bool:
        """True when the answer says the access token is expired or invalid: refresh once, retry once."""
        return response.status_code == 401

    # ---- proactive rate limits --------------------------------------------------------------

    def rate_hint(self, response: httpx.Response) -> RateHint | None:
        """What a *successful* answer says about the next calls; None: go on (the default)."""
        return None

    def report_rate_hint(self, response: httpx.Response, account: str | None) -> RateHint | None:
        """Read ``response`` with :meth:`rate_hint` and hand a signal to :attr:`rate_signals`."""
        hint = self.rate_hint(response)
        if hint is not None and hint.seconds > 0:
            self.rate_signals(self.platform, hint.seconds, hint.scope, account)
        return hint

    # ---- helpers ----------------------------------------------------------------------------

    def expiry(self, expires_in: object) -> datetime | None:
        """When a token answered with ``expires_in`` expires; without one, after :attr:`default_lifetime`.

        An answer that leaves out its lifetime must not turn a token that expires into one that
        never does: the account would never be refreshed again and die silently. The platform's
        documented lifetime is assumed instead (logged, without the token).
        """
        at = self.expires_at(expires_in)
        if at is None and self.default_lifetime is not None:
            log.warning(
                "token answer carried no expires_in; assuming the documented lifetime",
                extra={"platform": self.platform, "lifetime_seconds": int(self.default_lifetime.total_seconds())},
            )
            at = self.clock() + self.default_lifetime
        return at

    def expires_at(self, expires_in: object) -> datetime | None:
        """Server-supplied ``expires_in`` seconds as an aware UTC time (None when absent)."""
        try:
            seconds = int(float(str(expires_in)))
        except (TypeError, ValueError):
            return None
        if seconds <= 0:
            return None
        return self.clock() + timedelta(seconds=seconds)
