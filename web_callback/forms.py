"""Reading a posted form with a size limit that holds for every body, chunked ones included.

Why: Starlette's ``Request.form()`` reads the whole body before it can be refused, and a chunked
body declares no ``Content-Length`` to check first (it bounds each field at 1 MB, not the body).
So the form is parsed from a ``receive`` that counts the bytes as they arrive and stops at the
limit: never more than one chunk past it is read.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import Message

from web_callback.schemas import MAX_BODY_BYTES

__all__ = ["read_form"]


class _TooLarge(Exception):
    """The body went past the limit while it was being read."""


async def read_form(request: Request, *, max_fields: int, limit: int = MAX_BODY_BYTES) -> FormData | None:
    """The posted form (no files), or None when the body is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    size = 0

    async def bounded() -> Message:
        nonlocal size
        message = await request.receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise _TooLarge
        return message

    try:
        return await Request(request.scope, bounded).form(max_files=0, max_fields=max_fields)
    except _TooLarge:
        return None
