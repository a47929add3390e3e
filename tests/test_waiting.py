"""The one waiting helper: it returns what the check found, and a check that never holds fails."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.waiting import await_until, wait_until

pytestmark = pytest.mark.unit


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([0, "", "found", "later"])
    assert wait_until(lambda: next(answers), what="an answer", every=0) == "found"


def test_wait_until_fails_naming_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the message \(last: \[\]\)"):
        wait_until(list, what="the message", timeout=0)


def test_await_until_returns_once_the_loop_has_run_what_it_waits_for() -> None:
    async def run() -> int:
        done = asyncio.Event()
        asyncio.get_running_loop().call_soon(done.set)  # runs only if await_until yields to the loop
        return await await_until(lambda: done.is_set() and 7, what="the callback")

    assert asyncio.run(run()) == 7


def test_await_until_fails_naming_what_it_waited_for() -> None:
    calls = itertools.count()
    with pytest.raises(AssertionError, match="waiting for nothing"):
        asyncio.run(await_until(lambda: next(calls) < 0, what="nothing", timeout=0))
