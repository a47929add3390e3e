"""Commands whose reply is read later (``workers.redis_channel``), and the broker's posted ack, on a real Redis."""

from __future__ import annotations

import gc
import threading
import warnings
import weakref

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from social_accounts.settings import Settings
from workers.broker import PostedAckRedisBroker, build_broker
from workers.redis_channel import MAX_PENDING, ReplyLater, channel_for
from workers.redis_scripts import SHORT_SCRIPT, LuaScript

_ECHO = LuaScript("return ARGV[1]")
#: long enough to be posted by SHA once the connection has sent it (``SHORT_SCRIPT``)
_LONG_ECHO = LuaScript("-- " + "x" * SHORT_SCRIPT + "\nreturn ARGV[1]")


def test_a_posted_command_runs_at_once_and_its_reply_is_read_by_the_next_call(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    channel = channel_for(client)
    channel.flush()  # replies an earlier test of this thread left unread
    channel.post("SET", "k-posted", "v1")
    assert channel.pending() == 1
    # Redis ran it before anyone read the reply: another connection sees the value
    assert client.get("k-posted") == b"v1"
    assert channel.call("GET", "k-posted") == b"v1"
    assert channel.pending() == 0
    posted = channel.post("INCR", "counter")
    channel.post("INCR", "counter")
    assert channel.wait(posted) == 1  # its own reply, not the one after it
    assert channel.pending() == 1
    channel.flush()
    assert channel.pending() == 0 and client.get("counter") == b"2"
    client.close()


def test_clients_of_one_server_share_a_channel_and_threads_never_share_a_connection(redis_url: str) -> None:
    a, b = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    assert channel_for(a) is channel_for(b)
    other_db = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    assert channel_for(other_db) is not channel_for(a)
    channel = channel_for(a)
    channel.flush()
    channel.post("SET", "mine", "main")
    seen: list[object] = []

    def other_thread() -> None:
        seen.append(channel.pending())  # the main thread's unread reply is not this thread's
        seen.append(channel.call("GET", "mine"))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert seen == [0, b"main"]
    assert channel.pending() == 1
    channel.flush()
    for c in (a, b, other_db):
        c.close()


def test_a_channel_does_not_keep_the_clients_that_asked_for_it(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    channel = channel_for(client)
    pool = weakref.ref(client.connection_pool)
    channel.call("PING")  # the channel's connection is made from the pool's settings
    del client
    gc.collect()
    assert pool() is None, "the channel registry kept a pool alive"
    again = redis.Redis.from_url(redis_url)
    assert channel_for(again) is channel  # the same server, database and user: the same channel
    assert channel.call("PING") == b"PONG"
    again.close()


def test_a_thread_that_ends_closes_its_connection(redis_url: str) -> None:
    channel = channel_for(redis.Redis.from_url(redis_url))

    def use() -> None:
        channel.post("PING")

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        t = threading.Thread(target=use)
        t.start()
        t.join()
        gc.collect()


def test_post_only_threads_stay_bounded(redis_url: str) -> None:
    channel = ReplyLater(redis.Redis.from_url(redis_url).connection_pool)
    for _ in range(MAX_PENDING * 3):
        channel.post("INCR", "n")
        assert channel.pending() <= MAX_PENDING
    channel.flush()


def test_a_forgotten_script_is_sent_again_in_full(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    channel = ReplyLater(client.connection_pool)
    channel.wait(_LONG_ECHO.post(channel, [], ["first"]))  # in full once; by SHA from now on
    client.script_flush()
    posted = _LONG_ECHO.post(channel, [], ["hello"])
    assert channel.wait(posted) == b"hello"  # NOSCRIPT, then in full: the caller sees the answer
    client.script_flush()
    assert _LONG_ECHO.call(channel, [], ["again"]) == b"again"
    client.close()


def test_a_short_posted_script_runs_at_once_even_on_a_server_that_forgot_it(redis_url: str) -> None:
    """What a lock release needs: done when posted, not when its reply is read."""
    client = redis.Redis.from_url(redis_url)
    channel = ReplyLater(client.connection_pool)
    setter = LuaScript("return redis.call('SET', KEYS[1], ARGV[1])")
    channel.wait(setter.post(channel, ["short"], ["1"]))
    client.script_flush()
    setter.post(channel, ["short"], ["2"])
    assert client.get("short") == b"2"
    channel.flush()
    client.close()


def test_a_resent_script_never_takes_the_reply_of_the_call_that_read_its_error(redis_url: str) -> None:
    """The resend is written after the call's own command, so each reply still finds its owner."""
    client = redis.Redis.from_url(redis_url)
    channel = ReplyLater(client.connection_pool)
    channel.wait(_LONG_ECHO.post(channel, [], ["first"]))  # sent in full once: the channel now uses EVALSHA
    client.set("plain", "value")
    client.script_flush()
    posted = _LONG_ECHO.post(channel, [], ["late"])  # NOSCRIPT, found out by the call below
    assert channel.call("GET", "plain") == b"value"
    assert channel.wait(posted) == b"late"
    assert channel.pending() == 0
    client.close()


def test_an_error_reply_is_raised_by_wait_and_a_lost_connection_by_the_next_call(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    channel = ReplyLater(client.connection_pool)
    client.set("text", "x")
    posted = channel.post("INCR", "text")
    with pytest.raises(redis.ResponseError):
        channel.wait(posted)
    client.client_kill_filter(_id=channel.call("CLIENT", "ID"))
    try:
        lost = channel.post("PING")  # a write after the server hung up may still be accepted...
    except redis.ConnectionError:
        pass
    else:
        with pytest.raises(redis.ConnectionError):  # ...but its reply never comes
            channel.wait(lost)
    assert channel.call("PING") == b"PONG"  # the next call opens a fresh connection
    client.close()


def test_the_broker_posts_acks_and_the_message_is_acked(redis_url: str) -> None:
    """Dramatiq's own ack, through a posted command: the message leaves the ack set."""
    broker = build_broker(Settings(broker_url=redis_url, redis_namespace="sa-test-ack"))
    assert isinstance(broker, PostedAckRedisBroker)
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="ack-test", actor_name="ack_test_actor")
    def ack_test_actor() -> None:
        done.set()

    ack_test_actor.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert done.wait(10)
        client = redis.Redis.from_url(redis_url)
        acks = f"sa-test-ack:__acks__.{broker.broker_id}.ack-test"
        for _ in range(100):
            if client.scard(acks) == 0 and client.llen("sa-test-ack:ack-test") == 0:
                break
            threading.Event().wait(0.05)
        assert client.scard(acks) == 0, "the message was never acked"
        assert client.hlen("sa-test-ack:ack-test.msgs") == 0
        client.close()
    finally:
        worker.stop()
        broker.close()


def test_dramatiq_still_has_what_the_posted_ack_relies_on() -> None:
    """The posted ack reuses Dramatiq internals; an upgrade that moves them must fail here, not in production."""
    import dramatiq.brokers.redis as dr

    assert "dispatch" in dr._scripts
    assert "ack" in dr.MAINTENANCE_COMMAND_BLACKLIST  # the posted ack passes 0 for maintenance
    names = ("broker_id", "namespace", "heartbeat_timeout", "dead_message_ttl", "_max_unpack_size", "client")
    for name in (*names, "_should_do_maintenance", "_dispatch"):
        assert hasattr(RedisBroker(url="redis://127.0.0.1:6379/15"), name)
    assert isinstance(RedisBroker.consumer_class, property)
