"""Column types that behave the same on PostgreSQL and SQLite.

* ``UTCDateTime``: PostgreSQL stores ``timestamptz`` and (with the session pinned to UTC) returns
  aware values, but SQLite has no time zone at all and hands back naive datetimes. Comparing an
  aware "now" with a naive value raises ``TypeError`` deep inside a worker, so every value is
  normalised to UTC on the way in and comes back aware on the way out, whatever the backend.
  Naive datetimes are refused on bind: they are always a bug (whose local time?).
* ``json_dict()`` / ``json_list()``: plain JSON does not notice ``row.history.append(...)``;
  ``MutableDict``/``MutableList`` do, so in-place edits are flushed. PostgreSQL gets JSONB.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.mutable import MutableDict, MutableList

__all__ = ["UTCDateTime", "json_dict", "json_list", "json_type"]


def json_type() -> sa.types.TypeEngine[Any]:
    """JSON on SQLite, JSONB on PostgreSQL (a fresh instance each call: see ``json_dict``)."""
    return sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only accepts and only returns aware UTC datetimes."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime refused: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":  # stored as text without offset; always UTC by construction
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw text from SQLite when the type was bypassed
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_dict() -> sa.types.TypeEngine[Any]:
    """A JSON object column whose in-place edits are tracked.

    ``as_mutable`` tracks every column whose type *is* the instance it was given, so each column
    needs its own instance; sharing one would make dict columns MutableList and vice versa.
    """
    return MutableDict.as_mutable(json_type())


def json_list() -> sa.types.TypeEngine[Any]:
    """A JSON array column whose in-place edits (append, extend...) are tracked."""
    return MutableList.as_mutable(json_type())
