"""The server-to-server ``/v1`` API (CONTRACT.md "HTTP"), mounted behind ``BearerAuth``.

Handlers are ``async`` only to read the body; every database, broker or platform call runs in
a worker thread (``run_in_threadpool``), so one slow dependency never stalls the event loop.
Errors are JSON ``{"error": code, "message": sentence}``; our ``InputError``s are ``400``, bad
bodies ``422``, unknown ids ``404``, an unreachable broker ``503``. Nothing is written when a
request is refused: a connect attempt row exists only once everything before it succeeded.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from models import repository
from models.ids import new_id
from models.tables import SocialAccount, SocialOAuthState
from platforms.oauth2 import pkce_pair
from platforms.registry import adapter_class, get_adapter, platform_statuses
from social_accounts.errors import (
    InputError,
    InstanceUnreachable,
    NeedsReconnect,
    PlatformError,
    PlatformNotConfigured,
    RateLimited,
)
from web_callback.health import BROKER_ERRORS
from web_callback.messages import error_message
from web_callback.schemas import MAX_BODY_BYTES, BlueskyConnectBody, ConnectBody, validation_details
from web_callback.state import SignedState, sign_state

if TYPE_CHECKING:
    from platforms.base import PlatformAdapter
    from web_callback.app import Services

__all__ = ["ATTEMPT_TTL", "routes"]

#: how long a connect attempt (and its signed state) stays usable
ATTEMPT_TTL = timedelta(minutes=10)

_Body = TypeVar("_Body", bound=BaseModel)


class _Refused(Exception):
    """A response decided deep in a helper (404, 413, 422): carried out as an exception."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
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


def _check_return_to(services: Services, return_to: str | None) -> None:
    if return_to is None:
        return
    parts = urlsplit(return_to)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise InputError("return_to must be an absolute http(s) URL", code="return_to_invalid")
    if origin not in services.settings.allowed_return_origins:
        raise InputError(
            f"return_to must be on one of the allowed origins ({', '.join(services.settings.allowed_return_origins)})",
            code="return_to_not_allowed",
        )


def _adapter(services: Services, platform: str) -> PlatformAdapter:
    """The adapter for ``platform`` (Mastodon with the database-backed app store)."""
    if platform == "mastodon":
        from platforms.mastodon import MastodonAdapter
        from workers.mastodon_store import DbMastodonAppStore

        store = DbMastodonAppStore(services.engine, services.ring)
        return MastodonAdapter(services.settings, services.http, app_store=store)
    return get_adapter(platform, services.settings, services.http)


# ---- connect ----------------------------------------------------------------------------------


def _start_oauth(services: Services, platform: str, body: ConnectBody) -> dict[str, str]:
    """Build the authorization URL (registering the Mastodon app first), then write the attempt."""
    settings = services.settings
    adapter = _adapter(services, platform)
    if missing := adapter.missing_env():
        raise PlatformNotConfigured(platform, missing)
    _check_return_to(services, body.return_to)
    instance: str | None = None
    if platform == "mastodon":
        if not body.instance:
            raise InputError("mastodon needs the 'instance' field (e.g. mastodon.social)", code="instance_required")
        instance = adapter.instance_url(body.instance)  # type: ignore[attr-defined]
    elif body.instance is not None:
        raise InputError("'instance' is only used for mastodon", code="instance_not_allowed")

    now = datetime.now(UTC).replace(microsecond=0)
    attempt_id = new_id()
    verifier, challenge = pkce_pair()
    expires_at = now + ATTEMPT_TTL
    state = sign_state(SignedState(attempt_id, platform, expires_at, body.return_to), services.state_secret)
    url = adapter.authorization_url(
        state=state, redirect_uri=settings.redirect_uri, code_challenge=challenge, instance=instance
    )
    with Session(services.engine) as session, session.begin():
        repository.create_attempt(
            session,
            services.ring,
            attempt_id=attempt_id,
            platform=platform,
            site_id=body.site_id,
            user_id=body.user_id,
            expires_at=expires_at,
            now=now,
            return_to=body.return_to,
            instance=instance,
            code_verifier=verifier,
        )
    return {"attempt_id": attempt_id, "authorization_url": url}


def _start_bluesky(services: Services, body: BlueskyConnectBody) -> dict[str, str]:
    """Write the attempt (app password encrypted) and enqueue the login; undo the row if that fails."""
    from workers.publish import enqueue_bluesky_login

    _check_return_to(services, body.return_to)
    now = datetime.now(UTC)
    with Session(services.engine) as session, session.begin():
        attempt_id = repository.create_attempt(
            session,
            services.ring,
            platform="bluesky",
            site_id=body.site_id,
            user_id=body.user_id,
            expires_at=now + ATTEMPT_TTL,
            now=now,
            return_to=body.return_to,
            instance=body.handle.lstrip("@").lower(),
            app_password=body.app_password.get_secret_value(),
        )
    try:
        enqueue_bluesky_login(attempt_id, broker=services.get_broker())
    except BROKER_ERRORS:
        with Session(services.engine) as session, session.begin():
            row = session.get(SocialOAuthState, attempt_id)
            if row is not None:  # the password must not outlive a login that will never run
                session.delete(row)
        raise
    return {"attempt_id": attempt_id}


