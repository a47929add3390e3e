"""``web_callback.signin`` on both of its stores: in memory (``run``) and in real Redis (production).

Same behaviour on both, driven by an injected clock: a sliding one-minute window of wrong tokens
per address, and signed-out sessions refused until they would have expired.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from web_callback.signin import (
    FAILURE_LIMIT,
    FAILURE_WINDOW,
    LocalSignInStore,
    RedisSignInStore,
    SharedSignInStore,
    SignInStore,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[SignInStore]:
    if request.param == "memory":
        yield LocalSignInStore(clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    try:
        yield RedisSignInStore(client, f"signin-test-{uuid.uuid4().hex[:8]}", clock=clock)
    finally:
        client.close()


def test_the_eleventh_failure_in_a_minute_waits_for_the_oldest_to_leave(store: SignInStore, clock: FakeClock) -> None:
    for _ in range(FAILURE_LIMIT - 1):
        store.failed("203.0.113.1")
        clock.now += 2
    assert store.retry_after("203.0.113.1") == 0.0
    store.failed("203.0.113.1")  # the tenth, 18 s after the first
    assert store.retry_after("203.0.113.1") == pytest.approx(FAILURE_WINDOW - 18)
    assert store.retry_after("203.0.113.2") == 0.0  # per address
    clock.now += FAILURE_WINDOW - 18
    assert store.retry_after("203.0.113.1") == 0.0  # the first left the window: one more try
    store.failed("203.0.113.1")
    assert store.retry_after("203.0.113.1") == pytest.approx(2.0)  # now the second must leave


def test_failures_older_than_the_window_are_forgotten(store: SignInStore, clock: FakeClock) -> None:
    for _ in range(FAILURE_LIMIT):
        store.failed("198.51.100.4")
    assert store.retry_after("198.51.100.4") == pytest.approx(FAILURE_WINDOW)
    clock.now += FAILURE_WINDOW
    assert store.retry_after("198.51.100.4") == 0.0
    store.failed("198.51.100.4")
    assert store.retry_after("198.51.100.4") == 0.0


def test_an_ended_session_is_refused_until_it_would_have_expired(store: SignInStore, clock: FakeClock) -> None:
    assert not store.is_ended("sid-1")
    store.end_session("sid-1", expires_at=clock.now + 3600)
    assert store.is_ended("sid-1")
    assert not store.is_ended("sid-2")
    if isinstance(store, LocalSignInStore):  # Redis expires the key on its own clock
        clock.now += 3600
        assert not store.is_ended("sid-1")


def test_redis_keeps_an_ended_session_only_as_long_as_it_could_be_used(redis_url: str, clock: FakeClock) -> None:
    client = redis.Redis.from_url(redis_url)
    namespace = f"signin-test-{uuid.uuid4().hex[:8]}"
    try:
        store = RedisSignInStore(client, namespace, clock=clock)
        store.end_session("sid-9", expires_at=clock.now + 120)
        assert 0 < client.ttl(f"{namespace}:signin:ended:sid-9") <= 120
        store.end_session("sid-old", expires_at=clock.now - 1)  # already expired: nothing to keep
        assert not client.exists(f"{namespace}:signin:ended:sid-old")
        store.failed("192.0.2.1")
        assert 0 < client.ttl(f"{namespace}:signin:failures:192.0.2.1") <= FAILURE_WINDOW
    finally:
        client.close()


def test_while_redis_is_down_the_process_keeps_counting_and_signing_out(clock: FakeClock) -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = SharedSignInStore(RedisSignInStore(dead, "signin-test", clock=clock), LocalSignInStore(clock=clock))
    try:
        assert store.retry_after("203.0.113.5") == 0.0
        for _ in range(FAILURE_LIMIT):
            store.failed("203.0.113.5")
        assert store.retry_after("203.0.113.5") == pytest.approx(FAILURE_WINDOW)
        store.end_session("sid-3", expires_at=clock.now + 60)
        assert store.is_ended("sid-3")
        assert not store.is_ended("sid-4")
    finally:
        dead.close()


def test_a_session_ended_in_another_process_is_refused_here(redis_url: str, clock: FakeClock) -> None:
    client = redis.Redis.from_url(redis_url)
    namespace = f"signin-test-{uuid.uuid4().hex[:8]}"
    try:
        one = SharedSignInStore(RedisSignInStore(client, namespace, clock=clock), LocalSignInStore(clock=clock))
        two = SharedSignInStore(RedisSignInStore(client, namespace, clock=clock), LocalSignInStore(clock=clock))
        one.end_session("sid-5", expires_at=clock.now + 60)
        assert two.is_ended("sid-5")
        for _ in range(FAILURE_LIMIT):
            one.failed("203.0.113.6")
        assert two.retry_after("203.0.113.6") == pytest.approx(FAILURE_WINDOW)
    finally:
        client.close()
