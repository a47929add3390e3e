"""The ``/v1`` API described as OpenAPI 3.1, served at ``/openapi.json``.

Built from the pydantic models the handlers validate requests with and shape answers by
(``web_callback.schemas``): the component schemas are pydantic's own JSON Schema of those
classes, so a field added to a model is in the document at once. What pydantic cannot know (which
route answers which status with which model) is the table :data:`OPERATIONS`; the test suite
holds it to the truth twice: every ``/v1`` route must have its operation (and no operation may
lack its route), and every ``/v1`` answer any test receives is checked against the document
(``tests/openapi_check.py``), status and body.

Webhook payloads go in :data:`WEBHOOKS` (event type → payload model): each one is published
under the document's top-level ``webhooks`` (OpenAPI 3.1), built the same way.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from models.outbox import EVENT_TYPES
from web_callback.schemas import (
    AccountList,
    AccountView,
    AttemptView,
    BlueskyConnectBody,
    ConnectBody,
    ConnectStarted,
    Enqueued,
    ErrorBody,
    EventList,
    EventPayload,
    LoginStarted,
    PlatformAnswerView,
    PlatformList,
    PlatformRequestBody,
    TokenView,
)

__all__ = ["OPERATIONS", "WEBHOOKS", "Operation", "document", "openapi_json"]

#: what each refusal status means, as ``web_callback.errors`` and ``BearerAuth`` answer it
ERRORS: dict[int, str] = {
    400: "Refused input: unknown or unconfigured platform, bad query, unsafe address or path",
    401: "Missing or wrong `Authorization: Bearer <API_TOKEN>`",
    404: "No such attempt or account",
    409: "The account must be connected again by its user",
    422: "The body is not valid JSON or not valid for this operation (field paths in `details`)",
    429: "The platform or account is cooling down; come back after `Retry-After` seconds",
    502: "The platform (or Mastodon instance) did not answer as expected",
    503: "The broker, the platform or a cooldown says try later (`Retry-After` when known)",
}


@dataclass(frozen=True)
class Operation:
    """One method on one path: its request body model(s), and its answers by status.

    ``answers`` maps a status to the model of its JSON body; the statuses in ``errors`` answer
    :class:`~web_callback.schemas.ErrorBody`, described by :data:`ERRORS` unless ``notes`` says
    more for this operation.
    """

    method: str
    path: str
    summary: str
    answers: dict[int, type[BaseModel]]
    errors: tuple[int, ...] = ()
    body: tuple[type[BaseModel], ...] = ()
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v1/platforms", "Every platform, configured or with the env vars it lacks", {200: PlatformList}),
    Operation(
        "POST",
        "/v1/connect/{platform}",
        "Start connecting an account: a redirect URL, or (Bluesky with an app password) a login",
        {201: ConnectStarted, 202: LoginStarted},
        errors=(400, 422, 502, 503),
        notes={
            400: "Refused input: unknown or unconfigured platform, unsafe address, or (Bluesky sign-in) "
            "a handle that resolves to no account (`login_failed`)"
        },
        body=(ConnectBody, BlueskyConnectBody),
    ),
    Operation("GET", "/v1/attempts/{attempt_id}", "How a connect attempt ended", {200: AttemptView}, errors=(404,)),
    Operation("GET", "/v1/sites/{site_id}/accounts", "A site's accounts, never a token", {200: AccountList}),
    Operation("GET", "/v1/accounts/{account_id}", "One account, never a token", {200: AccountView}, errors=(404,)),
    Operation(
        "DELETE",
        "/v1/accounts/{account_id}",
        "Disconnect: revoke where the platform can, then drop the tokens (or erase all with purge)",
        {202: Enqueued},
        errors=(400, 404, 503),
        query={"purge": {"type": "string", "enum": ["true", "false", "1", "0"], "default": "false"}},
    ),
    Operation(
        "POST", "/v1/accounts/{account_id}/refresh", "Enqueue a token refresh", {202: Enqueued}, errors=(404, 503)
    ),
    Operation("POST", "/v1/accounts/{account_id}/sync", "Enqueue a stats sync", {202: Enqueued}, errors=(404, 503)),
    Operation(
        "POST",
        "/v1/accounts/{account_id}/token",
        "A token valid now, refreshed first when it is due (never a dead one)",
        {200: TokenView},
        errors=(404, 409, 503),
        notes={
            409: "`needs_reconnect`: the account must be connected again by its user; or `token_bound`: "
            "the token works only with the service's DPoP key (Bluesky OAuth), so it is never handed out: "
            "make the call through `POST /v1/accounts/{account_id}/request`"
        },
    ),
    Operation(
        "POST",
        "/v1/accounts/{account_id}/request",
        "A platform request made with the account's credentials; the platform's answer as it came",
        {200: PlatformAnswerView},
        errors=(400, 404, 409, 422, 429, 502, 503),
        body=(PlatformRequestBody,),
    ),
    Operation(
        "GET",
        "/v1/events",
        "Published events in order, after a cursor (replay for a module that was down)",
        {200: EventList},
        errors=(400,),
        query={
            "after": {"type": "string", "pattern": "^[0-9]+$", "default": "0"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
    ),
)

#: webhook event type → the model of its payload; published under ``webhooks`` in the document
WEBHOOKS: dict[str, type[BaseModel]] = dict.fromkeys(EVENT_TYPES, EventPayload)


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process: the models do not change at run time)."""
    requests = {model for op in OPERATIONS for model in op.body} | set(WEBHOOKS.values())
    answers = {model for op in OPERATIONS for model in op.answers.values()} | {ErrorBody}
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in sorted(requests, key=lambda m: m.__name__)),
        *((m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)),
    ]
    refs, definitions = models_json_schema(wanted, ref_template="#/components/schemas/{model}")
    request_ref = {model: refs[(model, "validation")] for model in requests}
    answer_ref = {model: refs[(model, "serialization")] for model in answers}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, request_ref, answer_ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "social-accounts",
            "version": "1",
            "description": "Connect social-media accounts and keep them connected. Server-to-server API; "
            "see the README's HTTP API section.",
        },
        "paths": paths,
        "webhooks": {
            name: {
                "post": {
                    "summary": f"The {name} event",
                    "requestBody": {"required": True, "content": _json(request_ref[model])},
                    "responses": {"2XX": {"description": "Received"}},
                }
            }
            for name, model in WEBHOOKS.items()
        },
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``: public, like any API description (it holds no secret)."""
    return JSONResponse(document())


def _operation(
    op: Operation, request_ref: dict[type[BaseModel], Any], answer_ref: dict[type[BaseModel], Any]
) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"\{(\w+)\}", op.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema} for name, schema in op.query.items()
    ]
    responses: dict[str, Any] = {
        str(status): {
            "description": model.__doc__.strip().splitlines()[0] if model.__doc__ else "OK",
            "content": _json(answer_ref[model]),
        }
        for status, model in op.answers.items()
    }
    for status in sorted({401, *op.errors}):
        described = op.notes.get(status, ERRORS[status])
        responses[str(status)] = {"description": described, "content": _json(answer_ref[ErrorBody])}
    found: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(op),
        "security": [{"bearer": []}],
        "responses": responses,
    }
    if parameters:
        found["parameters"] = parameters
    if op.body:
        schemas = [request_ref[model] for model in op.body]
        schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
        found["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return found


def _json(schema: Any) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation_id(op: Operation) -> str:
    words = [w for w in re.split(r"[/{}]+", op.path) if w and w != "v1"]
    return "_".join([op.method.lower(), *words])
