"""Running a Lua script on Redis in one round trip.

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

import redis
from redis.exceptions import NoScriptError

__all__ = ["LuaScript"]


@dataclass(frozen=True)
class LuaScript:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def __call__(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.execute_command("EVAL", self.source, len(keys), *keys, *args)
