"""One exception tree for the whole service.

Every layer catches at the level it can act on, the way httpx's tree works::

    SocialAccountsError
    ├── NotNow                       not now, come back in ``retry_after`` seconds; nothing was sent
    │   └── CoolingDown              ... said to another module's platform request (HTTP 429)
    ├── ConfigError                  a setting is missing or malformed (one clear line at start-up)
    ├── CryptoError                  a ciphertext cannot be read
    │   ├── UnknownKeyError          ... because its key id is not in TOKEN_KEYS
    │   └── DecryptError             ... because it was tampered with or moved to another row/column
    ├── TokenBound                   the account's token works only with our DPoP key (HTTP 409):
    │                                make a platform request instead of taking the token
    ├── InputError                   the caller sent something we refuse (HTTP 400/422); changes nothing
    │   ├── UnknownPlatform
    │   ├── PlatformNotConfigured    names the env vars that are missing
    │   └── UnsafeAddress            a URL pointing into our own network (SSRF guard)
    └── PlatformError                a platform call failed; the subclass decides what happens next
        ├── RateLimited              wait ``retry_after`` seconds, then try again (not sooner)
        ├── NeedsReconnect           the grant is gone: the user must connect again; never retried
        ├── Transient                network blip or 5xx: retry with backoff
        │   ├── AccessTokenExpired   the access token expired: refresh first, then retry
        │   └── RequestMaybeSent     the request may have reached the platform; unsafe to repeat
        │                            for single-use operations (code exchange, rotating refresh)
        └── Permanent                anything else: retrying will not help
            ├── LoginFailed          wrong handle or app password (Bluesky)
            │   └── AppPasswordRequired  ... the account's main password was given (full scope)
            └── InstanceUnreachable  not a reachable Mastodon instance

What each error allows is asked of the error, never decided from its name elsewhere
(``workers.retrying`` turns it into retry, defer or give up; ``web_callback.errors`` into a status):

* ``retryable``: trying the same thing again may succeed (Transient, RateLimited, NotNow);
* ``retry_after``: seconds to wait before that, when the platform (or a cooldown) said so;
  ``None`` means "back off on your own";
* ``maybe_sent``: the request may have reached the platform (RequestMaybeSent): a single-use
  step (code exchange, rotating refresh, revocation) must then never repeat it;
* ``spends_retry``: False for NotNow, which puts work back without using a retry;
* ``error_code``: the failure code the error names itself (login_failed, ...), over the step's;
* ``step``: the worker step that raised it (set by ``workers.retrying.step``).

Messages never contain a token, code, password or secret: platform error bodies are reduced
to their error code and a short, scrubbed description before they become a message.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AccessTokenExpired",
    "AppPasswordRequired",
    "ConfigError",
    "CoolingDown",
    "CryptoError",
    "DecryptError",
    "InputError",
    "InstanceUnreachable",
    "LoginFailed",
    "NeedsReconnect",
    "NotNow",
    "Permanent",
    "PlatformError",
    "PlatformNotConfigured",
    "RateLimited",
    "RequestMaybeSent",
    "SocialAccountsError",
    "TokenBound",
    "Transient",
    "UnknownKeyError",
    "UnknownPlatform",
    "UnsafeAddress",
]


class SocialAccountsError(Exception):
    """Base of every error this service raises on purpose; by default final (not retryable)."""

    #: trying the same thing again may succeed
    retryable: ClassVar[bool] = False
    #: the request may have reached the platform (unsafe to repeat for a single-use step)
    maybe_sent: ClassVar[bool] = False
    #: a retry of this error counts against the step's budget (a NotNow does not)
    spends_retry: ClassVar[bool] = True
    #: the failure code this error names itself; None: the failing step's code
    error_code: ClassVar[str | None] = None
    #: seconds to wait before trying again, when someone said so; None: back off as the policy says
    retry_after: float | None = None
    #: the worker step that raised it (``workers.retrying.step``); None outside any step
    step: str | None = None


class NotNow(SocialAccountsError):
    """Not now, and not a failure: a cooldown, a budget or a busy lock says come back in ``seconds``.

    Raised before any request is made. The work is put back after ``retry_after`` without
    spending a retry.
    """

    retryable = True
    spends_retry = False

    def __init__(self, seconds: float, reason: str = "not now") -> None:
        super().__init__(f"{reason}: again in {seconds:.1f}s")
        self.retry_after = max(0.0, float(seconds))
        self.reason = reason

    @property
    def seconds(self) -> float:
        return self.retry_after or 0.0


class CoolingDown(NotNow):
    """A platform request made for another module (``workers.proxy``) was not sent: the platform
    or the account is cooling down, or its budget is spent. The caller is told to come back in
    ``retry_after`` seconds (HTTP 429 with ``Retry-After``) rather than queue behind us."""


class ConfigError(SocialAccountsError):
    """A setting is missing or malformed."""


class CryptoError(SocialAccountsError):
    """A stored ciphertext cannot be decrypted."""


class UnknownKeyError(CryptoError):
    """The ciphertext names a key id that TOKEN_KEYS does not hold."""


class DecryptError(CryptoError):
    """The ciphertext fails authentication (tampered, truncated, or bound to another row/column)."""


class TokenBound(SocialAccountsError):
    """The account's access token is bound to a key that never leaves the service (a Bluesky
    OAuth session's DPoP key, RFC 9449): handed out, it would be refused by the platform. The
    caller asks us to make the request instead (``workers.proxy.platform_request``)."""

    def __init__(self, platform: str) -> None:
        super().__init__(
            f"the {platform} token is bound to the service's DPoP key and cannot be used elsewhere; "
            "make the call through POST /v1/accounts/{id}/request (Python: workers.proxy.platform_request)"
        )
        self.platform = platform


class InputError(SocialAccountsError):
    """Bad input from a caller. ``code`` is a short machine-readable reason."""

    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnknownPlatform(InputError):
    code = "unknown_platform"


class PlatformNotConfigured(InputError):
    code = "platform_not_configured"

    def __init__(self, platform: str, missing: list[str]) -> None:
        self.platform = platform
        self.missing = list(missing)
        super().__init__(f"{platform} is not configured: set {', '.join(self.missing)}")


class UnsafeAddress(InputError):
    code = "unsafe_address"


class PlatformError(SocialAccountsError):
    """A call to a platform failed.

    Parameters:
      message(str): a scrubbed description, safe to log and to show.
      platform(str): the platform id.
      status(int | None): the HTTP status, when there was a response.
      code(str | None): the platform's own error code (``invalid_grant``, ``190``...).
    """

    #: the error class name used in metrics, events and ``last_error``
    kind = "platform_error"

    def __init__(
        self,
        message: str,
        *,
        platform: str = "",
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.platform = platform
        self.status = status
        self.code = code

    def __str__(self) -> str:
        where = f"{self.platform}: " if self.platform else ""
        extra = []
        if self.status is not None:
            extra.append(f"HTTP {self.status}")
        if self.code:
            extra.append(str(self.code))
        tail = f" ({', '.join(extra)})" if extra else ""
        return f"{where}{self.message}{tail}"


class RateLimited(PlatformError):
    """The platform asked us to slow down.

    ``retry_after`` is in seconds, taken from the platform's own signal. ``scope`` says whom the
    limit applies to: ``"app"`` (every account of this platform) or ``"account"`` (one user).
    """

    kind = "rate_limited"
    retryable = True
    retry_after: float

    def __init__(self, message: str, *, retry_after: float, scope: str = "account", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = max(0.0, float(retry_after))
        self.scope = scope


class NeedsReconnect(PlatformError):
    """The grant is gone (revoked, expired refresh token, invalid_grant): only the user can fix it."""

    kind = "needs_reconnect"


class Transient(PlatformError):
    """A temporary failure: network error, timeout, 5xx. Retry with backoff."""

    kind = "transient"
    retryable = True


class AccessTokenExpired(Transient):
    """The access token expired; refresh it and try again (Bluesky answers 400 ExpiredToken)."""

    kind = "access_token_expired"


class RequestMaybeSent(Transient):
    """The request may have reached the platform but no answer came back.

    Safe to retry for reads; not for single-use operations such as a code exchange.
    """

    kind = "request_maybe_sent"
    maybe_sent = True


class Permanent(PlatformError):
    """The platform refused for a reason retrying will not change."""

    kind = "permanent"


class LoginFailed(Permanent):
    """Bluesky refused the handle or app password."""

    kind = "login_failed"
    error_code = "login_failed"


class AppPasswordRequired(LoginFailed):
    """Bluesky accepted the account's main password: we refuse a session with full account scope."""

    kind = "app_password_required"
    error_code = "app_password_required"


class InstanceUnreachable(Permanent):
    """The Mastodon instance cannot be reached or is not a Mastodon server."""

    kind = "instance_unreachable"
    error_code = "instance_unreachable"
