"""Bearer-token guard for the server-to-server ``/v1`` API.

A plain ASGI middleware (mounted on ``/v1`` only, so the browser-facing callback and the health
endpoints stay open). The token is compared with ``hmac.compare_digest`` on bytes so the time
taken does not reveal how much of a guess was right. A missing or wrong token is ``401`` with a
``WWW-Authenticate`` header; the offered token is never logged or echoed.
"""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["BearerAuth", "token_matches"]


def token_matches(header: str | None, expected: str) -> bool:
    """True when ``header`` is ``Bearer <expected>`` (scheme case-insensitive)."""
    if not header or not expected:
        return False
    scheme, _, offered = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(offered.strip().encode("utf-8"), expected.encode("utf-8"))


class BearerAuth:
    """Refuse every HTTP request whose ``Authorization`` header does not carry the API token."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if not token_matches(header, self.token):
            response = JSONResponse(
                {"error": "unauthorized", "message": "a valid 'Authorization: Bearer <API_TOKEN>' header is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="social-accounts"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
