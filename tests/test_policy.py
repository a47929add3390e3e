"""The retry policy with exact bounds: ``workers.retrying.decide`` and ``PolicyMiddleware``.

Pure tests (no service): the decision function with an injected random source, the real
actors' options read through the middleware, and one run on Dramatiq's ``StubBroker`` with a
``Worker`` to prove the decision is what happens to the message.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from social_accounts.errors import (
    InstanceUnreachable,
    LoginFailed,
    NeedsReconnect,
    NotNow,
    RateLimited,
    RequestMaybeSent,
    Transient,
)
from workers.policy_middleware import PolicyMiddleware
from workers.retrying import CONNECT_POLICY, Decision, RetryPolicy, Step, decide, jitter_ceiling_ms

pytestmark = pytest.mark.unit


class PinnedRandom(random.Random):
    """``uniform(a, b)`` answers ``a + share * (b - a)``."""

    def __init__(self, share: float) -> None:
        super().__init__(0)
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + self.share * (b - a)


EXCHANGE = Step("exchange", fail_code="token_exchange_failed", single_use=True)
FETCH = Step("fetch_accounts", fail_code="profile_fetch_failed")
DAY_MS = 24 * 3600 * 1000
LIFECYCLE = RetryPolicy(max_transient=4, max_rate_limited=12, min_backoff_ms=5_000, max_retry_after_ms=DAY_MS)


def limited(seconds: float) -> RateLimited:
    return RateLimited("slow down", retry_after=seconds, platform="twitter", status=429)


# ---- what the error tree says ---------------------------------------------------------------------


def test_the_error_tree_says_what_each_error_allows() -> None:
    assert (Transient("x").retryable, Transient("x").maybe_sent, Transient("x").retry_after) == (True, False, None)
    assert (RequestMaybeSent("x").retryable, RequestMaybeSent("x").maybe_sent) == (True, True)
    assert (limited(30).retryable, limited(30).retry_after) == (True, 30.0)
    assert not NeedsReconnect("x").retryable and NeedsReconnect("x").error_code is None
    assert LoginFailed("x").error_code == "login_failed"
    assert InstanceUnreachable("x").error_code == "instance_unreachable"
    wait = NotNow(12.5, "cooling down")
    assert (wait.retryable, wait.spends_retry, wait.retry_after, wait.seconds) == (True, False, 12.5, 12.5)


# ---- rate limits: at least Retry-After, at most Retry-After plus the jitter ------------------------


@pytest.mark.parametrize("seconds", [1, 30, 600, 3_600])
def test_a_rate_limit_waits_at_least_retry_after_and_at_most_the_jitter_more(seconds: int) -> None:
    floor = seconds * 1000
    ceiling = floor + jitter_ceiling_ms(floor, LIFECYCLE)
    low = decide(limited(seconds), step=FETCH, retries=0, policy=LIFECYCLE, rng=PinnedRandom(0.0))
    high = decide(limited(seconds), step=FETCH, retries=0, policy=LIFECYCLE, rng=PinnedRandom(1.0))
    assert (low.action, low.delay_ms) == ("retry", floor)
    assert (high.action, high.delay_ms) == ("retry", ceiling)
    rng = random.Random(seconds)
    delays = [decide(limited(seconds), step=FETCH, retries=3, policy=LIFECYCLE, rng=rng).delay_ms for _ in range(500)]
    assert all(d is not None and floor <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jittered, not a constant


def test_the_jitter_is_a_tenth_of_the_wait_between_100_ms_and_the_policy_cap() -> None:
    assert jitter_ceiling_ms(0) == 100 and jitter_ceiling_ms(1_000) == 100
    assert jitter_ceiling_ms(30_000) == 3_000
    assert jitter_ceiling_ms(3_600_000) == CONNECT_POLICY.max_jitter_ms == 5_000


def test_a_retry_after_beyond_the_steps_limit_gives_up_with_the_steps_code() -> None:
    refresh = Step("refresh", fail_code="refresh_failed", single_use=True)
    within = decide(limited(DAY_MS / 1000), step=refresh, retries=0, policy=LIFECYCLE, rng=PinnedRandom(0.0))
    assert (within.action, within.delay_ms) == ("retry", DAY_MS)
    beyond = decide(limited(DAY_MS / 1000 + 1), step=refresh, retries=0, policy=LIFECYCLE)
    assert (beyond.action, beyond.code, beyond.delay_ms) == ("give_up", "refresh_failed", None)
    # the connect policy's limit is fifteen minutes
    assert decide(limited(15 * 60 + 1), step=FETCH, retries=0).code == "profile_fetch_failed"


def test_rate_limited_retries_have_their_own_budget() -> None:
    assert decide(limited(1), step=FETCH, retries=LIFECYCLE.max_rate_limited - 1, policy=LIFECYCLE).action == "retry"
    spent = decide(limited(1), step=FETCH, retries=LIFECYCLE.max_rate_limited, policy=LIFECYCLE)
    assert (spent.action, spent.code) == ("give_up", "profile_fetch_failed")


# ---- single-use steps --------------------------------------------------------------------------------


def test_request_maybe_sent_on_a_single_use_step_ends_uncertain_without_retry() -> None:
    for retries in (0, 1):
        decision = decide(RequestMaybeSent("no answer"), step=EXCHANGE, retries=retries)
        assert (decision.action, decision.code, decision.uncertain, decision.delay_ms) == (
            "give_up",
            "exchange_uncertain",
            True,
            None,
        )
    # the same error on a read is retried like any blip
    read = decide(RequestMaybeSent("no answer"), step=FETCH, retries=0, rng=PinnedRandom(0.0))
    assert (read.action, read.delay_ms) == ("retry", CONNECT_POLICY.min_backoff_ms)


# ---- backoff -----------------------------------------------------------------------------------------


def test_transient_retries_back_off_exponentially_up_to_the_cap_then_give_up() -> None:
    policy = RetryPolicy(max_transient=8, min_backoff_ms=1_000, max_backoff_ms=20_000)
    delays = [decide(Transient("503"), step=FETCH, retries=n, policy=policy, rng=PinnedRandom(0.0)) for n in range(8)]
    assert [d.delay_ms for d in delays] == [1_000, 2_000, 4_000, 8_000, 16_000, 20_000, 20_000, 20_000]
    top = [decide(Transient("503"), step=FETCH, retries=n, policy=policy, rng=PinnedRandom(0.99)) for n in range(8)]
    assert all(d.delay_ms is not None and d.delay_ms <= 20_000 for d in top)
    assert decide(Transient("503"), step=FETCH, retries=8, policy=policy).code == "profile_fetch_failed"


def test_final_errors_give_up_at_once_with_their_own_code_or_the_steps() -> None:
    assert decide(NeedsReconnect("invalid_grant"), step=EXCHANGE, retries=0).code == "token_exchange_failed"
    assert decide(LoginFailed("wrong password"), step=Step("login", "login_failed"), retries=0).code == "login_failed"
    unreachable = decide(InstanceUnreachable("no"), step=EXCHANGE, retries=0)
    assert (unreachable.action, unreachable.code) == ("give_up", "instance_unreachable")


def test_unforeseen_exceptions_are_bounded_like_blips_and_flagged() -> None:
    first = decide(RuntimeError("db down"), step=FETCH, retries=0, rng=PinnedRandom(0.0))
    assert (first.action, first.unforeseen, first.delay_ms, first.reason) == ("retry", True, 2_000, "RuntimeError")
    last = decide(RuntimeError("db down"), step=FETCH, retries=CONNECT_POLICY.max_transient)
    assert (last.action, last.unforeseen) == ("give_up", True)


# ---- not now -------------------------------------------------------------------------------------------


def test_not_now_defers_without_a_retry_and_gives_up_when_it_would_outlast_the_message() -> None:
    low = decide(NotNow(30, "cooling down"), step=EXCHANGE, retries=2, rng=PinnedRandom(0.0))
    high = decide(NotNow(30, "cooling down"), step=EXCHANGE, retries=2, rng=PinnedRandom(1.0))
    assert (low.action, low.delay_ms, low.retries) == ("defer", 30_000, 2)
    assert high.delay_ms == 30_000 + jitter_ceiling_ms(30_000)
    too_long = decide(NotNow(3_600, "cooling down"), step=EXCHANGE, retries=0, wait_limit_ms=600_000)
    assert (too_long.action, too_long.code) == ("give_up", "token_exchange_failed")
    assert too_long.reason == "cooling down, longer than the request may wait"


def test_a_wait_beyond_the_messages_age_limit_gives_up_now_with_the_steps_code() -> None:
    """An authorization code lives minutes (``max_age``): a Retry-After past it fails the attempt now."""
    fits = decide(limited(60), step=FETCH, retries=0, wait_limit_ms=61_000, rng=PinnedRandom(0.0))
    assert (fits.action, fits.delay_ms) == ("retry", 60_000)
    late = decide(limited(60), step=FETCH, retries=0, wait_limit_ms=60_000, rng=PinnedRandom(0.0))
    assert (late.action, late.code, late.delay_ms) == ("give_up", "profile_fetch_failed", None)
    # an unforeseen failure keeps its own end (the stage it stopped in decides the code)
    bug = decide(RuntimeError("x"), step=FETCH, retries=0, wait_limit_ms=1, rng=PinnedRandom(0.0))
    assert (bug.action, bug.unforeseen) == ("retry", True)


# ---- the real actors' options, read by the middleware ----------------------------------------------


def _decision(actor: Any, error: BaseException, **kwargs: Any) -> Decision:
    return PolicyMiddleware().decision_for(actor, MessageProxy(actor.message(**kwargs)), error)


def _raised_in(step: str, error: Exception) -> Exception:
    error.step = step  # type: ignore[attr-defined]  # as workers.retrying.step names it
    return error


def test_connect_refresh_and_disconnect_never_repeat_a_single_use_request() -> None:
    from workers import actors, lifecycle_actors

    exchange = _decision(actors.code_received, _raised_in("exchange", RequestMaybeSent("x")), attempt_id="a")
    assert (exchange.action, exchange.code, exchange.uncertain) == ("give_up", "exchange_uncertain", True)
    refresh = _decision(lifecycle_actors.refresh_account, _raised_in("refresh", RequestMaybeSent("x")), account_id="a")
    assert (refresh.action, refresh.code, refresh.uncertain) == ("give_up", "refresh_uncertain", True)
    # the refresh a sync makes first is the same single-use step
    before_sync = _decision(lifecycle_actors.sync_account, _raised_in("refresh", RequestMaybeSent("x")), account_id="a")
    assert (before_sync.action, before_sync.code) == ("give_up", "refresh_uncertain")
    revoke = _decision(lifecycle_actors.disconnect_account, _raised_in("revoke", RequestMaybeSent("x")), account_id="a")
    assert (revoke.action, revoke.code, revoke.uncertain) == ("give_up", "revoke_uncertain", True)
    # reads are retried: the profile fetch of a connect, the counts of a sync
    fetch = _decision(actors.code_received, _raised_in("fetch_accounts", RequestMaybeSent("x")), attempt_id="a")
    stats = _decision(lifecycle_actors.sync_account, _raised_in("sync", RequestMaybeSent("x")), account_id="a")
    assert (fetch.action, stats.action) == ("retry", "retry")


def test_the_lifecycle_actors_wait_a_retry_after_up_to_a_day() -> None:
    from workers import lifecycle_actors

    day = _decision(lifecycle_actors.refresh_account, limited(DAY_MS / 1000), account_id="a")
    assert day.action == "retry" and DAY_MS <= (day.delay_ms or 0) <= DAY_MS + jitter_ceiling_ms(DAY_MS)
    longer = _decision(lifecycle_actors.refresh_account, limited(DAY_MS / 1000 + 60), account_id="a")
    assert (longer.action, longer.code) == ("give_up", "refresh_failed")


# ---- on a broker -------------------------------------------------------------------------------------


@pytest.fixture
def stub() -> Iterator[tuple[StubBroker, dramatiq.Worker]]:
    broker = StubBroker(middleware=[CurrentMessage(), PolicyMiddleware()])
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        yield broker, worker
    finally:
        worker.stop()
        broker.close()


FAST = RetryPolicy(max_transient=2, min_backoff_ms=1, max_backoff_ms=5, max_jitter_ms=5)


def test_on_a_broker_single_use_runs_once_blips_use_the_budget_and_not_now_spends_nothing(
    stub: tuple[StubBroker, dramatiq.Worker],
) -> None:
    broker, worker = stub
    seen: list[tuple[str, Decision]] = []
    runs: dict[str, int] = {}

    def record(message: MessageProxy, decision: Decision) -> None:
        seen.append((message.kwargs["name"], decision))

    options: dict[str, Any] = {"retry_policy": FAST, "on_decision": record, "step": EXCHANGE, "steps": (FETCH,)}

    @dramatiq.actor(broker=broker, actor_name="policy_probe", **options)
    def probe(name: str) -> None:
        runs[name] = runs.get(name, 0) + 1
        if name == "exchange":
            raise RequestMaybeSent("no answer")
        if name == "fetch":
            raise _raised_in("fetch_accounts", Transient("503"))
        if name == "paused" and runs[name] <= 2:
            raise NotNow(0.001, "cooling down")

    for name in ("exchange", "fetch", "paused"):
        probe.send(name=name)
    broker.join(probe.queue_name, fail_fast=False)
    worker.join()

    assert runs == {"exchange": 1, "fetch": 1 + FAST.max_transient, "paused": 3}
    by_name: dict[str, list[Decision]] = {}
    for name, decision in seen:
        by_name.setdefault(name, []).append(decision)
    assert [(d.action, d.code) for d in by_name["exchange"]] == [("give_up", "exchange_uncertain")]
    assert [(d.action, d.retries) for d in by_name["fetch"]] == [("retry", 0), ("retry", 1), ("give_up", 2)]
    assert by_name["fetch"][-1].code == "profile_fetch_failed"
    assert [(d.action, d.retries) for d in by_name["paused"]] == [("defer", 0), ("defer", 0)]  # no retry spent
    # given-up errors of our tree are handled, not dead-lettered
    assert broker.dead_letters == []
