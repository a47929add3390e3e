"""Request and answer bodies of the ``/v1`` API, with size limits.

Every string has a maximum length so a caller cannot make us store (or sign into a state)
something unbounded; unknown fields are refused so a typo is an error rather than silently
ignored. Validation failures become ``422`` with pydantic's field paths (never the values:
``app_password`` must not be echoed back).

The answer models describe what each handler returns. ``web_callback.openapi`` builds the
``/openapi.json`` document from these very classes, and the test suite checks every ``/v1``
answer it sees against that document, so the description cannot drift from the code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel, SecretStr, ValidationError

from models.outbox import EVENT_TYPES
from platforms.apipath import MAX_PATH_LENGTH
from web_callback.state import MAX_RETURN_TO

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_REQUEST_BODY_BYTES",
    "AccountList",
    "AccountView",
    "AttemptView",
    "BlueskyConnectBody",
    "ConnectBody",
    "ConnectStarted",
    "Enqueued",
    "ErrorBody",
    "EventData",
    "EventList",
    "EventPayload",
    "EventView",
    "LoginStarted",
    "PlatformAnswerView",
    "PlatformList",
    "PlatformRequestBody",
    "PlatformView",
    "TokenView",
    "validation_details",
]

#: a request body larger than this is refused before it is parsed
MAX_BODY_BYTES = 16 * 1024
#: ``POST /v1/accounts/{id}/request`` carries a post's text or a record: a larger allowance
MAX_REQUEST_BODY_BYTES = 256 * 1024

Ident = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@\-]+$")]


class ConnectBody(BaseModel):
    """``POST /v1/connect/{platform}`` for the redirect-flow platforms (and Mastodon)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    site_id: Ident
    user_id: Ident
    return_to: str | None = Field(default=None, max_length=MAX_RETURN_TO)
    #: the Mastodon instance (host or URL); required for mastodon, refused elsewhere
    instance: str | None = Field(default=None, min_length=1, max_length=255)


class BlueskyConnectBody(BaseModel):
    """``POST /v1/connect/bluesky``: with ``app_password`` the worker logs in with it; without,
    the connect goes by AT Protocol OAuth (the person signs in at their own PDS)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    site_id: Ident
    user_id: Ident
    handle: str = Field(min_length=3, max_length=253, pattern=r"^@?[A-Za-z0-9.\-:]+$")
    app_password: SecretStr | None = Field(default=None, min_length=1, max_length=128)
    return_to: str | None = Field(default=None, max_length=MAX_RETURN_TO)


QueryScalar = str | int | float | bool


class PlatformRequestBody(BaseModel):
    """``POST /v1/accounts/{id}/request``: a call to make on the account's platform."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    #: relative to the platform's API base, on its allow-list (``/users/me``, ``/api/v1/statuses``)
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    query: dict[Annotated[str, Field(min_length=1, max_length=128)], QueryScalar | list[QueryScalar]] = Field(
        default_factory=dict
    )
    #: the JSON body to send; null (or absent): none
    body: JsonValue = None


# ---- answers ------------------------------------------------------------------------------------


class PlatformView(BaseModel):
    """One item of ``GET /v1/platforms``."""

    platform: str
    auth_type: Literal["oauth2", "app_password"]
    configured: bool
    missing_env: list[str]


class PlatformList(RootModel[list[PlatformView]]):
    """``GET /v1/platforms``: every platform, configured or not."""


class ConnectStarted(BaseModel):
    """``201`` of ``POST /v1/connect/{platform}``: send the user's browser to ``authorization_url``."""

    attempt_id: str
    authorization_url: str


class LoginStarted(BaseModel):
    """``202`` of ``POST /v1/connect/bluesky`` with an app password: the worker logs in."""

    attempt_id: str


class AttemptView(BaseModel):
    """``GET /v1/attempts/{attempt_id}``."""

    attempt_id: str
    platform: str
    site_id: str
    status: Literal["pending", "connected", "failed"]
    error_code: str | None
    error_message: str | None
    account_ids: list[str]


class AccountView(BaseModel):
    """An account as the API shows it: the public columns of ``social_accounts``, never a token."""

    id: str
    site_id: str
    platform: str
    platform_account_id: str
    account_name: str | None
    account_handle: str | None
    account_avatar: str | None
    token_expires_at: datetime | None
    refresh_token_expires_at: datetime | None
    scopes: list[str]
    followers_count: int | None
    following_count: int | None
    posts_count: int | None
    engagement_rate: float | None
    status: Literal["active", "error", "rate_limited", "expired", "disconnected"]
    health_score: int = Field(ge=0, le=100)
    last_synced_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: the status explained in one sentence
    health_reason: str


class AccountList(RootModel[list[AccountView]]):
    """``GET /v1/sites/{site_id}/accounts``: the site's accounts, oldest first."""


class Enqueued(BaseModel):
    """``202`` of the account actions: the work is on the queue."""

    account_id: str
    enqueued: Literal["refresh", "sync", "disconnect", "purge"]


class TokenView(BaseModel):
    """``POST /v1/accounts/{id}/token``: a token valid now."""

    access_token: str
    expires_at: datetime | None


class PlatformAnswerView(BaseModel):
    """``POST /v1/accounts/{id}/request``: the platform's answer as it came."""

    status: int
    headers: dict[str, str]
    #: JSON when the platform answered JSON, else its text; null when empty
    body: JsonValue


Status = Literal["active", "error", "rate_limited", "expired", "disconnected"]
EventType = Annotated[str, Field(json_schema_extra={"enum": list(EVENT_TYPES)})]


class EventData(BaseModel):
    """What an event says: ids, statuses, health and codes, never a token (docs/events.schema.json)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    account_id: str | None
    site_id: str
    platform: str
    attempt_id: str | None = None
    status_from: Status | None = None
    status_to: Status | None = None
    health_score: Annotated[int, Field(ge=0, le=100)] | None = None
    health_reason: str | None = None
    error_code: str | None = None
    reason: str | None = None


class EventPayload(BaseModel):
    """A webhook's body (the Standard Webhooks payload shape)."""

    type: EventType
    timestamp: datetime
    data: EventData


class EventView(EventPayload):
    """One event of ``GET /v1/events``: the webhook body plus its id and replay cursor."""

    id: str
    cursor: str


class EventList(BaseModel):
    """``GET /v1/events``: events after the cursor, in order; ``next`` continues from the last."""

    events: list[EventView]
    next: str


class ErrorBody(BaseModel):
    """Every refusal: a machine code and a sentence (``web_callback.errors``), sometimes more."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
    #: the env vars an unconfigured platform lacks
    missing_env: list[str] | None = None
    #: the fields of a refused body (``422``), never their values
    details: list[dict[str, JsonValue]] | None = None


def validation_details(exc: ValidationError) -> list[dict[str, object]]:
    """Field errors without the offending input values (one may be a password)."""
    return [
        {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_input=False, include_url=False)
    ]
