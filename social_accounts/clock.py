"""The service's clock: aware UTC time, injectable wherever time matters.

Every component takes a ``Clock`` (a function returning an aware ``datetime``) so tests can move
time without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)
