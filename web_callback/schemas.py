"""Request bodies of the ``/v1`` API, with size limits.

Every string has a maximum length so a caller cannot make us store (or sign into a state)
something unbounded; unknown fields are refused so a typo is an error rather than silently
ignored. Validation failures become ``422`` with pydantic's field paths (never the values:
``app_password`` must not be echoed back).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from web_callback.state import MAX_RETURN_TO

__all__ = ["MAX_BODY_BYTES", "BlueskyConnectBody", "ConnectBody", "validation_details"]

#: a request body larger than this is refused before it is parsed
MAX_BODY_BYTES = 16 * 1024

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


def validation_details(exc: ValidationError) -> list[dict[str, object]]:
    """Field errors without the offending input values (one may be a password)."""
    return [
        {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_input=False, include_url=False)
    ]
