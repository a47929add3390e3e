"""One statement as a transaction of its own, through the engine, on PostgreSQL and SQLite alike.

Why: a read that decides nothing alone, or a write that is a single statement, needs no
``BEGIN``/``COMMIT`` round trips around it. The driver's autocommit (SQLAlchemy's ``AUTOCOMMIT``
isolation level, which psycopg and pysqlite both support) runs it atomically all the same:
https://docs.sqlalchemy.org/en/20/core/connections.html#setting-transaction-isolation-levels-including-dbapi-autocommit

The connection is an ordinary checkout from the engine's pool, so pinging (``pool_pre_ping`` or
``models.engine``'s ping after idle), disconnect handling and fork safety are the engine's own,
and the isolation level is reset when the connection goes back. Statements passed here should be
built once at module level: SQLAlchemy then finds their compiled form in its cache.

:func:`connect` marks a connection that could not be made as ``connection_invalidated``, like
one lost mid-statement: for :mod:`models.patience` both mean "the database is unreachable now".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult, Engine, Row
from sqlalchemy.sql.base import Executable

__all__ = ["connect", "execute", "fetch_one"]


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """``engine.connect()``; a failure to connect is raised as a lost connection (retryable)."""
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:  # the database is down or restarting
        exc.connection_invalidated = True
        raise
    with conn:
        yield conn


def fetch_one(engine: Engine, statement: Executable, params: Mapping[str, Any]) -> Row[*tuple[Any, ...]] | None:
    """The first row of ``statement`` run alone in autocommit, or ``None``."""
    with connect(engine) as conn:
        return conn.execution_options(isolation_level="AUTOCOMMIT").execute(statement, params).first()


def execute(engine: Engine, statement: Executable, params: Mapping[str, Any]) -> int:
    """Run ``statement`` alone in autocommit; its row count.

    ``preserve_rowcount``: SQLAlchemy keeps the row count of an ``UPDATE``/``DELETE`` only; the
    refresh write is an ``INSERT … SELECT`` whose count says whether its fence held
    (https://docs.sqlalchemy.org/en/20/core/connections.html#sqlalchemy.engine.Connection.execution_options.params.preserve_rowcount).
    """
    with connect(engine) as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT", preserve_rowcount=True)
        result = conn.execute(statement, params)
        return cast(CursorResult[Any], result).rowcount
