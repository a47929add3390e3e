"""The refresh lock and the shared cooldowns, on a real Redis."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from pydantic import ValidationError

from platforms.deadline import exchange_seconds
from platforms.http import default_timeout
from social_accounts.health import compute_health, health_colour
from social_accounts.settings import MAX_HTTP_TIMEOUT_SECONDS, PLATFORMS, Settings
from tests.waiting import wait_until
from workers.cooldowns import active_cooldowns, cooldown_key, remaining, set_cooldown, take_budget
from workers.coordination import RedisCoordination, for_runtime, lock_ttl_seconds
from workers.locks import account_lock, lock_key
from workers.refresh import SAVE_PATIENCE_SECONDS
from workers.runtime import Runtime

NS = "sa-test"


@pytest.fixture(autouse=True)
def _own_namespace(redis_namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's keys under its own namespace (``redis_url`` deletes them afterwards)."""
    monkeypatch.setattr(f"{__name__}.NS", redis_namespace)


def test_only_one_holder_of_an_account_lock_at_a_time(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    inside = 0
    most = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, most
        with account_lock(client, NS, "acc-1", wait_seconds=5) as got:
            assert got
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1
    assert client.exists(lock_key(NS, "acc-1")) == 0


def test_a_busy_lock_is_not_acquired_without_waiting_and_other_owners_cannot_release(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with account_lock(client, NS, "acc-2") as first:
        assert first
        with account_lock(client, NS, "acc-2") as second:
            assert not second
        # the failed second attempt must not have released the first owner's lock
        assert client.exists(lock_key(NS, "acc-2")) == 1
    assert client.exists(lock_key(NS, "acc-2")) == 0


def test_an_expired_lock_taken_by_another_owner_is_left_to_them(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with account_lock(client, NS, "acc-3", ttl_seconds=0.1) as got:
        assert got
        wait_until(lambda: client.exists(lock_key(NS, "acc-3")) == 0, what="the lock's TTL to run out")
        thief = client.lock(lock_key(NS, "acc-3"), timeout=5, thread_local=False)
        assert thief.acquire(blocking=False)
    # our release must not have deleted the thief's lock
    assert client.exists(lock_key(NS, "acc-3")) == 1
    thief.release()


def test_the_lock_and_cooldowns_work_on_a_server_that_forgot_their_scripts(redis_url: str) -> None:
    """A restarted Redis (or ``SCRIPT FLUSH``) has no cached scripts: every call still does its job,
    the release included (a release that failed would leave the lock held until its TTL)."""
    client = redis.Redis.from_url(redis_url)
    with account_lock(client, NS, "acc-flush") as got:
        assert got
        client.script_flush()
    assert client.exists(lock_key(NS, "acc-flush")) == 0
    client.script_flush()
    with account_lock(client, NS, "acc-flush") as again:
        assert again
    client.script_flush()
    assert set_cooldown(client, NS, "twitter", 30)
    client.script_flush()
    assert 29 < remaining(client, NS, "twitter") <= 30
    client.script_flush()
    assert take_budget(client, NS, "flush", limit=1, window_seconds=60) == 0
    client.close()


def test_the_lock_uses_the_clients_pool_and_gives_its_connection_back(redis_url: str) -> None:
    """No connection of its own: every command borrows one of the shared client's pool."""
    pool = redis.ConnectionPool.from_url(redis_url, max_connections=1)
    client = redis.Redis(connection_pool=pool)
    for account_id in ("p1", "p2", "p1"):
        with account_lock(client, NS, account_id, peek={"twitter": [cooldown_key(NS, "twitter")]}) as got:
            assert got
            assert remaining(client, NS, "twitter") == 0  # the one connection is free again meanwhile
    assert client.exists(lock_key(NS, "p1"), lock_key(NS, "p2")) == 0
    client.close()


def test_cooldowns_apply_per_app_and_per_account_and_only_extend(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert remaining(client, NS, "twitter", "a1") == 0
    set_cooldown(client, NS, "twitter", 30, account_id="a1")
    assert 29 < remaining(client, NS, "twitter", "a1") <= 30
    assert remaining(client, NS, "twitter", "a2") == 0  # another account is not held back
    set_cooldown(client, NS, "twitter", 5, account_id="a1")  # a shorter wait does not shorten it
    assert remaining(client, NS, "twitter", "a1") > 29
    set_cooldown(client, NS, "twitter", 60)  # app-wide
    assert remaining(client, NS, "twitter", "a2") > 59
    assert remaining(client, NS, "youtube", "a2") == 0
    found = {(c.platform, c.scope) for c in active_cooldowns(client, NS)}
    assert found == {("twitter", "app"), ("twitter", "account:a1")}


def test_budget_allows_the_limit_then_says_how_long_to_wait(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    waits = [take_budget(client, NS, "bluesky:login:alice", limit=3, window_seconds=300) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert 299 < waits[3] <= 300
    assert take_budget(client, NS, "bluesky:login:bob", limit=3, window_seconds=300) == 0


def test_health_score_follows_the_rules() -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    fresh = dict(token_expires_at=None, last_synced_at=now, last_error_at=None, now=now)
    assert compute_health(status="active", **fresh).score == 100
    assert compute_health(status="expired", **fresh).score == 0  # needs the user: red, whatever else
    assert compute_health(status="active", **dict(fresh, token_expires_at=now - timedelta(seconds=1))).score == 50
    assert compute_health(status="rate_limited", **fresh).score == 70
    stale = dict(fresh, last_synced_at=now - timedelta(hours=25), last_error_at=now - timedelta(hours=1))
    health = compute_health(status="rate_limited", **stale)
    assert health.score == 40
    assert "rate limiting" in health.reason and "24 hours" in health.reason
    worst = dict(stale, token_expires_at=now - timedelta(seconds=1))
    assert compute_health(status="rate_limited", **worst).score == 0  # floor 0, never negative
    assert [health_colour(s) for s in (100, 79, 49)] == ["green", "yellow", "red"]


def test_the_lock_reads_the_cooldowns_it_peeks_at_in_the_same_round_trip(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    set_cooldown(client, NS, "twitter", 30, account_id="a9")
    set_cooldown(client, NS, "mastodon", 5)  # app-wide
    peek = {
        platform: [cooldown_key(NS, platform, None), cooldown_key(NS, platform, "a9")]
        for platform in ("twitter", "mastodon", "bluesky")
    }
    with account_lock(client, NS, "a9", peek=peek) as hold:
        assert hold and hold.acquired
        assert 29 < hold.waits["twitter"] <= 30
        assert 4 < hold.waits["mastodon"] <= 5
        assert hold.waits["bluesky"] == 0
        with account_lock(client, NS, "a9", peek=peek) as busy:
            assert not busy  # the peek never takes a lock it should not
            assert 29 < busy.waits["twitter"] <= 30
    assert client.exists(lock_key(NS, "a9")) == 0


def test_redis_coordination_peeks_at_every_platform_for_the_account(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    coordination = RedisCoordination(client, NS)
    set_cooldown(client, NS, "linkedin", 12, account_id="a10")
    with coordination.account_lock("a10") as hold:
        assert set(hold.waits) == set(PLATFORMS)
        assert 11 < hold.waits["linkedin"] <= 12
        assert all(wait == 0 for platform, wait in hold.waits.items() if platform != "linkedin")


def test_cooldowns_asked_now_and_read_later(redis_url: str) -> None:
    """``cooldowns_later``: the same answers as ``cooldown_remaining``, from one round trip."""
    from workers.coordination import LocalCoordination

    client = redis.Redis.from_url(redis_url)
    set_cooldown(client, NS, "twitter", 20)
    set_cooldown(client, NS, "youtube", 40, account_id="acc-9")
    redis_side = RedisCoordination(client, NS)
    later = redis_side.cooldowns_later(["twitter", "youtube", "tiktok"], None)
    for_account = redis_side.cooldowns_later(["twitter", "youtube"], "acc-9")
    waits, account_waits = later(), for_account()
    assert 19 < waits["twitter"] <= 20 and waits["youtube"] == 0 and waits["tiktok"] == 0
    assert 19 < account_waits["twitter"] <= 20 and 39 < account_waits["youtube"] <= 40
    local = LocalCoordination()
    local.set_cooldown("pinterest", 15, account_id=None, reason="rate_limited")
    assert 14 < local.cooldowns_later(["pinterest", "x"], None)()["pinterest"] <= 15
    client.close()


# ---- the refresh lock's TTL against the HTTP timeouts ---------------------------------------------

#: platform requests a refresh makes under the lock: one in every adapter (the OAuth 2.0 refresh
#: grant, Meta's and Threads' token exchanges, Bluesky's refreshSession); Facebook and Mastodon
#: make none
REFRESH_CALLS = 1


def _connect_phase(client: httpx.Client, monkeypatch: Any) -> tuple[float, int]:
    """How long the client's connect step can last when every attempt runs into its timeout, and
    how many attempts it repeats: measured through the client, on httpx's own retry loop, with
    sockets that time out and the pauses between attempts recorded."""
    spent: list[float] = []

    def times_out(address: Any, timeout: float | None = None, *args: Any, **kwargs: Any) -> Any:
        spent.append(float(timeout or 0.0))
        raise TimeoutError("timed out")

    with monkeypatch.context() as patch:
        patch.setattr(socket, "create_connection", times_out)
        patch.setattr(time, "sleep", spent.append)
        with pytest.raises(httpx.ConnectTimeout):
            client.post("https://platform.example/token", content=b"code=c")
    retries = (len(spent) - 1) // 2  # every attempt and every pause between them
    assert retries >= 1 and len(spent) == 2 * retries + 1
    return sum(spent), retries


def worst_refresh_call_seconds(rt: Runtime, monkeypatch: Any) -> float:
    """The longest the platform side of one refresh can take on the runtime's client when every
    phase of every request runs into its timeout (connect with its retries, write, read)."""
    client = rt.http
    timeout = default_timeout(rt.settings.http_timeout_seconds)  # what the adapters pass per request
    assert client.timeout == timeout
    assert timeout.connect is not None and timeout.write is not None and timeout.read is not None
    connect, retries = _connect_phase(client, monkeypatch)
    one = connect + timeout.write + timeout.read
    # the transport's deadline over the whole exchange is that same worst case (no pool to wait for)
    assert exchange_seconds(timeout.as_dict(), retries) == pytest.approx(one)
    return REFRESH_CALLS * one


def _runtime(http_timeout_seconds: float, redis_url: str = "redis://127.0.0.1:1/0") -> Runtime:
    settings = Settings(
        _env_file=None, broker_url=redis_url, redis_namespace=NS, http_timeout_seconds=http_timeout_seconds
    )
    return Runtime(settings=settings)


@pytest.mark.parametrize("seconds", [0.1, 0.3, 1.0, 2.0, 3.0, 3.5, 5.0, 10.0, 30.0, 60.0, MAX_HTTP_TIMEOUT_SECONDS])
def test_the_refresh_lock_outlives_the_platform_call_and_the_write_after_it(
    seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = _runtime(seconds)
    try:
        coordination = for_runtime(rt)
        assert isinstance(coordination, RedisCoordination)
        ttl = coordination.lock_ttl_seconds
        worst = worst_refresh_call_seconds(rt, monkeypatch)
    finally:
        rt.close()

    assert ttl > worst, f"HTTP_TIMEOUT_SECONDS={seconds}: lock {ttl} s, platform call up to {worst} s"
    # the new tokens are then written, waiting out a database restart for up to SAVE_PATIENCE_SECONDS
    # (refresh.py: "well inside the lock's TTL"): a lock that expired then could let a second
    # worker spend the rotated refresh token
    assert ttl >= worst + SAVE_PATIENCE_SECONDS, f"HTTP_TIMEOUT_SECONDS={seconds}: no room left for the write"


def test_the_lock_the_runtime_takes_in_redis_carries_that_ttl(redis_url: str) -> None:
    rt = _runtime(10.0, redis_url)
    try:
        coordination = for_runtime(rt)
        with coordination.account_lock("acc-ttl") as hold:
            assert hold
            pttl = rt.redis.pttl(lock_key(NS, "acc-ttl"))
    finally:
        rt.close()
    assert lock_ttl_seconds(10.0) * 1000 - 1000 < pttl <= lock_ttl_seconds(10.0) * 1000
    assert lock_ttl_seconds(10.0) == 60.0  # the README's "60 s refresh lock" at the default


@pytest.mark.parametrize("value", ["0", "-1", "inf", "-inf", "nan", "1e300", str(MAX_HTTP_TIMEOUT_SECONDS + 0.5)])
def test_http_timeouts_the_lock_cannot_cover_are_refused_with_a_clear_error(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, http_timeout_seconds=value)
    message = str(refused.value)
    assert "HTTP_TIMEOUT_SECONDS must be" in message and f"at most {MAX_HTTP_TIMEOUT_SECONDS:g}" in message


def test_the_largest_http_timeout_still_takes_a_working_lock(redis_url: str) -> None:
    """At the bound the TTL still fits Redis's PX and a socket still takes the timeout."""
    assert Settings(_env_file=None, http_timeout_seconds=MAX_HTTP_TIMEOUT_SECONDS)
    rt = _runtime(MAX_HTTP_TIMEOUT_SECONDS, redis_url)
    try:
        with for_runtime(rt).account_lock("acc-max") as hold:
            assert hold
            assert rt.redis.pttl(lock_key(NS, "acc-max")) > MAX_HTTP_TIMEOUT_SECONDS * 1000
        with socket.socket() as sock:
            sock.settimeout(MAX_HTTP_TIMEOUT_SECONDS)
    finally:
        rt.close()
