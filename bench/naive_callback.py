"""The naive OAuth callback: the reference ``bench/callback.py`` measures ours against.

What anyone would write first with Starlette and Dramatiq: an ``async`` endpoint that verifies
the state, encrypts the code and calls ``actor.send()``, one blocking Redis round trip per
request on the event loop. It does the same work as ours (the same state check, the same
AES-GCM encryption of the code, one ``code_received`` message on the ``connect`` queue, a
``303`` to ``return_to?attempt=<id>``), so the ratio isolates how the enqueue is done.

Bench-only: nothing in the product imports this module. Served by uvicorn with
``--factory naive_callback:create_naive_app``; settings come from the environment like the
product's (``STATE_SECRET``, ``TOKEN_KEYS``, ``BROKER_URL``, ``REDIS_NAMESPACE``).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlencode

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

__all__ = ["create_naive_app"]


def create_naive_app() -> Starlette:
    """A Starlette app with the naive ``GET /oauth/callback``, built from the environment."""
    from models.crypto import KeyRing
    from social_accounts.errors import InputError
    from social_accounts.settings import Settings
    from web_callback.state import verify_state

    settings = Settings(_env_file=None)
    ring = KeyRing.from_settings(settings)
    secret = settings.state_secret or ""
    broker = RedisBroker(url=os.environ["BROKER_URL"], namespace=os.environ["REDIS_NAMESPACE"])

    @dramatiq.actor(actor_name="code_received", queue_name="connect", broker=broker)
    def code_received(
        attempt_id: str, code_enc: str | None = None, error: str | None = None, error_description: str | None = None
    ) -> None:
        """Never runs here: the bench counts what lands in the queue."""

    async def callback(request: Request) -> Response:
        params = request.query_params
        try:
            state = verify_state(params.get("state", ""), secret)
        except InputError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        code = params.get("code")
        code_enc = ring.encrypt(code, table="message", column="code", row_id=state.attempt_id) if code else None
        code_received.send(attempt_id=state.attempt_id, code_enc=code_enc, error=params.get("error"))
        target = state.return_to or settings.public_url
        return RedirectResponse(f"{target}?{urlencode({'attempt': state.attempt_id})}", status_code=303)

    async def bare(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    routes: list[Any] = [Route("/oauth/callback", callback, methods=["GET"]), Route("/bench/bare", bare)]
    return Starlette(routes=routes)
