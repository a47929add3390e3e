"""Run the Alembic migrations from code, wherever the process was started.

The Alembic ``Config`` is built here, with ``script_location`` pointing at this package's
``migrations`` directory, instead of being read from an ``alembic.ini`` relative to the current
directory: ``social-accounts migrate``, ``social-accounts run`` and the tests all work from any
CWD and from an installed wheel. On PostgreSQL the upgrade holds a transaction-scoped advisory
lock, so two processes starting at once (say ``run`` and a ``migrate`` job) migrate one after
the other instead of racing on ``CREATE TABLE``.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Engine

from models.engine import check_database, make_engine

__all__ = ["MIGRATIONS_DIR", "alembic_config", "current_revision", "downgrade", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: arbitrary constant naming "schema migration" among PostgreSQL advisory locks
_MIGRATION_LOCK_ID = 0x50C1A1_0001


def alembic_config() -> Config:
    """An Alembic configuration that needs no ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")  # paths may contain spaces or commas
    return cfg


def _run(target: str | URL | Engine, action: str, revision: str) -> None:
    engine = target if isinstance(target, Engine) else make_engine(target, pool_size=1, max_overflow=0)
    try:
        check_database(engine)
        cfg = alembic_config()
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            cfg.attributes["connection"] = conn
            if action == "upgrade":
                command.upgrade(cfg, revision)
            else:
                command.downgrade(cfg, revision)
    finally:
        if engine is not target:
            engine.dispose()


def upgrade(target: str | URL | Engine, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` on a database URL (or an engine the caller owns)."""
    _run(target, "upgrade", revision)


def downgrade(target: str | URL | Engine, revision: str) -> None:
    """``alembic downgrade <revision>`` (``"base"`` removes every table of this service)."""
    _run(target, "downgrade", revision)


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` before the first migration)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
