"""``web_callback.signin`` on both of its stores: in memory (``run``) and in real Redis (production).

Same behaviour on both, driven by an injected clock: a sliding one-minute window of wrong tokens
per address (each try counted before the token is compared, forgiven when it was right), and
signed-out sessions refused until they would have expired.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

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


@pytest.fixture(params=["memory", "redis", "shared"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[SignInStore]:
    if request.param == "memory":
        yield LocalSignInStore(clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    shared = RedisSignInStore(client, f"signin-test-{uuid.uuid4().hex[:8]}", clock=clock)
    try:
        yield shared if request.param == "redis" else SharedSignInStore(shared, LocalSignInStore(clock=clock))
    finally:
        client.close()


def wrong(store: SignInStore, address: str) -> float:
    """One try with a wrong token: counted, never forgiven."""
    return store.try_sign_in(address, uuid.uuid4().hex)


def test_the_eleventh_try_in_a_minute_waits_for_the_oldest_to_leave(store: SignInStore, clock: FakeClock) -> None:
    for _ in range(FAILURE_LIMIT - 1):
        assert wrong(store, "203.0.113.1") == 0.0
        clock.now += 2
    assert wrong(store, "203.0.113.1") == 0.0  # the tenth, 18 s after the first
    assert wrong(store, "203.0.113.1") == pytest.approx(FAILURE_WINDOW - 18)
    assert wrong(store, "203.0.113.2") == 0.0  # per address
    clock.now += FAILURE_WINDOW - 18
    assert wrong(store, "203.0.113.1") == 0.0  # the first left the window: one more try
    assert wrong(store, "203.0.113.1") == pytest.approx(2.0)  # now the second must leave


def test_refused_tries_do_not_count(store: SignInStore, clock: FakeClock) -> None:
    for _ in range(FAILURE_LIMIT):
        wrong(store, "198.51.100.4")
    for _ in range(50):  # hammering while refused does not push the end of the wait
        assert wrong(store, "198.51.100.4") == pytest.approx(FAILURE_WINDOW)
    clock.now += FAILURE_WINDOW
    assert wrong(store, "198.51.100.4") == 0.0


def test_a_forgiven_try_does_not_count(store: SignInStore, clock: FakeClock) -> None:
    for n in range(FAILURE_LIMIT + 5):
        ticket = f"right-{n}"
        assert store.try_sign_in("192.0.2.8", ticket) == 0.0
        store.forgive("192.0.2.8", ticket)
    for _ in range(FAILURE_LIMIT):
        assert wrong(store, "192.0.2.8") == 0.0
    assert wrong(store, "192.0.2.8") > 0


def test_an_ended_session_is_refused_until_it_would_have_expired(store: SignInStore, clock: FakeClock) -> None:
    assert not store.is_ended("sid-1")
    store.end_session("sid-1", expires_at=clock.now + 3600)
    assert store.is_ended("sid-1")
    assert not store.is_ended("sid-2")
    if isinstance(store, LocalSignInStore):  # Redis expires the key on its own clock
        clock.now += 3600
        assert not store.is_ended("sid-1")


def test_redis_keeps_only_what_can_still_matter(redis_url: str, clock: FakeClock) -> None:
    client = redis.Redis.from_url(redis_url)
    namespace = f"signin-test-{uuid.uuid4().hex[:8]}"
    try:
        store = RedisSignInStore(client, namespace, clock=clock)
        store.end_session("sid-9", expires_at=clock.now + 120)
        assert 0 < client.ttl(f"{namespace}:signin:ended:sid-9") <= 120
        store.end_session("sid-old", expires_at=clock.now - 1)  # already expired: nothing to keep
        assert not client.exists(f"{namespace}:signin:ended:sid-old")
        wrong(store, "192.0.2.1")
        assert 0 < client.ttl(f"{namespace}:signin:counted:192.0.2.1") <= FAILURE_WINDOW
    finally:
        client.close()


def test_while_redis_is_down_the_process_keeps_counting_and_signing_out(clock: FakeClock) -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = SharedSignInStore(RedisSignInStore(dead, "signin-test", clock=clock), LocalSignInStore(clock=clock))
    try:
        for _ in range(FAILURE_LIMIT):
            assert wrong(store, "203.0.113.5") == 0.0
        assert wrong(store, "203.0.113.5") == pytest.approx(FAILURE_WINDOW)
        store.end_session("sid-3", expires_at=clock.now + 60)
        assert store.is_ended("sid-3")
        assert not store.is_ended("sid-4")
    finally:
        dead.close()


def test_a_session_ended_or_a_try_counted_in_another_process_holds_here(redis_url: str, clock: FakeClock) -> None:
    client = redis.Redis.from_url(redis_url)
    namespace = f"signin-test-{uuid.uuid4().hex[:8]}"
    try:
        one = SharedSignInStore(RedisSignInStore(client, namespace, clock=clock), LocalSignInStore(clock=clock))
        two = SharedSignInStore(RedisSignInStore(client, namespace, clock=clock), LocalSignInStore(clock=clock))
        one.end_session("sid-5", expires_at=clock.now + 60)
        assert two.is_ended("sid-5")
        for _ in range(FAILURE_LIMIT):
            wrong(one, "203.0.113.6")
        assert wrong(two, "203.0.113.6") == pytest.approx(FAILURE_WINDOW)
    finally:
        client.close()


def test_thirty_concurrent_wrong_tries_let_exactly_ten_through(store: SignInStore) -> None:
    """Counted before the token is compared: a burst cannot all see "fewer than ten" and go ahead."""
    with ThreadPoolExecutor(max_workers=30) as pool:
        waits = list(pool.map(lambda _: wrong(store, "203.0.113.30"), range(30)))
    assert sum(1 for wait in waits if wait == 0.0) == FAILURE_LIMIT
