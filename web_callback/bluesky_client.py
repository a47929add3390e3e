"""The Bluesky OAuth client's public documents: its metadata (the ``client_id`` URL) and its JWKS.

An AT Protocol authorization server fetches ``PUBLIC_URL/oauth/bluesky/client-metadata.json``
to learn who the client is, and ``PUBLIC_URL/oauth/bluesky/jwks.json`` to check its client
assertions (https://atproto.com/specs/oauth#clients). Both are public and built from settings
alone (``platforms.bluesky_oauth.ClientIdentity``): no database, no secret in them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from platforms.bluesky_oauth import ClientIdentity
from social_accounts.errors import ConfigError

__all__ = ["client_metadata", "jwks"]

#: servers cache these; a rotation shows within minutes
_CACHE = {"Cache-Control": "public, max-age=300"}


def _client(request: Request) -> ClientIdentity:
    return ClientIdentity(request.app.state.services.settings)


async def client_metadata(request: Request) -> Response:
    return JSONResponse(_client(request).metadata(), headers=_CACHE)


async def jwks(request: Request) -> Response:
    try:
        document = _client(request).jwks()
    except ConfigError as exc:  # names the key id, never the key
        return PlainTextResponse(f"{exc}\n", status_code=503)
    return JSONResponse(document, headers=_CACHE)
