"""``GET /oauth/callback``: check the state, enqueue one message, send the browser back.

Why so little happens here: the user's browser is waiting, and the platform's code is only
worth something for a few minutes, so the endpoint does no database work and no platform I/O.
It verifies the signed state (``web_callback.state``), encrypts the code under the key ring
(associated data: table ``message``, column ``code``, row id = attempt id) so the broker never
holds it in clear, and enqueues ONE ``code_received`` message. The worker does the rest.

The enqueue never blocks the event loop. On Redis (production) the message goes to the loop's
``BatchEnqueuer`` (``web_callback.batching``): asynchronous, and every callback waiting at that
moment is written in one round trip, which keeps this endpoint near the speed of a bare one under
load (``bench/callback.py``). Other brokers get one worker thread per enqueue (``anyio.to_thread``).
If the broker does not take the message (or does not answer within ``ENQUEUE_TIMEOUT``) the answer
is ``503`` and nothing else has happened, so the user can simply retry.

The query string carries the code: it is never logged here, and ``web_callback.app`` strips
query strings from uvicorn's access log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.to_thread
from dramatiq.brokers.redis import RedisBroker
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from social_accounts.errors import InputError
from web_callback.batching import BatchEnqueuer
from web_callback.health import BROKER_ERRORS, CALLBACKS
from web_callback.state import MAX_STATE_LENGTH, SignedState, verify_state

if TYPE_CHECKING:
    from web_callback.app import Services

__all__ = ["ENQUEUE_TIMEOUT", "MAX_QUERY_BYTES", "close_batchers", "oauth_callback", "with_attempt"]

#: the whole query string; anything longer is not a real platform redirect
MAX_QUERY_BYTES = 8192
#: per-parameter bounds (authorization codes are a few hundred characters at most)
LIMITS = {"code": 2048, "state": MAX_STATE_LENGTH, "error": 128, "error_description": 1024}
#: an OAuth error code is a short ASCII token (RFC 6749 §4.1.2.1); anything else is refused
_ERROR_CODE = re.compile(r"^[\x21-\x7e]{1,128}$")
log = logging.getLogger(__name__)
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
#: seconds a callback waits for the broker before answering 503
ENQUEUE_TIMEOUT = 10.0
_batcher_lock = threading.Lock()


def _plain(status: int, text: str) -> Response:
    return PlainTextResponse(text + "\n", status_code=status, headers=_HEADERS)


def with_attempt(return_to: str, attempt_id: str) -> str:
    """``return_to`` with ``attempt=<id>`` added to its query (an existing ``attempt`` is replaced)."""
    if "?" not in return_to and "#" not in return_to:  # the common case, without a parse
        return f"{return_to}?{urlencode({'attempt': attempt_id})}"
    parts = urlsplit(return_to)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "attempt"]
    query.append(("attempt", attempt_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _origin_allowed(url: str, allowed: list[str]) -> bool:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() in allowed


def _read_params(request: Request) -> dict[str, str]:
    """The four parameters we use, bounded; ``InputError`` when anything is oversized."""
    if len(request.scope.get("query_string", b"")) > MAX_QUERY_BYTES:
        raise InputError("The request is too large to be a sign-in response.", code="bad_request")
    params: dict[str, str] = {}
    for name, limit in LIMITS.items():
        value = request.query_params.get(name)
        if value is None or value == "":
            continue
        if len(value) > limit:
            raise InputError(f"The '{name}' parameter is too long to be a sign-in response.", code="bad_request")
        params[name] = value
    if "error" in params and not _ERROR_CODE.match(params["error"]):
        raise InputError("The 'error' parameter is not a valid OAuth error code.", code="bad_request")
    return params


def _message_fields(services: Services, state: SignedState, params: dict[str, str]) -> dict[str, Any]:
    """The ``code_received`` arguments, the code encrypted (AES-GCM: microseconds, fine on the loop)."""
    error = params.get("error")
    code = params.get("code") if error is None else None
    code_enc = services.ring.encrypt(code, table="message", column="code", row_id=state.attempt_id) if code else None
    return {
        "attempt_id": state.attempt_id,
        "code_enc": code_enc,
        "error": error,
        "error_description": params.get("error_description") if error else None,
    }


def _batcher(request: Request, services: Services, broker: RedisBroker) -> BatchEnqueuer:
    """This event loop's ``BatchEnqueuer`` (one per loop: its connection belongs to that loop)."""
    with _batcher_lock:
        batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BatchEnqueuer] | None = getattr(
            request.app.state, "callback_batchers", None
        )
        if batchers is None:
            batchers = weakref.WeakKeyDictionary()
            request.app.state.callback_batchers = batchers
        loop = asyncio.get_running_loop()
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


async def _enqueue(request: Request, services: Services, state: SignedState, params: dict[str, str]) -> None:
    """Hand the message to the broker without blocking the loop (batched on Redis)."""
    from workers.publish import code_received_message, enqueue_code_received

    fields = _message_fields(services, state, params)
    broker = services.get_broker()
    if isinstance(broker, RedisBroker):
        await _batcher(request, services, broker).enqueue(code_received_message(**fields))
    else:
        await anyio.to_thread.run_sync(functools.partial(enqueue_code_received, broker, **fields))


async def oauth_callback(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        params = _read_params(request)
        if "state" not in params:
            raise InputError(
                "This sign-in response carries no state, so it cannot be matched to a connection attempt. "
                "Please start connecting the account again.",
                code="state_invalid",
            )
        state = verify_state(params["state"], services.state_secret)
        if "code" not in params and "error" not in params:
            raise InputError(
                "This sign-in response carries neither an authorization code nor an error. "
                "Please start connecting the account again.",
                code="bad_request",
            )
    except InputError as exc:
        outcome = exc.code if exc.code.startswith("state_") else "bad_request"
        CALLBACKS.labels(outcome=outcome).inc()
        log.info("oauth callback refused", extra={"outcome": outcome})
        return _plain(400, str(exc))

    try:
        await _enqueue(request, services, state, params)
    except BROKER_ERRORS as exc:
        CALLBACKS.labels(outcome="broker_down").inc()
        log.warning(
            "oauth callback not enqueued: broker unavailable (%s)",
            type(exc).__name__,
            extra={"attempt_id": state.attempt_id, "platform": state.platform, "outcome": "broker_down"},
        )
        return _plain(
            503,
            "We could not record your sign-in right now because a service is unavailable. "
            "Please go back and try connecting again in a minute.",
        )
    outcome = "denied" if "error" in params else "enqueued"
    CALLBACKS.labels(outcome=outcome).inc()
    log.info(
        "oauth callback %s",
        outcome,
        extra={"attempt_id": state.attempt_id, "platform": state.platform, "outcome": outcome},
    )

    if state.return_to and _origin_allowed(state.return_to, services.settings.allowed_return_origins):
        return RedirectResponse(with_attempt(state.return_to, state.attempt_id), status_code=303, headers=_HEADERS)
    return _plain(200, f"Thank you. The connection is being completed; you can close this window. ({state.attempt_id})")
