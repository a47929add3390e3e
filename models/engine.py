"""The one place that turns ``DATABASE_URL`` into a SQLAlchemy engine.

Why each setting:

* PostgreSQL (psycopg 3): ``postgresql://`` means psycopg2 to SQLAlchemy, which is not installed,
  so it is rewritten to ``postgresql+psycopg://``. ``pool_pre_ping`` survives database restarts
  (workers pass ``ping_after_idle`` instead, to spare busy connections a round trip on every
  checkout: only a connection idle that long is pinged, and a connection that dies under
  load fails one statement, which invalidates the pool and is retried by the caller);
  ``-c timezone=utc`` makes timestamptz come back in UTC; the pool is sized for a worker
  process's threads (one session per actor call); ``connect_timeout`` keeps a blackholed host
  from hanging start-up.
* SQLite (the embedded default): WAL lets readers run while one writer writes,
  ``check_same_thread=False`` lets the pool hand connections to worker threads, and a busy
  timeout makes a second writer wait instead of failing with "database is locked". The file
  holds account names, handles and (encrypted) tokens: it is created readable by its owner only
  (0600, like ``secrets.env``) before SQLite opens it; SQLite gives its ``-wal`` and ``-shm``
  files the main file's permissions (https://www.sqlite.org/tempfiles.html, and ``robust_open``
  in os_unix.c), so they are 0600 too.

``check_database`` turns "the database does not answer" into one ``ConfigError`` line (no
driver traceback), which is what an operator needs at start-up.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from social_accounts.errors import ConfigError

__all__ = ["DATABASE_FILE_MODE", "check_database", "create_private_file", "make_engine", "normalize_url", "safe_url"]

#: seconds a SQLite writer waits for another writer before giving up
SQLITE_BUSY_TIMEOUT = 15
#: seconds to wait for PostgreSQL to accept a connection
PG_CONNECT_TIMEOUT = 5


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the psycopg 3 driver for PostgreSQL (``ConfigError`` when unparsable)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("DATABASE_URL is not a valid database URL") from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigError(f"DATABASE_URL must be postgresql+psycopg://... or sqlite:///..., not {parsed.drivername}://")
    return parsed


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def make_engine(
    url: str | URL,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    echo: bool = False,
    ping_after_idle: float | None = None,
    prepare_threshold: int | None = 5,
) -> Engine:
    """An engine configured for this service.

    Parameters:
      url: ``DATABASE_URL``.
      pool_size(int): steady connections (PostgreSQL); at least the worker threads per process.
      max_overflow(int): extra connections allowed under bursts.
      ping_after_idle(float): PostgreSQL only; ping a pooled connection on checkout only when it
        sat unused this many seconds, instead of on every checkout (``pool_pre_ping``).
      prepare_threshold(int | None): PostgreSQL only; psycopg's ``prepare_threshold``
        (``DATABASE_PREPARE_THRESHOLD``): ``None`` never prepares on the server, as PgBouncer in
        transaction mode needs before 1.21 (https://www.psycopg.org/psycopg3/docs/advanced/prepare.html).
    """
    parsed = normalize_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, echo=echo)
        engine = sa.create_engine(
            parsed,
            pool_pre_ping=ping_after_idle is None,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_recycle=1800,
            connect_args={
                "options": "-c timezone=utc",
                "connect_timeout": PG_CONNECT_TIMEOUT,
                "prepare_threshold": prepare_threshold,
            },
            echo=echo,
        )
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"DATABASE_URL {safe_url(parsed)} cannot be used: {_first_line(exc)}") from None
    if ping_after_idle is not None:
        _ping_when_idle(engine, ping_after_idle)
    return engine


def _ping_when_idle(engine: Engine, seconds: float) -> None:
    """SQLAlchemy's pessimistic-disconnect recipe, for connections idle ``seconds`` or more only.

    A failed ping raises ``DisconnectionError``: the pool drops that connection and checks out
    another (a fresh one after a database restart), exactly as ``pool_pre_ping`` would.
    """

    @event.listens_for(engine.pool, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < seconds:
            return  # just connected, or in use moments ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection idle {seconds:.0f}s or more is gone") from exc


def _sqlite_engine(parsed: URL, *, echo: bool) -> Engine:
    in_memory = parsed.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT},
        "echo": echo,
    }
    if in_memory:  # one shared connection, or every thread would see its own empty database
        kwargs["poolclass"] = StaticPool
    else:
        create_private_file(str(parsed.database))
    engine = sa.create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


#: mode of a database file this service creates: owner read and write only
DATABASE_FILE_MODE = 0o600


def create_private_file(path: str) -> None:
    """Create the SQLite file ``path`` with mode 0600 unless it exists (an existing file keeps its mode).

    ``O_EXCL`` makes creating and setting the mode one step, so no other process ever sees the
    file with wider permissions. A URI filename (``file:...``) is left to SQLite, and so is a
    path that cannot be created here (a missing directory): SQLite then reports it in its words.
    """
    if path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE)
    except OSError:  # FileExistsError included
        return
    os.close(fd)


def check_database(engine: Engine) -> None:
    """Connect once and run ``SELECT 1``; any failure becomes one clear ``ConfigError`` line."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except DBAPIError as exc:
        reason = _first_line(exc.orig) if exc.orig is not None else type(exc).__name__
        raise ConfigError(f"database {safe_url(engine.url)} does not answer: {reason}") from None
    except SQLAlchemyError as exc:
        raise ConfigError(f"database {safe_url(engine.url)} cannot be used: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (driver errors span several lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__
