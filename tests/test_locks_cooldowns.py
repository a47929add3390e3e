"""The refresh lock and the shared cooldowns, on a real Redis."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import redis

from social_accounts.health import compute_health, health_colour
from social_accounts.settings import PLATFORMS
from workers.cooldowns import active_cooldowns, cooldown_key, remaining, set_cooldown, take_budget
from workers.coordination import RedisCoordination
from workers.locks import account_lock, lock_key

NS = "sa-test"


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
        time.sleep(0.2)
        thief = client.lock(lock_key(NS, "acc-3"), timeout=5, thread_local=False)
        assert thief.acquire(blocking=False)
    # our release must not have deleted the thief's lock
    assert client.exists(lock_key(NS, "acc-3")) == 1
    thief.release()


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
    """``cooldowns_later``: the same answers as ``cooldown_remaining``, from one posted question."""
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
