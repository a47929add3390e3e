"""``workers.retrying.backoff_ms``: exponential by retry, jittered in ``[1, 2)`` times the step, capped.

Its documented shape (the docstring): ``min_backoff_ms * 2**retries * U(1, 2)``, never above
``max_backoff_ms``. The random source is injected (``rng``), so every number here is exact.
"""

from __future__ import annotations

import random

import pytest

from social_accounts.errors import Transient
from workers.retrying import CONNECT_POLICY, RetryPolicy, Step, backoff_ms, decide

pytestmark = pytest.mark.unit


class PinnedRandom(random.Random):
    """``uniform(a, b)`` answers ``a + share * (b - a)`` and remembers every range it was asked for."""

    def __init__(self, share: float) -> None:
        super().__init__(0)
        self.share = share
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return a + self.share * (b - a)


#: no cap in sight: the exponential part alone
WIDE = RetryPolicy(min_backoff_ms=100, max_backoff_ms=10**12)


def test_each_retry_doubles_the_wait() -> None:
    low = [backoff_ms(n, WIDE, PinnedRandom(0.0)) for n in range(11)]
    high = [backoff_ms(n, WIDE, PinnedRandom(0.5)) for n in range(11)]

    assert low == [100 * 2**n for n in range(11)]
    assert high == [150 * 2**n for n in range(11)]
    # and with the production policy, the first steps below its cap
    assert [backoff_ms(n, CONNECT_POLICY, PinnedRandom(0.0)) for n in range(5)] == [2_000, 4_000, 8_000, 16_000, 32_000]


def test_jitter_is_drawn_from_one_to_two_times_the_step() -> None:
    rng = PinnedRandom(0.25)
    assert backoff_ms(3, WIDE, rng) == 1_000  # 800 * 1.25
    assert rng.asked == [(1.0, 2.0)]  # only ever adds, never more than doubles


@pytest.mark.parametrize("retries", [0, 1, 4, 9])
def test_seeded_jitter_stays_within_the_documented_range_and_spreads_over_it(retries: int) -> None:
    step = WIDE.min_backoff_ms * 2**retries
    rng = random.Random(20260101 + retries)
    waits = [backoff_ms(retries, WIDE, rng) for _ in range(2_000)]

    assert all(step <= wait <= 2 * step for wait in waits)
    # full jitter over the range, not a constant: both ends are reached within 5 % ...
    assert min(waits) < step * 1.05 and max(waits) > step * 1.95
    # ... and the draws are spread (at least 10 % of them in each fifth of the range)
    fifths = [0] * 5
    for wait in waits:
        fifths[min(4, (wait - step) * 5 // step)] += 1
    assert min(fifths) > len(waits) // 10
    # the same seed gives the same waits: a test can pin them
    again = random.Random(20260101 + retries)
    assert [backoff_ms(retries, WIDE, again) for _ in range(2_000)] == waits


def test_waits_are_capped_at_the_policy_maximum() -> None:
    policy = RetryPolicy(min_backoff_ms=2_000, max_backoff_ms=60_000)
    # 2 s * 2**4 = 32 s: the jitter alone carries it over the cap
    assert backoff_ms(4, policy, PinnedRandom(0.0)) == 32_000
    assert backoff_ms(4, policy, PinnedRandom(0.99)) == 60_000
    for retries in (5, 6, 10, 20, 21, 100, 10**6):
        for share in (0.0, 0.5, 0.999):
            assert backoff_ms(retries, policy, PinnedRandom(share)) == 60_000
    rng = random.Random(7)
    assert all(backoff_ms(n, policy, rng) <= 60_000 for n in range(50) for _ in range(20))


def test_a_transient_failure_waits_the_backoff_of_its_retry() -> None:
    """``decide`` hands the transient retry exactly that wait (same policy, same random source)."""
    policy = RetryPolicy(min_backoff_ms=500, max_backoff_ms=30_000)
    error = Transient("platform error", platform="twitter", status=503)
    fetch = Step("fetch_accounts", fail_code="profile_fetch_failed")
    for retries in range(policy.max_transient):
        decision = decide(error, step=fetch, retries=retries, policy=policy, rng=random.Random(3))
        assert (decision.action, decision.code) == ("retry", None)
        assert decision.delay_ms == backoff_ms(retries, policy, random.Random(3))
    spent = decide(error, step=fetch, retries=policy.max_transient, policy=policy)
    assert (spent.action, spent.delay_ms, spent.code) == ("give_up", None, "profile_fetch_failed")
