"""The server-to-server ``/v1`` API (README, "HTTP API"), mounted behind ``BearerAuth``.

Handlers are ``async`` only to read the body; every database, broker or platform call runs in
a worker thread (``run_in_threadpool``), so one slow dependency never stalls the event loop.
Handlers raise; ``web_callback.errors`` (the app's exception handlers) turns that into JSON
``{"error": code, "message": sentence}`` with its status. Nothing is written when a request is
refused: a connect attempt row exists only once everything before it succeeded.
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
from web_callback import connecting
from web_callback.connecting import ATTEMPT_TTL
from web_callback.errors import Refused
from web_callback.schemas import (
    MAX_BODY_BYTES,
    MAX_REQUEST_BODY_BYTES,
    BlueskyConnectBody,
    ConnectBody,
    PlatformAnswerView,
    PlatformRequestBody,
    validation_details,
)

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = ["ATTEMPT_TTL", "routes"]

_Body = TypeVar("_Body", bound=BaseModel)


def _services(request: Request) -> Runtime:
    services: Runtime = request.app.state.services
    return services


async def _read_body(request: Request, model: type[_Body], limit: int = MAX_BODY_BYTES) -> _Body:
    """Read at most ``limit`` bytes and validate; oversized or invalid bodies are ``422``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(422, "body_too_large", f"the request body must be at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(422, "body_too_large", f"the request body must be at most {limit} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        raise Refused(422, "invalid_json", "the request body is not valid JSON") from None
    except RecursionError:  # the decoder's nesting limit (about 1,000 levels), not a server fault
        raise Refused(422, "invalid_json", "the request body is nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Refused(422, "invalid_body", "the request body is not valid", details=validation_details(exc)) from None


async def connect(request: Request) -> Response:
    platform = request.path_params["platform"]
    services = _services(request)
    adapter_class(platform, services.settings)  # UnknownPlatform before the body is even read
    if platform == "bluesky":
        bluesky = await _read_body(request, BlueskyConnectBody)
        if bluesky.app_password is None:  # AT Protocol OAuth: the person signs in at their PDS
            started = await run_in_threadpool(connecting.start_bluesky_oauth, services, bluesky)
            return JSONResponse(started, status_code=201)
        return JSONResponse(await run_in_threadpool(connecting.start_bluesky, services, bluesky), status_code=202)
    body = await _read_body(request, ConnectBody)
    return JSONResponse(await run_in_threadpool(connecting.start_oauth, services, platform, body), status_code=201)


# ---- reading ----------------------------------------------------------------------------------


async def get_attempt(request: Request) -> Response:
    view = await run_in_threadpool(connecting.attempt_view, _services(request), request.path_params["attempt_id"])
    if view is None:
        raise Refused(404, "not_found", "no such attempt")
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
        raise Refused(404, "not_found", "no such account")
    return JSONResponse(view)


# ---- actions ----------------------------------------------------------------------------------


def _action(action: connecting.Action) -> Any:
    async def endpoint(request: Request) -> Response:
        account_id = request.path_params["account_id"]
        found = await run_in_threadpool(connecting.enqueue_for_account, _services(request), account_id, action)
        if not found:
            raise Refused(404, "not_found", "no such account")
        return JSONResponse({"account_id": account_id, "enqueued": action}, status_code=202)

    return endpoint


#: ``?purge=`` values (anything else is a 400, never silently a plain disconnect)
_PURGE_VALUES = {"true": True, "1": True, "false": False, "0": False}


async def delete_account(request: Request) -> Response:
    """``DELETE /v1/accounts/{id}``: disconnect (revoke, then drop the tokens; the row stays for
    ``DISCONNECTED_RETENTION_DAYS``). With ``?purge=true`` the same message carries ``purge``: the
    worker revokes first, then erases the account and every trace of it. ``202`` either way: the
    revocation is a platform call, and it runs (and is retried) in the worker, never in a request.
    """
    raw = request.query_params.get("purge", "false")
    purge = _PURGE_VALUES.get(raw.strip().lower())
    if purge is None:
        raise Refused(400, "invalid_query", "purge must be true or false")
    if not purge:
        return await _disconnect(request)
    services, account_id = _services(request), request.path_params["account_id"]

    def enqueue() -> bool:
        from workers import publish

        if connecting.account_view(services, account_id) is None:
            return False
        publish.request_disconnect(account_id, purge=True, broker=services.broker)
        return True

    if not await run_in_threadpool(enqueue):
        raise Refused(404, "not_found", "no such account")
    return JSONResponse({"account_id": account_id, "enqueued": "purge"}, status_code=202)


_disconnect = _action("disconnect")


def _nudge_dispatcher(services: Runtime) -> None:
    """A refresh made here that changed the account's status wrote a public event: publish it now
    rather than at the scheduler's next sweep (``workers.events``)."""
    from workers.events import nudge_if_written

    nudge_if_written(services, services.broker)


def _valid_token(services: Runtime, account_id: str) -> Response:
    """``workers.tokens.get_valid_token`` behind HTTP: 200, 404, or what ``web_callback.errors``
    says of its error (409 reconnect or ``token_bound``, 503 try later)."""
    from workers.tokens import AccountNotFound, get_valid_token

    if not connecting.valid_id(account_id):
        raise Refused(404, "not_found", "no such account")
    try:
        token = get_valid_token(account_id, rt=services)
    except AccountNotFound:
        raise Refused(404, "not_found", "no such account") from None
    finally:
        _nudge_dispatcher(services)
    expires = token.expires_at.isoformat() if token.expires_at else None
    response = JSONResponse({"access_token": token.access_token, "expires_at": expires})
    response.headers["Cache-Control"] = "no-store"
    return response


async def account_token(request: Request) -> Response:
    """A token valid now for another module, refreshed first when it is due (never a dead one)."""
    return await run_in_threadpool(_valid_token, _services(request), request.path_params["account_id"])


def _platform_request(services: Runtime, account_id: str, body: PlatformRequestBody) -> Response:
    """``workers.proxy.platform_request`` behind HTTP: 200 with the platform's answer, 404, or what
    ``web_callback.errors`` says of its error (400 path, 409 reconnect, 429 cooling down)."""
    from workers.proxy import AccountNotFound, platform_request

    if not connecting.valid_id(account_id):
        raise Refused(404, "not_found", "no such account")
    try:
        answer = platform_request(
            account_id, body.method, body.path, params=body.query or None, json=body.body, rt=services
        )
    except AccountNotFound:
        raise Refused(404, "not_found", "no such account") from None
    view = PlatformAnswerView(status=answer.status, headers=answer.headers, body=answer.body)
    response = JSONResponse(view.model_dump(mode="json"))
    response.headers["Cache-Control"] = "no-store"
    return response


async def account_request(request: Request) -> Response:
    """A platform request made for another module with the account's credentials (``workers.proxy``)."""
    body = await _read_body(request, PlatformRequestBody, MAX_REQUEST_BODY_BYTES)
    services, account_id = _services(request), request.path_params["account_id"]
    return await run_in_threadpool(_platform_request, services, account_id, body)


#: ``GET /v1/events``: default and largest page
EVENTS_PAGE = 100
EVENTS_PAGE_MAX = 1000


def _query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Refused(400, "invalid_query", f"{name} must be a whole number from {low} to {high}")
    return int(raw)


async def list_events(request: Request) -> Response:
    """``GET /v1/events?after=<cursor>&limit=<n>``: published events in order, from the outbox
    (``models.outbox``); ``next`` is the cursor to pass as ``after`` to continue (the same one
    when nothing newer exists yet), so a module that was down catches up page by page."""
    from models.outbox import list_events as read_events

    after = _query_int(request, "after", 0, low=0, high=2**63 - 1)
    limit = _query_int(request, "limit", EVENTS_PAGE, low=1, high=EVENTS_PAGE_MAX)
    found = await run_in_threadpool(read_events, _services(request).engine, after=after, limit=limit)
    return JSONResponse({"events": found, "next": found[-1]["cursor"] if found else str(after)})


def routes() -> list[BaseRoute]:
    return [
        Route("/platforms", list_platforms, methods=["GET"]),
        Route("/events", list_events, methods=["GET"]),
        Route("/connect/{platform}", connect, methods=["POST"]),
        Route("/attempts/{attempt_id}", get_attempt, methods=["GET"]),
        Route("/sites/{site_id}/accounts", site_accounts, methods=["GET"]),
        Route("/accounts/{account_id}", get_account, methods=["GET"]),
        Route("/accounts/{account_id}", delete_account, methods=["DELETE"]),
        Route("/accounts/{account_id}/refresh", _action("refresh"), methods=["POST"]),
        Route("/accounts/{account_id}/sync", _action("sync"), methods=["POST"]),
        Route("/accounts/{account_id}/token", account_token, methods=["POST"]),
        Route("/accounts/{account_id}/request", account_request, methods=["POST"]),
    ]
