"""``models.patience``: a write that must not be given up waits out a lost connection, and only that.

The clock and the sleep are injected, so the pauses and the deadline are checked exactly; one
test kills the real PostgreSQL backend under the write, as a restart would.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.crypto import KeyRing
from models.engine import make_engine
from models.patience import retry_while_unreachable
from models.repository import fetch_account, upsert_account
from social_accounts.values import AccountProfile, TokenSet

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeTime:
    """A clock that moves only when slept on, recording every pause."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def _lost() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("stmt", None, Exception("server closed the connection"), connection_invalidated=True)


def test_a_lost_connection_is_retried_with_doubling_pauses_until_the_write_lands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()
    failures = [_lost(), _lost(), _lost()]

    def attempt() -> str:
        if failures:
            raise failures.pop()
        return "stored"

    with caplog.at_level(logging.WARNING, logger="models.patience"):
        result = retry_while_unreachable(
            attempt,
            patience=60,
            max_pause=0.6,
            warning="waiting for the database",
            extra={"attempt_id": "att_1"},
            clock=time.clock,
            sleep=time.sleep,
        )
    assert result == "stored"
    assert time.pauses == [0.25, 0.5, 0.6]  # doubled, then capped
    warnings = [r for r in caplog.records if r.name == "models.patience"]
    assert [r.getMessage() for r in warnings] == ["waiting for the database"] * 3
    assert all(getattr(r, "attempt_id", None) == "att_1" for r in warnings)


def test_a_statement_error_is_raised_at_once() -> None:
    time = FakeTime()
    calls = 0

    def attempt() -> None:
        nonlocal calls
        calls += 1
        raise sa.exc.OperationalError("stmt", None, Exception("division by zero"), connection_invalidated=False)

    with pytest.raises(sa.exc.OperationalError, match="division by zero"):
        retry_while_unreachable(attempt, patience=60, max_pause=5, warning="w", clock=time.clock, sleep=time.sleep)
    assert calls == 1 and time.pauses == []


def test_other_errors_pass_through_untouched() -> None:
    time = FakeTime()

    def attempt() -> None:
        raise sa.exc.IntegrityError("stmt", None, Exception("duplicate key"))

    with pytest.raises(sa.exc.IntegrityError):
        retry_while_unreachable(attempt, patience=60, max_pause=5, warning="w", clock=time.clock, sleep=time.sleep)
    assert time.pauses == []


def test_the_last_loss_is_raised_when_the_next_pause_would_pass_the_deadline() -> None:
    time = FakeTime()
    calls = 0

    def attempt() -> None:
        nonlocal calls
        calls += 1
        raise _lost()

    with pytest.raises(sa.exc.OperationalError) as raised:
        retry_while_unreachable(attempt, patience=2.0, max_pause=5, warning="w", clock=time.clock, sleep=time.sleep)
    assert raised.value.connection_invalidated
    assert time.pauses == [0.25, 0.5, 1.0]  # 1.75 s slept; a 2 s pause would end past the deadline
    assert calls == 4


def test_a_backend_killed_under_the_write_is_replaced_and_the_write_lands(engine: Engine, pg_url: str) -> None:
    """Real PostgreSQL: the first statement meets a terminated backend, the retry a fresh one.

    The engine is configured as workers configure it: one pooled connection, pinged only after
    a minute idle, so the statement itself meets the dead backend.
    """
    worker_engine = make_engine(pg_url, pool_size=1, max_overflow=0, ping_after_idle=60)
    try:
        _write_across_a_killed_backend(worker_engine, pg_url)
    finally:
        worker_engine.dispose()


def _write_across_a_killed_backend(engine: Engine, pg_url: str) -> None:
    ring = KeyRing([("k1", os.urandom(32))])
    profile = AccountProfile(
        platform_account_id="p-1", name="A", handle="a", avatar_url=None, tokens=TokenSet(access_token="AT")
    )
    with Session(engine) as s, s.begin():
        account_id, _ = upsert_account(
            s, ring, site_id="s", platform="twitter", user_id="u", profile=profile, next_refresh_at=None, now=NOW
        )
    with engine.connect() as conn:  # the idle connection the next statement will take
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    killer = make_engine(pg_url)
    with killer.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    killer.dispose()

    time = FakeTime()
    snapshot = retry_while_unreachable(
        lambda: fetch_account(engine, ring, account_id),
        patience=15,
        max_pause=2,
        warning="w",
        clock=time.clock,
        sleep=time.sleep,
    )
    assert snapshot is not None and snapshot.tokens.access_token == "AT"
    assert time.pauses == [0.25]  # one loss, one retry
