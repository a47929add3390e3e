"""ONE mapping from exceptions to HTTP answers, for the API, the accounts page and the callback.

Handlers raise; :func:`answer_for` says what that means to a client: status, machine code, a
sentence. The ``/v1`` API gets it as Starlette exception handlers (:data:`EXCEPTION_HANDLERS`,
``{"error": code, "message": sentence}``), the accounts page renders the same answer as a
banner, and the callback answers people with the same status in plain text. The error tree says
what an error allows (``social_accounts.errors``): a final refusal of the caller's input is a
``400`` (so is a Bluesky handle that resolves to no account when a sign-in starts), a grant the
user must renew a ``409``, anything that may work later a ``503`` (with ``Retry-After`` when
someone said when; a platform request for another module refused by a cooldown is its own
``429``), a platform that answered oddly a ``502``. A token that only our key can use (DPoP) is
a ``409 token_bound``: the caller makes a platform request instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from social_accounts.errors import (
    CoolingDown,
    InputError,
    InstanceUnreachable,
    LoginFailed,
    NeedsReconnect,
    PlatformError,
    PlatformNotConfigured,
    SocialAccountsError,
    TokenBound,
)
from web_callback.health import BROKER_ERRORS

__all__ = ["EXCEPTION_HANDLERS", "Answer", "Refused", "answer_for", "json_answer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What a client is told: HTTP status, machine code, a sentence, extra fields, when to retry."""

    status: int
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None


class Refused(Exception):
    """An answer a handler decided itself (404 unknown id, 422 bad body), raised like any other."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.answer = Answer(status, code, message, extra)


def answer_for(exc: BaseException) -> Answer | None:
    """The answer for ``exc``; None for anything unforeseen (a bug: the server's ``500``)."""
    if isinstance(exc, Refused):
        return exc.answer
    if isinstance(exc, InputError):
        extra: dict[str, Any] = {"missing_env": exc.missing} if isinstance(exc, PlatformNotConfigured) else {}
        return Answer(400, exc.code, str(exc), extra)
    if isinstance(exc, NeedsReconnect):
        return Answer(409, "needs_reconnect", f"the account must be connected again: {exc.message}")
    if isinstance(exc, TokenBound):  # the token is useless without our key: use /request
        return Answer(409, "token_bound", str(exc))
    if isinstance(exc, CoolingDown):  # another module's platform request: its own 429, nothing sent
        return Answer(
            429, "cooling_down", "the platform asked us to wait; no request was made", retry_after=exc.seconds
        )
    if isinstance(exc, LoginFailed):  # raised in a request only by a sign-in's start: the person's input
        return Answer(400, exc.kind, exc.message)
    if isinstance(exc, InstanceUnreachable):
        return Answer(502, "instance_unreachable", f"the Mastodon instance cannot be used: {exc.message}")
    if isinstance(exc, SocialAccountsError) and exc.retryable:  # Transient, RateLimited, NotNow
        code = exc.kind if isinstance(exc, PlatformError) else "rate_limited"
        if exc.retry_after is not None:
            message = "the platform asked us to wait; try again later"
            return Answer(503, "rate_limited", message, retry_after=exc.retry_after)
        return Answer(503, code, "the platform could not be reached right now; try again shortly")
    if isinstance(exc, PlatformError):
        return Answer(502, "platform_error", f"the platform did not answer as expected: {exc.message}")
    if isinstance(exc, BROKER_ERRORS):
        return Answer(503, "broker_unavailable", "the message broker is unavailable; try again shortly")
    return None


def json_answer(answer: Answer) -> JSONResponse:
    """The API's shape: ``{"error": code, "message": sentence, ...}``."""
    response = JSONResponse({"error": answer.code, "message": answer.message, **answer.extra}, answer.status)
    if answer.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(answer.retry_after)))
    return response


async def _handle(request: Request, exc: Exception) -> Response:
    answer = answer_for(exc)
    if answer is None:  # not ours to explain: a clear 500 without the exception's text
        log.error("unhandled %s on %s", type(exc).__name__, request.url.path, exc_info=exc)
        answer = Answer(500, "internal_error", "the server failed; try again later")
    return json_answer(answer)


#: ``Starlette(exception_handlers=...)``: every exception the table knows, by class
EXCEPTION_HANDLERS: dict[Any, Any] = {cls: _handle for cls in (Refused, SocialAccountsError, *BROKER_ERRORS)}
