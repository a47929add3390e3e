"""Hot-path statements run straight on psycopg (PostgreSQL only), from the same Core statements.

Why: a token refresh is one read and one write, and SQLAlchemy's execution machinery around
each (pool checkout with an isolation-level switch for autocommit, compiled-cache lookup,
result proxies) cost a refresh several times what psycopg itself spends on the statement
(``bench/refresh_cpu.py``: ~440 us for the read against ~45 us on the cursor). Workers are
CPU-bound on small machines, so the refresh path runs its two statements here.

What stays the same: the SQL is compiled once from the Core statement the rest of the code uses
(one definition), with SQLAlchemy's own bind defaults; connections come from the engine's pool
(with its idle ping) and go back to it as they came (autocommit switched off again); a
connection that fails is invalidated so the pool replaces it, and the error is re-raised as
SQLAlchemy's ``OperationalError`` with ``connection_invalidated`` set, which is what callers
already handle. Other dialects (SQLite under ``run``) never get here: ``for_engine`` is None.
"""

from __future__ import annotations

import threading
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


class DirectSession:
    """Autocommit psycopg connections borrowed from an engine's pool, one statement at a time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        self._statements: dict[object, DirectStatement] = {}
        self._lock = threading.Lock()

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

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            fairy = self.engine.raw_connection()
        except psycopg.OperationalError as exc:  # cannot connect (restarting): worth another try
            raise sa.exc.OperationalError("connect", None, exc, connection_invalidated=True) from None
        conn: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
        try:
            conn.autocommit = True
            yield conn
        except psycopg.OperationalError as exc:
            lost = conn.broken or conn.closed
            if lost:
                fairy.invalidate(exc)
            raise sa.exc.OperationalError("direct statement", None, exc, connection_invalidated=lost) from None
        except psycopg.IntegrityError as exc:  # what callers catch to retry a racing insert
            raise sa.exc.IntegrityError("direct statement", None, exc) from None
        finally:
            if not (conn.closed or conn.broken):
                conn.autocommit = False
            fairy.close()

    def fetch_one(self, statement: DirectStatement, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(statement.sql, statement.params(params), prepare=True)
            return cur.fetchone()

    def execute(self, statement: DirectStatement, params: Mapping[str, Any]) -> int:
        """Run one statement in autocommit; its row count."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(statement.sql, statement.params(params), prepare=True)
            return cur.rowcount


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
