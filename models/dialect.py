"""``INSERT ... ON CONFLICT`` for whichever backend a session is bound to.

PostgreSQL and SQLite both implement ``ON CONFLICT`` with the same shape, but SQLAlchemy exposes
it through dialect-specific ``insert`` constructs; this picks the right one so the repository
writes each upsert once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

__all__ = ["upsert_insert"]


def upsert_insert(session: Session, table: Any) -> Any:
    """``insert(table)`` that supports ``on_conflict_do_update/do_nothing`` for the session's backend."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database backend {name!r}")
