"""The server-to-server ``/v1`` API (CONTRACT.md "HTTP"), mounted behind ``BearerAuth``.

Handlers are ``async`` only to read the body; every database, broker or platform call runs in
a worker thread (``run_in_threadpool``), so one slow dependency never stalls the event loop.
Errors are JSON ``{"error": code, "message": sentence}``; our ``InputError``s are ``400``, bad
bodies ``422``, unknown ids ``404``, an unreachable broker ``503``. Nothing is written when a
request is refused: a connect attempt row exists only once everything before it succeeded.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from platforms.registry import adapter_class, platform_statuses
from social_accounts.errors import NeedsReconnect, PlatformError, RateLimited
from web_callback import connecting
from web_callback.connecting import ATTEMPT_TTL
from web_callback.health import BROKER_ERRORS
from web_callback.schemas import MAX_BODY_BYTES, BlueskyConnectBody, ConnectBody, validation_details

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = ["ATTEMPT_TTL", "routes"]

_Body = TypeVar("_Body", bound=BaseModel)


class _Refused(Exception):
    """A response decided deep in a helper (404, 413, 422): carried out as an exception."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def _services(request: Request) -> Runtime:
    services: Runtime = request.app.state.services
    return services


async def _read_body(request: Request, model: type[_Body]) -> _Body:
    """Read at most ``MAX_BODY_BYTES`` and validate; oversized or invalid bodies are ``422``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(_error(422, "body_too_large", f"the request body must be at most {MAX_BODY_BYTES} bytes"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(_error(422, "body_too_large", f"the request body must be at most {MAX_BODY_BYTES} bytes"))
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        raise _Refused(_error(422, "invalid_json", "the request body is not valid JSON")) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _Refused(
            _error(422, "invalid_body", "the request body is not valid", details=validation_details(exc))
        ) from None


async def connect(request: Request) -> Response:
    platform = request.path_params["platform"]
    services = _services(request)
    try:
        adapter_class(platform, services.settings)  # UnknownPlatform before the body is even read
        if platform == "bluesky":
            bluesky = await _read_body(request, BlueskyConnectBody)
            return JSONResponse(await run_in_threadpool(connecting.start_bluesky, services, bluesky), status_code=202)
        body = await _read_body(request, ConnectBody)
        return JSONResponse(await run_in_threadpool(connecting.start_oauth, services, platform, body), status_code=201)
    except _Refused as bad_body:
        return bad_body.response
    except Exception as exc:
        answer = connecting.refusal(exc)
        if answer is None:
            raise
        return _error(answer.status, answer.code, answer.message, **answer.extra)


# ---- reading ----------------------------------------------------------------------------------


async def get_attempt(request: Request) -> Response:
    view = await run_in_threadpool(connecting.attempt_view, _services(request), request.path_params["attempt_id"])
    if view is None:
        return _error(404, "not_found", "no such attempt")
    return JSONResponse(view)


async def list_platforms(request: Request) -> Response:
    statuses = await run_in_threadpool(platform_statuses, _services(request).settings)
    return JSONResponse([status.as_dict() for status in statuses])


async def site_accounts(request: Request) -> Response:
    site_id = request.path_params["site_id"]
    return JSONResponse(await run_in_threadpool(connecting.site_accounts, _services(request), site_id))


async def get_account(request: Request) -> Response:
    view = await run_in_threadpool(connecting.account_view, _services(request), request.path_params["account_id"])
    if view is None:
        return _error(404, "not_found", "no such account")
    return JSONResponse(view)


# ---- actions ----------------------------------------------------------------------------------


def _action(action: connecting.Action) -> Any:
    async def endpoint(request: Request) -> Response:
        account_id = request.path_params["account_id"]
        try:
            found = await run_in_threadpool(connecting.enqueue_for_account, _services(request), account_id, action)
        except BROKER_ERRORS:
            return _error(503, "broker_unavailable", "the message broker is unavailable; try again shortly")
        if not found:
            return _error(404, "not_found", "no such account")
        return JSONResponse({"account_id": account_id, "enqueued": action}, status_code=202)

    return endpoint


def _valid_token(services: Runtime, account_id: str) -> Response:
    """``workers.tokens.get_valid_token`` behind HTTP: 200, 404, 409 (reconnect) or 503 (try later)."""
    from workers.refresh import CooledDown
    from workers.tokens import AccountNotFound, get_valid_token

    if not connecting.valid_id(account_id):
        return _error(404, "not_found", "no such account")
    try:
        token = get_valid_token(account_id, rt=services)
    except AccountNotFound:
        return _error(404, "not_found", "no such account")
    except NeedsReconnect as exc:
        return _error(409, "needs_reconnect", f"the account must be connected again: {exc.message}")
    except CooledDown as exc:
        response = _error(503, "rate_limited", "the platform asked us to wait before renewing this token")
        response.headers["Retry-After"] = str(max(1, int(exc.seconds + 0.999)))
        return response
    except PlatformError as exc:
        response = _error(503, exc.kind, "the token is due and could not be renewed right now; try again shortly")
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        return response
    expires = token.expires_at.isoformat() if token.expires_at else None
    response = JSONResponse({"access_token": token.access_token, "expires_at": expires})
    response.headers["Cache-Control"] = "no-store"
    return response


async def account_token(request: Request) -> Response:
    """A token valid now for another module, refreshed first when it is due (never a dead one)."""
    return await run_in_threadpool(_valid_token, _services(request), request.path_params["account_id"])


def routes() -> list[BaseRoute]:
    return [
        Route("/platforms", list_platforms, methods=["GET"]),
        Route("/connect/{platform}", connect, methods=["POST"]),
        Route("/attempts/{attempt_id}", get_attempt, methods=["GET"]),
        Route("/sites/{site_id}/accounts", site_accounts, methods=["GET"]),
        Route("/accounts/{account_id}", get_account, methods=["GET"]),
        Route("/accounts/{account_id}", _action("disconnect"), methods=["DELETE"]),
        Route("/accounts/{account_id}/refresh", _action("refresh"), methods=["POST"]),
        Route("/accounts/{account_id}/sync", _action("sync"), methods=["POST"]),
        Route("/accounts/{account_id}/token", account_token, methods=["POST"]),
    ]
