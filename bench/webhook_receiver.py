"""The webhook receiver of ``bench/events.py``: an ASGI app that answers every POST with 204 and
counts them; ``GET /count`` → ``{"count", "last"}`` (``last``: epoch seconds of the latest POST),
``DELETE /count`` resets. Bench-only, run by uvicorn in its own process."""

from __future__ import annotations

import json
import time
from typing import Any

state: dict[str, float] = {"count": 0, "last": 0.0}


async def _drain(receive: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await _drain(receive)
    method, path = scope["method"], scope["path"]
    body = b""
    status = 204
    if path == "/count" and method == "GET":
        status, body = 200, json.dumps(state).encode()
    elif path == "/count" and method == "DELETE":
        state.update(count=0, last=0.0)
    elif method == "POST":
        state["count"] += 1
        state["last"] = time.time()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
