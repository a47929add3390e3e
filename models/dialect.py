"""``INSERT ... ON CONFLICT`` for whichever backend a statement runs on.

PostgreSQL and SQLite both implement ``ON CONFLICT`` with the same shape, but SQLAlchemy exposes
it through dialect-specific ``insert`` constructs
(https://docs.sqlalchemy.org/en/20/dialects/postgresql.html#insert-on-conflict-upsert); this
picks the right one so each upsert is written once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

__all__ = ["dialect_insert", "upsert_insert"]

_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def dialect_insert(dialect: str, table: Any) -> Any:
    """``insert(table)`` with ``on_conflict_do_update/do_nothing``, for the backend named ``dialect``."""
    insert = _INSERTS.get(dialect)
    if insert is None:
        raise RuntimeError(f"unsupported database backend {dialect!r}")
    return insert(table)


def upsert_insert(session: Session, table: Any) -> Any:
    """``dialect_insert`` for the session's backend."""
    return dialect_insert(session.get_bind().dialect.name, table)
