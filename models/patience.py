"""Retrying a database write across a lost connection, for writes that must not be given up.

Two writes in this service hold something nothing else can give back: the tokens a code
exchange bought (the code is spent) and the tokens a rotating refresh returned (the old refresh
token may be spent). If the database restarts at that moment, raising would hand the work to
Dramatiq, whose retry cannot buy the tokens again. So those writes wait for the database here,
with backoff, for a bounded time.

Only a lost connection is retried, or one that could not be made: SQLAlchemy's
``OperationalError`` with ``connection_invalidated``, which SQLAlchemy sets for a connection lost
mid-statement and :func:`models.oneshot.connect` for one that could not be made. A statement
error would only fail again. A commit whose answer was lost is retried too; both callers make
a second write of the same tokens harmless (the refresh's ``token_version`` fence, the
attempt's stage check).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")

log = logging.getLogger(__name__)

#: the first pause after a lost connection; each later one doubles, up to the caller's cap
FIRST_PAUSE_SECONDS = 0.25


def retry_while_unreachable(
    attempt: Callable[[], T],
    *,
    patience: float,
    max_pause: float,
    warning: str,
    extra: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``attempt()``, again after a pause each time the connection is lost, for ``patience`` seconds.

    ``warning`` is logged (with ``extra``) before each pause; it must name what waits, never a
    secret. The last ``OperationalError`` is raised when the next pause would end past the
    deadline, and any other error at once.
    """
    deadline = clock() + patience
    pause = FIRST_PAUSE_SECONDS
    while True:
        try:
            return attempt()
        except sa.exc.OperationalError as exc:
            if not exc.connection_invalidated or clock() + pause > deadline:
                raise
        log.warning(warning, extra=dict(extra or {}))
        sleep(pause)
        pause = min(pause * 2, max_pause)
