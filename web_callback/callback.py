"""``GET /oauth/callback``: check the state, enqueue one message, send the browser back.

Why so little happens here: the user's browser is waiting, and the platform's code is only
worth something for a few minutes, so the endpoint does no database work and no platform I/O.
It verifies the signed state (``web_callback.state``), encrypts the code under the key ring
(associated data: table ``message``, column ``code``, row id = attempt id) so the broker never
holds it in clear, and enqueues ONE ``code_received`` message. The worker does the rest.

The enqueue never blocks the event loop. On Redis (production) the message goes to the loop's
``BatchEnqueuer`` (``web_callback.batching``): asynchronous, and every callback waiting at that
moment is written in one round trip, which keeps this endpoint near the speed of a bare one under
load. Other brokers get one worker thread per enqueue (``anyio.to_thread``).
If the broker does not take the message (or does not answer within ``ENQUEUE_TIMEOUT``) the answer
is ``503`` and nothing else has happened, so the user can simply retry.

The query string carries the code: it is never logged here, and ``web_callback.app`` strips
query strings from uvicorn's access log.

Why it is written close to ASGI: the endpoint must keep up with a bare endpoint on the same
server (docs/design.md, "Speed"). Every callback runs on the event loop that also parses HTTP, so
the endpoint is a plain ASGI app (``OAuthCallback``; Starlette's ``Route`` hands an object that is
not a function the scope as is) instead of a ``Request`` -> ``Response`` function: no request object,
no exception-wrapping layer, the answers sent as two prebuilt ASGI messages with the same status,
headers and bodies Starlette's responses had. It reads only the five parameters it uses
(``read_params``), counts with labelled counter children looked up once, derives the allowed
origins and each ``return_to``'s quoted redirect once per app, and hands the message's keyword
arguments to the batcher, which encodes the message with the wire module (``workers.messages``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

import anyio.to_thread
from dramatiq.brokers.redis import RedisBroker

from social_accounts.errors import InputError
from web_callback.batching import BatchEnqueuer
from web_callback.errors import answer_for
from web_callback.health import BROKER_ERRORS, CALLBACKS
from web_callback.state import MAX_STATE_LENGTH, SignedState, verify_state
from workers.messages import CODE_RECEIVED
from workers.publish import code_received_kwargs, enqueue_code_received

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from starlette.types import Receive, Scope, Send

    from social_accounts.settings import Settings
    from workers.runtime import Runtime

__all__ = [
    "ENQUEUE_TIMEOUT",
    "MAX_QUERY_BYTES",
    "OAuthCallback",
    "check_issuer",
    "close_batchers",
    "oauth_callback",
    "read_params",
    "with_attempt",
]

#: the whole query string; anything longer is not a real platform redirect
MAX_QUERY_BYTES = 8192
#: per-parameter bounds (authorization codes are a few hundred characters at most)
LIMITS = {"code": 2048, "state": MAX_STATE_LENGTH, "error": 128, "error_description": 1024, "iss": 2048}
#: an OAuth error code is a short ASCII token (RFC 6749 §4.1.2.1); anything else is refused
_ERROR_CODE = re.compile(r"^[\x21-\x7e]{1,128}$")
log = logging.getLogger(__name__)
#: every answer's headers besides length, type and location (raw ASGI form)
_HEADERS = ((b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"))
_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
#: what Starlette's ``RedirectResponse`` leaves unquoted in ``Location``
_LOCATION_SAFE = ":/%#?=@[]!$&'()*+,;"
#: characters ``quote_plus`` never changes
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
#: ``return_to`` values whose redirect is remembered per app (they come from signed states only)
_MAX_REMEMBERED = 1024
#: seconds a callback waits for the broker before answering 503
ENQUEUE_TIMEOUT = 10.0
_batcher_lock = threading.Lock()
#: ``CALLBACKS`` children by outcome, looked up on first use (``labels()`` per request costs a lock)
_counters: dict[str, Any] = {}


def _count(outcome: str) -> None:
    counter = _counters.get(outcome)
    if counter is None:
        counter = _counters[outcome] = CALLBACKS.labels(outcome=outcome)
    counter.inc()


async def _plain(send: Send, status: int, text: str) -> None:
    """A ``PlainTextResponse(text + "\\n")`` with our headers, as two ASGI messages."""
    body = (text + "\n").encode("utf-8")
    headers = [*_HEADERS, (b"content-length", b"%d" % len(body)), _TEXT_PLAIN]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _see_other(send: Send, location: str) -> None:
    """A ``RedirectResponse(status_code=303)`` with our headers (``location`` already quoted)."""
    headers = [*_HEADERS, (b"content-length", b"0"), (b"location", location.encode("latin-1"))]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _status(exc: BaseException) -> int:
    """The status ``web_callback.errors`` gives ``exc``; the sentence stays one for people."""
    answer = answer_for(exc)
    return answer.status if answer is not None else 500


def with_attempt(return_to: str, attempt_id: str) -> str:
    """``return_to`` with ``attempt=<id>`` added to its query (an existing ``attempt`` is replaced)."""
    if "?" not in return_to and "#" not in return_to:  # the common case, without a parse
        return f"{return_to}?{urlencode({'attempt': attempt_id})}"
    parts = urlsplit(return_to)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "attempt"]
    query.append(("attempt", attempt_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Redirects:
    """Where a browser goes after its callback, per ``return_to``, for one app's settings.

    The allowed origins are derived once (``Settings.allowed_return_origins`` parses them on every
    read), and so is each ``return_to``'s verdict and quoted prefix: a site has a handful of
    return URLs, and only our signed states name them.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.origins = frozenset(settings.allowed_return_origins)
        #: return_to -> quoted ``...?attempt=`` prefix, "" for a URL that needs a parse, None when refused
        self._prefixes: dict[str, str | None] = {}

    def location(self, return_to: str, attempt_id: str) -> str | None:
        """The quoted ``Location`` for ``with_attempt(return_to, attempt_id)``, None when its
        origin is not allowed (then the plain page answers)."""
        try:
            prefix = self._prefixes[return_to]
        except KeyError:
            prefix = self._prefix(return_to)
            if len(self._prefixes) >= _MAX_REMEMBERED:
                self._prefixes.clear()
            self._prefixes[return_to] = prefix
        if prefix is None:
            return None
        if prefix:
            # quote() works character by character and leaves quote_plus's output as it is, so
            # this is quote(with_attempt(return_to, attempt_id)) without re-quoting return_to;
            # an id of unreserved characters only (a UUID) is its own quote_plus
            return prefix + (attempt_id if _UNRESERVED.fullmatch(attempt_id) else quote_plus(attempt_id))
        return quote(with_attempt(return_to, attempt_id), safe=_LOCATION_SAFE)

    def _prefix(self, return_to: str) -> str | None:
        if _origin(return_to) not in self.origins:
            return None
        if "?" in return_to or "#" in return_to:
            return ""
        return quote(return_to, safe=_LOCATION_SAFE) + "?attempt="