async def connect(request: Request) -> Response:
    platform = request.path_params["platform"]
    services = _services(request)
    try:
        adapter_class(platform)  # UnknownPlatform before the body is even read
        if platform == "bluesky":
            bluesky = await _read_body(request, BlueskyConnectBody)
            return JSONResponse(await run_in_threadpool(_start_bluesky, services, bluesky), status_code=202)
        body = await _read_body(request, ConnectBody)
        return JSONResponse(await run_in_threadpool(_start_oauth, services, platform, body), status_code=201)
    except _Refused as refused:
        return refused.response
    except InputError as exc:
        extra = {"missing_env": exc.missing} if isinstance(exc, PlatformNotConfigured) else {}
        return _error(400, exc.code, str(exc), **extra)
    except InstanceUnreachable as exc:
        return _error(502, "instance_unreachable", f"the Mastodon instance cannot be used: {exc.message}")
    except RateLimited:
        return _error(503, "rate_limited", "the Mastodon instance asks us to slow down; try again in a few minutes")
    except PlatformError as exc:
        return _error(502, "platform_error", f"the platform did not answer as expected: {exc.message}")
    except BROKER_ERRORS:
        return _error(503, "broker_unavailable", "the message broker is unavailable; try again shortly")


# ---- reading ----------------------------------------------------------------------------------


def _valid_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _attempt_view(services: Services, attempt_id: str) -> dict[str, Any] | None:
    with Session(services.engine) as session:
        row = repository.load_attempt(session, attempt_id)
        if row is None:
            return None
        return {
            "attempt_id": row.id,
            "platform": row.platform,
            "site_id": row.site_id,
            "status": row.status,
            "error_code": row.error_code,
            "error_message": error_message(row.error_code),
            "account_ids": list(row.account_ids or []),
        }


async def get_attempt(request: Request) -> Response:
    attempt_id = request.path_params["attempt_id"]
    view = await run_in_threadpool(_attempt_view, _services(request), attempt_id) if _valid_id(attempt_id) else None
    if view is None:
        return _error(404, "not_found", "no such attempt")
    return JSONResponse(view)


async def list_platforms(request: Request) -> Response:
    statuses = await run_in_threadpool(platform_statuses, _services(request).settings)
    return JSONResponse([status.as_dict() for status in statuses])


def _site_accounts(services: Services, site_id: str) -> list[dict[str, Any]]:
    with Session(services.engine) as session:
        return [repository.account_public_dict(row) for row in repository.list_accounts(session, site_id=site_id)]


async def site_accounts(request: Request) -> Response:
    site_id = request.path_params["site_id"]
    return JSONResponse(await run_in_threadpool(_site_accounts, _services(request), site_id))


def _account(services: Services, account_id: str) -> dict[str, Any] | None:
    if not _valid_id(account_id):
        return None
    with Session(services.engine) as session:
        row = session.get(SocialAccount, account_id)
        return repository.account_public_dict(row) if row is not None else None


async def get_account(request: Request) -> Response:
    view = await run_in_threadpool(_account, _services(request), request.path_params["account_id"])
    if view is None:
        return _error(404, "not_found", "no such account")
    return JSONResponse(view)


# ---- actions ----------------------------------------------------------------------------------


def _enqueue_for_account(services: Services, account_id: str, action: str) -> bool:
    """Enqueue ``action`` for an existing account; False when there is no such account."""
    from workers import publish

    if _account(services, account_id) is None:
        return False
    broker = services.get_broker()
    if action == "refresh":
        publish.request_refresh(account_id, "api", broker=broker)
    elif action == "sync":
        publish.request_sync(account_id, broker=broker)
    else:
        publish.request_disconnect(account_id, broker=broker)
    return True


def _action(action: str) -> Any:
    async def endpoint(request: Request) -> Response:
        account_id = request.path_params["account_id"]
        try:
            found = await run_in_threadpool(_enqueue_for_account, _services(request), account_id, action)
        except BROKER_ERRORS:
            return _error(503, "broker_unavailable", "the message broker is unavailable; try again shortly")
        if not found:
            return _error(404, "not_found", "no such account")
        return JSONResponse({"account_id": account_id, "enqueued": action}, status_code=202)

    return endpoint


def _valid_token(services: Services, account_id: str) -> Response:
    """``workers.tokens.get_valid_token`` behind HTTP: 200, 404, 409 (reconnect) or 503 (try later)."""
    from workers.refresh import CooledDown
    from workers.tokens import AccountNotFound, get_valid_token

    if not _valid_id(account_id):
        return _error(404, "not_found", "no such account")
    try:
        token = get_valid_token(account_id, rt=services.runtime)
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
