"""Hot-path statements run straight on psycopg (PostgreSQL only), from the same Core statements.

Why: a token refresh is one read and one write, and SQLAlchemy's execution machinery around
each (pool checkout with an isolation-level switch for autocommit, compiled-cache lookup,
result proxies) cost a refresh several times what psycopg itself spends on the statement
(``bench/refresh_cpu.py``: ~440 us for the read against ~45 us on the cursor). Workers are
CPU-bound on small machines, so the refresh path runs its two statements here.

What stays the same: the SQL is compiled once from the Core statement the rest of the code uses
(one definition), with SQLAlchemy's own bind defaults; a connection that fails is closed, and
the error is re-raised as SQLAlchemy's ``OperationalError`` with ``connection_invalidated`` set,
which is what callers already handle. Other dialects (SQLite under ``run``) never get here:
``for_engine`` is None.

Connections: made by the engine (its URL, connect arguments and connect events), then detached
from its pool and kept here, in autocommit, in a plain list. Checking one out of SQLAlchemy's
pool and back (events, reset, switching autocommit on and off) cost a refresh more CPU than
either of its statements; a list ``pop``/``append`` is atomic and costs nothing. One idle longer
than ``ping_after_idle`` seconds is pinged first, as the engine's own pool does.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ClauseElement

__all__ = ["DirectStatement", "DirectSession", "for_engine"]


class DirectStatement:
    """A Core statement compiled once for psycopg: its SQL, bind defaults and JSON parameters."""

    def __init__(self, statement: ClauseElement, engine: Engine) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql: str = str(compiled)
        #: binds with a value of their own (``token_version + 1``'s 1), sent unless overridden
        defaults = cast(Any, compiled).construct_params(_check=False) or {}
        self.defaults = {k: v for k, v in defaults.items() if v is not None}
        #: JSON-typed binds (SQLAlchemy would serialize them; psycopg needs them wrapped)
        self.json_params = frozenset(
            bind.key for bind in cast(Any, compiled).binds.values() if isinstance(bind.type, sa.JSON)
        )

    def params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        params = {**self.defaults, **given}
        for name in self.json_params & params.keys():
            params[name] = Jsonb(params[name])
        return params


#: idle connections a direct session keeps (more are closed when they come back)
MAX_IDLE = 16
#: a connection idle this long is pinged before use (a database restart leaves it dead)
PING_AFTER_IDLE = 30.0


class DirectSession:
    """Autocommit psycopg connections of an engine's database, one statement at a time."""

    def __init__(self, engine: Engine, *, ping_after_idle: float = PING_AFTER_IDLE) -> None:
        self._engine = weakref.ref(engine)
        self._statements: dict[object, DirectStatement] = {}
        self._lock = threading.Lock()
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []
        self._ping_after_idle = ping_after_idle
        self._pid = os.getpid()
        # closed with the engine (``dispose``) or with this session, in the process that made them
        idle, pid = self._idle, self._pid
        sa.event.listen(engine, "engine_disposed", lambda _engine: _close_idle(idle, pid))
        weakref.finalize(self, _close_idle, idle, pid)

    def statement(self, key: object, build: Any) -> DirectStatement:
        """The compiled form of ``build()`` under ``key``, compiled on first use."""
        found = self._statements.get(key)
        if found is None:
            with self._lock:
                found = self._statements.get(key)
                if found is None:
                    found = self._statements[key] = DirectStatement(build(), self.engine)
        return found

    @property
    def engine(self) -> Engine:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the engine of this direct session was garbage-collected")
        return engine

    def _checkout(self) -> psycopg.Connection[Any]:
        if os.getpid() != self._pid:  # a forked child: the parent's connections are not ours
            _close_idle(self._idle, self._pid)
            self._pid = os.getpid()
        while True:
            try:
                conn, returned = self._idle.pop()
            except IndexError:
                return self._connect()
            if conn.closed or conn.broken:
                continue
            if time.monotonic() - returned < self._ping_after_idle:
                return conn
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                conn.close()
                continue
            return conn

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            fairy = self.engine.raw_connection()
        except sa.exc.OperationalError as exc:  # cannot connect (restarting): worth another try
            exc.connection_invalidated = True
            raise
        except psycopg.OperationalError as exc:
            raise sa.exc.OperationalError("connect", None, exc, connection_invalidated=True) from None
        conn: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
        fairy.detach()  # ours from now on: the engine's pool makes itself another when it needs one
        conn.autocommit = True
        return conn

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken:
            return
        if len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        self._idle.append((conn, time.monotonic()))

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._checkout()
        try:
            yield conn
        except psycopg.OperationalError as exc:
            lost = conn.broken or conn.closed
            if lost:
                conn.close()
            raise sa.exc.OperationalError("direct statement", None, exc, connection_invalidated=lost) from None
        except psycopg.IntegrityError as exc:  # what callers catch to retry a racing insert
            self._checkin(conn)
            raise sa.exc.IntegrityError("direct statement", None, exc) from None
        except BaseException:
            if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self._checkin(conn)
            else:  # interrupted mid-statement: its state is unknown, so it is not reused
                conn.close()
            raise
        else:
            self._checkin(conn)

    def fetch_one(self, statement: DirectStatement, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(statement.sql, statement.params(params), prepare=True)
            return cur.fetchone()

    def execute(self, statement: DirectStatement, params: Mapping[str, Any]) -> int:
        """Run one statement in autocommit; its row count."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(statement.sql, statement.params(params), prepare=True)
            return cur.rowcount


#: connections a forked child inherited: kept referenced, never closed or collected there (closing
#: them would end the parent's sessions; collecting them warns)
_inherited: list[object] = []


def _close_idle(idle: list[tuple[psycopg.Connection[Any], float]], pid: int) -> None:
    """Close a session's idle connections, in the process that opened them."""
    taken = list(idle)
    idle.clear()
    if os.getpid() != pid:
        _inherited.extend(taken)
        return
    for conn, _returned in taken:
        conn.close()


_sessions: weakref.WeakKeyDictionary[Engine, DirectSession] = weakref.WeakKeyDictionary()
_sessions_lock = threading.Lock()


def for_engine(engine: Engine) -> DirectSession | None:
    """The engine's direct session on PostgreSQL (one per engine), None elsewhere."""
    if engine.dialect.name != "postgresql":
        return None
    session = _sessions.get(engine)
    if session is None:
        with _sessions_lock:
            session = _sessions.get(engine)
            if session is None:
                session = _sessions[engine] = DirectSession(engine)
    return session