def _redirects(app: Any, settings: Settings) -> _Redirects:
    """This app's ``_Redirects`` (rebuilt if its settings object was replaced)."""
    redirects: _Redirects | None = getattr(app.state, "callback_redirects", None)
    if redirects is None or redirects.settings is not settings:
        redirects = app.state.callback_redirects = _Redirects(settings)
    return redirects


def read_params(query_string: bytes) -> dict[str, str]:
    """The five parameters we use (``LIMITS``), bounded; ``InputError`` when anything is oversized.

    The values ``request.query_params`` gave (Starlette: ``parse_qsl`` of the latin-1 text, the
    last of repeated names wins), an empty one counting as absent; only the values of our five
    names are unquoted, so anything else in the query costs a split. Checked against Starlette in
    ``tests/test_callback_fast_paths.py``.
    """
    if len(query_string) > MAX_QUERY_BYTES:
        raise InputError("The request is too large to be a sign-in response.", code="bad_request")
    raw: dict[str, str] = {}
    for field in query_string.decode("latin-1").split("&"):
        name, _, text = field.partition("=")
        if "%" in name or "+" in name:
            name = unquote(name.replace("+", " "))
        if name in LIMITS:
            raw[name] = text
    params: dict[str, str] = {}
    for name, limit in LIMITS.items():
        value = raw.get(name)
        if not value:
            continue
        if "%" in value or "+" in value:
            value = unquote(value.replace("+", " "))  # never empty: "+" is a space, a lone "%" stays
        if len(value) > limit:
            raise InputError(f"The '{name}' parameter is too long to be a sign-in response.", code="bad_request")
        params[name] = value
    if "error" in params and not _ERROR_CODE.match(params["error"]):
        raise InputError("The 'error' parameter is not a valid OAuth error code.", code="bad_request")
    return params


def check_issuer(state: SignedState, params: dict[str, str]) -> None:
    """A state that names its authorization server must come back with that ``iss`` (RFC 9207):
    a response from another server (a mix-up attack) is refused like a forged state."""
    if state.issuer is not None and params.get("iss") != state.issuer:
        raise InputError(
            "This sign-in response does not come from the server the sign-in was sent to. "
            "Please start connecting the account again.",
            code="state_invalid",
        )


