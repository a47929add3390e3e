"""Sending a request to a platform and turning failures into the error tree.

Adapters call :func:`send`; it maps transport failures (``ConnectError`` is safe to repeat, a
read timeout after the request went out is not) and the signals every platform shares (429 with
``Retry-After``, 5xx). What is left (401, 400 ``invalid_grant``, Meta code 190...) is decided by
the adapter's own ``classify`` function, because only it knows what its platform means.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta, tzinfo
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from social_accounts.errors import (
    Permanent,
    PlatformError,
    RateLimited,
    RequestMaybeSent,
    Transient,
)

__all__ = [
    "Classifier",
    "SuccessObserver",
    "as_int",
    "bearer",
    "cookieless_jar",
    "default_timeout",
    "header_is_zero",
    "json_body",
    "observe_success",
    "oauth_error",
    "parse_retry_after",
    "rate_limited",
    "retry_after",
    "scrub",
    "seconds_until_epoch",
    "seconds_until_midnight",
    "send",
]

#: An adapter's own reading of a non-2xx response; return None to fall back to the defaults.
Classifier = Callable[[httpx.Response], PlatformError | None]

#: used when a platform says "too many requests" without saying for how long
DEFAULT_RETRY_AFTER = 60.0

_TOKENISH = re.compile(r"[A-Za-z0-9._~+/=|-]{24,}")

#: ``(platform, response)`` for every 2xx answer :func:`send` returns in the observing context.
#: Successful answers carry the *proactive* rate-limit signals (X ``x-rate-limit-remaining: 0``,
#: Meta usage headers...); the workers watch them to pause before a platform answers 429.
SuccessObserver = Callable[[str, httpx.Response], None]
_success_observer: ContextVar[SuccessObserver | None] = ContextVar("success_observer", default=None)

log = logging.getLogger(__name__)


@contextmanager
def observe_success(observer: SuccessObserver) -> Iterator[None]:
    """Within the block (this thread or task only), every successful ``send`` calls ``observer``.

    A context variable rather than an argument: adapters make their calls through many helpers,
    and none of them has to know that someone is watching.
    """
    token = _success_observer.set(observer)
    try:
        yield
    finally:
        _success_observer.reset(token)


def _notify_success(platform: str, response: httpx.Response) -> None:
    observer = _success_observer.get()
    if observer is None:
        return
    try:
        observer(platform, response)
    except Exception as exc:  # a rate hint must never fail a call that succeeded
        log.warning("rate-limit observer failed: %s", type(exc).__name__)


def default_timeout(seconds: float = 10.0) -> httpx.Timeout:
    """Connect fast, read patiently: far below any lock we hold around a call."""
    return httpx.Timeout(seconds, connect=min(3.0, seconds))


def cookieless_jar() -> CookieJar:
    """A cookie jar that keeps nothing, for the client every account shares: a cookie one
    platform answer sets must never ride along on another account's call
    (https://docs.python.org/3/library/http.cookiejar.html#http.cookiejar.DefaultCookiePolicy)."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def scrub(text: object, limit: int = 200) -> str:
    """A platform's message made safe to log: long token-like runs removed, length capped."""
    cleaned = _TOKENISH.sub("<redacted>", str(text or ""))
    cleaned = " ".join(cleaned.split())
    return cleaned[:limit]


def json_body(response: httpx.Response) -> Any:
    """The JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def oauth_error(response: httpx.Response) -> tuple[str | None, str]:
    """``(error, description)`` from an RFC 6749 error body (scrubbed)."""
    body = json_body(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], scrub(body.get("error_description") or body.get("message") or "")
    return None, ""


def as_int(value: object) -> int | None:
    """A count from JSON (YouTube sends strings); None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header for ``token``: tokens travel in headers, never in URLs we log."""
    return {"Authorization": f"Bearer {token}"}


def header_is_zero(response: httpx.Response, name: str) -> bool:
    """True when header ``name`` reads ``0``: a "remaining" counter that says the window is spent.

    A successful answer can already announce that the next call will be refused (X, Mastodon,
    Bluesky all send such a counter under their own name).
    """
    return response.headers.get(name, "").strip() == "0"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def seconds_until_epoch(value: str | None, now: float | None = None) -> float | None:
    """A reset header holding Unix epoch seconds (X, Bluesky) as seconds from now."""
    if not value:
        return None
    try:
        reset = float(value.strip())
    except ValueError:
        return None
    return max(0.0, reset - (time.time() if now is None else now))


def retry_after(response: httpx.Response, default: float, *, reset_header: str | None = None) -> float:
    """How long a refused caller waits: ``reset_header`` (Unix epoch seconds) when named and readable,
    else ``Retry-After``, else the platform's ``default`` window."""
    retry = seconds_until_epoch(response.headers.get(reset_header)) if reset_header else None
    if retry is None:
        retry = parse_retry_after(response.headers.get("retry-after"))
    return default if retry is None else retry


def rate_limited(
    response: httpx.Response, *, platform: str, default: float, code: str | None = None, reset_header: str | None = None
) -> RateLimited:
    """The plain "rate limited" error of a refused answer, waiting as :func:`retry_after` reads it."""
    return RateLimited(
        "rate limited",
        retry_after=retry_after(response, default, reset_header=reset_header),
        platform=platform,
        status=response.status_code,
        code=code,
    )


def seconds_until_midnight(now: datetime, tz: tzinfo) -> float:
    """Seconds from ``now`` to the next midnight in ``tz`` (daily quotas: LinkedIn UTC, YouTube Pacific)."""
    local = now.astimezone(tz)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    # subtract in UTC: aware datetimes sharing one tzinfo subtract naively, ignoring a DST change
    return max(0.0, (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds())


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    platform: str,
    classify: Classifier | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request; return the 2xx response or raise from the error tree.

    Parameters:
      client(httpx.Client): the injected client (its transport is the test seam); the workers'
        keeps no cookies (:func:`cookieless_jar`).
      platform(str): named in every error.
      classify(Classifier): the adapter's reading of failures, tried before the defaults.
    Raises:
      Transient: connection failures (nothing was sent) and 5xx.
      RequestMaybeSent: the request went out and no answer came back.
      RateLimited: 429, with the platform's Retry-After.
      PlatformError: whatever ``classify`` decided, else Permanent.
    """
    try:
        response = client.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise Transient(f"could not connect ({type(exc).__name__})", platform=platform) from None
    except httpx.TransportError as exc:
        raise RequestMaybeSent(f"no answer ({type(exc).__name__})", platform=platform) from None
    if response.is_success:
        _notify_success(platform, response)
        return response
    if classify is not None:
        error = classify(response)
        if error is not None:
            raise error
    raise default_error(response, platform)


def default_error(response: httpx.Response, platform: str) -> PlatformError:
    """The reading shared by every platform, for what the adapter did not claim."""
    status = response.status_code
    code, description = oauth_error(response)
    if status == 429:
        return rate_limited(response, platform=platform, default=DEFAULT_RETRY_AFTER, code=code)
    if status >= 500:
        return Transient("platform error", platform=platform, status=status, code=code)
    return Permanent(description or "request refused", platform=platform, status=status, code=code)
