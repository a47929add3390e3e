"""The one way a test waits for something another thread or process does.

``wait_until(check, what=...)`` returns the first truthy value of ``check()`` (``await_until`` is
the same for a test on an event loop). The timeout only
bounds a failure (a lost message, a hung worker): it is generous on purpose and never a claim
about speed, because a busy 2-core machine may take many times longer than an idle one. A test
that has an event to wait for passes its ``is_set``; one that must show that something did NOT
happen waits for the event that proves it (the message acked, the counter moved) instead of
sleeping and looking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WAIT_SECONDS", "await_until", "wait_until"]

T = TypeVar("T")

#: how long a wait may take before the test fails: only a broken run gets there
WAIT_SECONDS = 60.0


def wait_until(check: Callable[[], T], *, what: str, timeout: float = WAIT_SECONDS, every: float = 0.02) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    Fails with ``what`` (and the last value seen) after ``timeout`` seconds. ``every`` is the pause
    between two checks: short, since the checks are cheap reads of a database, Redis or a flag.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")
        time.sleep(every)


async def await_until(check: Callable[[], T], *, what: str, timeout: float = WAIT_SECONDS, every: float = 0.02) -> T:
    """:func:`wait_until` for a test running on an event loop: the pauses let the loop run the
    timers and tasks the check waits for."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(every)