def _batcher(app: Any, services: Runtime, broker: RedisBroker) -> BatchEnqueuer:
    """This event loop's ``BatchEnqueuer`` (one per loop: its connection belongs to that loop)."""
    loop = asyncio.get_running_loop()
    batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BatchEnqueuer] | None = getattr(
        app.state, "callback_batchers", None
    )
    batcher = batchers.get(loop) if batchers is not None else None
    if batcher is not None:
        return batcher
    with _batcher_lock:
        batchers = getattr(app.state, "callback_batchers", None)
        if batchers is None:
            batchers = weakref.WeakKeyDictionary()
            app.state.callback_batchers = batchers
        batcher = batchers.get(loop)
        if batcher is None:
            url = services.settings.effective_broker_url
            batcher = batchers[loop] = BatchEnqueuer(url, broker.namespace, timeout=ENQUEUE_TIMEOUT)
        return batcher


async def close_batchers(app: Any) -> None:
    """Close the running loop's batcher connection (``web_callback.app``'s lifespan, on shutdown)."""
    batchers = getattr(app.state, "callback_batchers", None)
    batcher = batchers.pop(asyncio.get_running_loop(), None) if batchers is not None else None
    if batcher is not None:
        await batcher.aclose()


def _enqueue(app: Any, services: Runtime, state: SignedState, params: dict[str, str]) -> Awaitable[Any]:
    """Hand the message to the broker without blocking the loop (batched on Redis); await the
    result. The code is encrypted first (AES-GCM: microseconds, fine on the loop). Not a coroutine
    itself: on Redis the callback awaits the batcher's future directly."""
    error = params.get("error")
    code = params.get("code") if error is None else None
    fields: dict[str, Any] = {
        "attempt_id": state.attempt_id,
        "code_enc": (
            services.ring.encrypt(code, table="message", column="code", row_id=state.attempt_id) if code else None
        ),
        "error": error,
        "error_description": params.get("error_description") if error else None,
    }
    broker = services.broker
    if isinstance(broker, RedisBroker):
        return _batcher(app, services, broker).enqueue_call(CODE_RECEIVED, code_received_kwargs(**fields))
    return anyio.to_thread.run_sync(functools.partial(enqueue_code_received, broker, **fields))


class OAuthCallback:
    """The ``GET /oauth/callback`` endpoint, as an ASGI app (see the module docstring for why)."""

    __name__ = "oauth_callback"  # the route's name, as when it was a function

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["app"]
        services: Runtime = app.state.services
        try:
            params = read_params(scope.get("query_string", b""))
            token = params.get("state")
            if token is None:
                raise InputError(
                    "This sign-in response carries no state, so it cannot be matched to a connection attempt. "
                    "Please start connecting the account again.",
                    code="state_invalid",
                )
            state = verify_state(token, services.settings.state_secret or "")
            check_issuer(state, params)
            if "code" not in params and "error" not in params:
                raise InputError(
                    "This sign-in response carries neither an authorization code nor an error. "
                    "Please start connecting the account again.",
                    code="bad_request",
                )
        except InputError as exc:
            outcome = exc.code if exc.code.startswith("state_") else "bad_request"
            _count(outcome)
            log.info("oauth callback refused", extra={"outcome": outcome})
            await _plain(send, _status(exc), str(exc))
            return

        try:
            await _enqueue(app, services, state, params)
        except BROKER_ERRORS as exc:
            _count("broker_down")
            log.warning(
                "oauth callback not enqueued: broker unavailable (%s)",
                type(exc).__name__,
                extra={"attempt_id": state.attempt_id, "platform": state.platform, "outcome": "broker_down"},
            )
            await _plain(
                send,
                _status(exc),
                "We could not record your sign-in right now because a service is unavailable. "
                "Please go back and try connecting again in a minute.",
            )
            return
        outcome = "denied" if "error" in params else "enqueued"
        _count(outcome)
        log.info(
            "oauth callback %s",
            outcome,
            extra={"attempt_id": state.attempt_id, "platform": state.platform, "outcome": outcome},
        )

        location = None
        if state.return_to:
            location = _redirects(app, services.settings).location(state.return_to, state.attempt_id)
        if location is not None:
            await _see_other(send, location)
        else:
            thanks = "Thank you. The connection is being completed; you can close this window."
            await _plain(send, 200, f"{thanks} ({state.attempt_id})")


#: the endpoint ``web_callback.app`` routes ``GET /oauth/callback`` to
oauth_callback = OAuthCallback()
