"""Running a Lua script on Redis in one round trip, on a thread's channel (``workers.redis_channel``).

Why not redis-py's ``Script`` or ``Lock``: both are fine, but on the refresh path every Redis
command is a noticeable share of a worker's CPU (``bench/refresh_cpu.py``), and their
per-call Python (argument normalisation, a script object bound to one client) costs more than
the command. Here a script is hashed once at import and sent with ``EVALSHA``; when the server
does not know it yet (new or restarted Redis, ``SCRIPT FLUSH``) it is sent once with ``EVAL``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from workers.redis_channel import Posted, ReplyLater

__all__ = ["SHORT_SCRIPT", "LuaScript"]

#: bytes of Lua up to which a posted script is always sent in full (``LuaScript.post``)
SHORT_SCRIPT = 512


@dataclass(frozen=True)
class LuaScript:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def call(self, channel: ReplyLater, keys: list[str], args: list[Any]) -> Any:
        """Run the script on ``channel`` and return its reply."""
        try:
            return channel.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return channel.call("EVAL", self.source, len(keys), *keys, *args)

    def post(self, channel: ReplyLater, keys: list[str], args: list[Any]) -> Posted:
        """Run the script on ``channel`` without waiting for its reply (``ReplyLater.post``).

        The server must run it *now*, even if it does not know the script: a ``NOSCRIPT`` answer
        is only read later, and a lock release that waited for that would still hold the lock
        when the same thread asks for it again. So a short script (a few hundred bytes, where
        the SHA saves nothing) always goes in full; a long one (Dramatiq's dispatch script, 8 KB
        per ack) goes in full the first time on each connection (a new or restarted Redis gets
        a new connection) and by SHA after that; only a ``SCRIPT FLUSH`` on a live server then
        delays it, until the ``NOSCRIPT`` reply is read and it is sent in full.
        """

        def resend(later: ReplyLater, error: ResponseError) -> Posted | None:
            if isinstance(error, NoScriptError):
                return later.post("EVAL", self.source, len(keys), *keys, *args)
            return None

        if len(self.source) <= SHORT_SCRIPT or not channel.sent_script(self.sha):
            return channel.post("EVAL", self.source, len(keys), *keys, *args)
        return channel.post("EVALSHA", self.sha, len(keys), *keys, *args, on_error=resend)
