"""Redis commands whose reply can wait: one connection per thread, replies read on its next call.

Why: on the refresh path a worker thread's wall time bounds throughput (``bench/refresh.py``),
and every blocking round trip costs far more than its network time on a busy machine: the
thread sleeps, is woken, and then waits for its process's GIL behind seven other threads.
Two Redis commands per message change state that nobody needs the answer to: releasing the
refresh lock and acknowledging the Dramatiq message. Here such a command is *posted*: written to
the socket at once (so Redis runs it at once: the lock is free, the message acked), while its
reply stays in the socket until the same thread's next ``call`` on that connection, which reads
it together with its own reply, in the one wait that call makes anyway.

Commands whose answer is needed (``call``: the lock's acquire, Dramatiq's fetch and enqueue) use
the same connection, built from the client's own settings, without redis-py's pool, retry and
metrics layers around each command: about half the client CPU per command.

A posted command that fails is reported to its ``on_error`` when its reply is read (a Lua script
the server has forgotten is sent again in full, see ``workers.redis_scripts``); a connection
lost with posted replies unread loses only those replies: each such command is one whose loss is
already survivable (a lock expires after its TTL, an unacked message is redelivered).

Threads never share a connection, so no reply can be read by the wrong caller; processes never
share one either (a fork starts afresh). Clients for the same server and database share one
channel per thread, so the broker's and the coordination's commands read each other's replies.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import ConnectionInterface
from redis.exceptions import ResponseError

__all__ = ["Posted", "ReplyLater", "channel_for"]

#: posted replies left unread before a post reads them itself (keeps a post-only thread bounded)
MAX_PENDING = 16

#: called with the error reply of a posted command; may post a replacement whose reply stands for it
OnError = Callable[["ReplyLater", ResponseError], "Posted | None"]


class Posted:
    """A posted command: its reply (or error) once read, by ``ReplyLater.wait`` or any later call."""

    __slots__ = ("done", "error", "on_error", "replaced_by", "reply")

    def __init__(self, on_error: OnError | None) -> None:
        self.on_error = on_error
        self.done = False
        self.reply: Any = None
        self.error: ResponseError | None = None
        self.replaced_by: Posted | None = None


class _Closer:
    """Closes a thread's connection when the thread ends (its ``threading.local`` data is freed)."""

    __slots__ = ("conn",)

    def __init__(self, conn: ConnectionInterface) -> None:
        self.conn = conn

    def __del__(self) -> None:
        self.conn.disconnect()


class _State(threading.local):
    conn: ConnectionInterface | None = None
    closer: _Closer | None = None
    pid: int = 0
    pending: deque[Posted]
    #: SHA1s of the Lua scripts sent in full on this connection (so the server has them cached)
    scripts: set[str]

    def __init__(self) -> None:
        self.pending = deque()
        self.scripts = set()


class ReplyLater:
    """A per-thread connection to one Redis server where replies to posted commands are read late."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        # the pool's settings, not the pool: a channel outlives the clients that asked for it
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._state = _State()

    def _connection(self) -> tuple[ConnectionInterface, _State]:
        state = self._state
        conn = state.conn
        if conn is None or state.pid != os.getpid():
            # built from the pool's settings but not counted in it: it never goes back to the
            # pool, and would otherwise use up a client's ``max_connections`` thread by thread
            conn = state.conn = self._connection_class(**self._connection_kwargs)
            state.pid = os.getpid()
            state.pending.clear()
            state.scripts = set()
            state.closer = _Closer(conn)
        return conn, state

    def sent_script(self, sha: str) -> bool:
        """Whether this thread's connection already sent the script ``sha`` in full; records that
        it is about to (a posted ``EVALSHA`` the server does not know would only be found out,
        and resent, when its reply is read: too late for a lock release)."""
        scripts = self._connection()[1].scripts
        if sha in scripts:
            return True
        scripts.add(sha)
        return False

    def call(self, *args: Any) -> Any:
        """Send ``args`` and return its reply (after reading every posted reply still unread).

        Raises what redis-py raises: ``ResponseError`` for an error reply, ``ConnectionError``
        when the server cannot be reached (the connection is then dropped; the next call opens a
        new one).
        """
        conn, state = self._connection()
        try:
            unread = len(state.pending)
            conn.send_command(*args)
            self._drain(conn, state, unread)
            return conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._drop(conn, state)
            raise

    def post(self, *args: Any, on_error: OnError | None = None) -> Posted:
        """Send ``args`` now; its reply is read by a later ``call``, ``post`` or ``wait`` of this thread.

        Raises ``ConnectionError`` when the command could not be written.
        """
        conn, state = self._connection()
        try:
            if len(state.pending) >= MAX_PENDING:
                self._drain(conn, state, len(state.pending))
            conn.send_command(*args)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._drop(conn, state)
            raise
        posted = Posted(on_error)
        state.pending.append(posted)
        return posted

    def wait(self, posted: Posted) -> Any:
        """The reply to ``posted`` (read now if it was not yet); raises its ``ResponseError``, or
        ``ConnectionError`` when the connection was lost before it was read."""
        while True:
            if not posted.done:
                conn, state = self._connection()
                if posted not in state.pending:
                    raise redis.ConnectionError("the connection of this posted command was lost")
                try:
                    self._drain(conn, state, state.pending.index(posted) + 1)
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    self._drop(conn, state)
                    raise
            if posted.replaced_by is None:
                break
            posted = posted.replaced_by
        if posted.error is not None:
            raise posted.error
        return posted.reply

    def flush(self) -> None:
        """Read every posted reply now (tests, shutdown)."""
        conn, state = self._connection()
        try:
            while state.pending:
                self._drain(conn, state, len(state.pending))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._drop(conn, state)
            raise

    def pending(self) -> int:
        """Posted replies this thread has not read yet."""
        return len(self._state.pending)

    def _drain(self, conn: ConnectionInterface, state: _State, count: int) -> None:
        """Read the replies of the ``count`` oldest posted commands. A replacement an error
        handler posts meanwhile was written after whatever this thread sent last, so it joins the
        end of the queue and is not read here."""
        pending = state.pending
        for _ in range(count):
            posted = pending.popleft()
            try:
                posted.reply = conn.read_response()
            except ResponseError as error:
                posted.error = error
                if posted.on_error is not None:
                    posted.replaced_by = posted.on_error(self, error)
            posted.done = True

    @staticmethod
    def _drop(conn: ConnectionInterface, state: _State) -> None:
        state.pending.clear()
        state.conn = state.closer = None
        conn.disconnect()


_registry: dict[str, ReplyLater] = {}
_registry_lock = threading.Lock()


#: a shortcut past building the identity key, forgotten with the pool
_by_pool: weakref.WeakKeyDictionary[redis.ConnectionPool, ReplyLater] = weakref.WeakKeyDictionary()
#: the connection settings that make two clients talk to the same server and database as the same user
_IDENTITY = ("host", "port", "path", "db", "username", "password")


def channel_for(client: redis.Redis) -> ReplyLater:
    """The channel for ``client``'s server and database (one per distinct connection settings)."""
    pool = client.connection_pool
    known = _by_pool.get(pool)
    if known is not None:
        return known
    kw = pool.connection_kwargs
    key = repr((pool.connection_class, *(kw.get(name) for name in _IDENTITY)))
    with _registry_lock:
        channel = _registry.setdefault(key, ReplyLater(pool))
        _by_pool[pool] = channel
    return channel
