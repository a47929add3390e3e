"""The one wire module (``workers.messages``) and the broker it writes for: the write script's
layout, bulk enqueue across chunks and queues on a real Redis, and the Redis broker's options."""

from __future__ import annotations

import inspect
import json
import uuid

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from social_accounts.settings import Settings
from tests.support import consume_all
from workers import bulk
from workers import messages as wire
from workers.broker import HEARTBEAT_TIMEOUT_MS, MAINTENANCE_CHANCE, build_broker


def test_write_args_group_by_queue_and_keep_each_queues_order() -> None:
    items = [
        wire.Encoded("connect", "c1", b"p-c1"),
        wire.Encoded("refresh", "r1", b"p-r1"),
        wire.Encoded("connect", "c2", b"p-c2"),
    ]
    keys, args = wire.redis_write_args("ns", items)
    assert keys == ["ns:connect.msgs", "ns:connect", "ns:refresh.msgs", "ns:refresh"]
    assert args == ["2", "c1", "c2", "c1", b"p-c1", "c2", b"p-c2", "1", "r1", "r1", b"p-r1"]


def test_build_message_knows_each_actors_queue_and_nothing_else() -> None:
    for actor, queue in wire.ACTOR_QUEUES.items():
        message = wire.build_message(actor, account_id="a")
        assert (message.queue_name, message.args, message.kwargs, message.options) == (
            queue,
            (),
            {"account_id": "a"},
            {},
        )
    with pytest.raises(KeyError):
        wire.build_message("no_such_actor")


def test_the_encoded_payload_is_dramatiqs_own_encoding_with_the_redis_id() -> None:
    message = wire.build_message(wire.SYNC_ACCOUNT, account_id="acc-1")
    item = wire.encode_for_redis(message)
    assert item.payload == message.copy(options={"redis_message_id": item.redis_id}).encode()
    assert json.loads(item.payload)["options"] == {"redis_message_id": item.redis_id}
    assert message.options == {}  # the caller's message is not changed


def test_bulk_enqueue_spans_chunks_and_queues_and_dramatiq_consumes_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "WRITE_CHUNK", 4)
    namespace = f"sa-wire-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=redis_url, namespace=namespace)
    sent = [
        wire.build_message(wire.SYNC_ACCOUNT, account_id=f"s{i}")
        if i % 3
        else wire.build_message(wire.REFRESH_ACCOUNT, account_id=f"r{i}", reason="scheduled")
        for i in range(11)
    ]
    try:
        assert bulk.enqueue_many(broker, sent) == 11
        seen = consume_all(broker, ("sync", "refresh"))
    finally:
        broker.close()
    for queue in ("sync", "refresh"):
        expected = [m for m in sent if m.queue_name == queue]
        assert [m.message_id for m in seen[queue]] == [m.message_id for m in expected]  # order kept
        assert [m.kwargs for m in seen[queue]] == [m.kwargs for m in expected]


def test_a_bulk_write_redis_refuses_raises_and_pushes_no_id(redis_url: str) -> None:
    namespace = f"sa-wire-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    client.set(f"{namespace}:sync.msgs", "not a hash")
    broker = RedisBroker(url=redis_url, namespace=namespace)
    try:
        with pytest.raises(redis.ResponseError):
            bulk.enqueue_calls(broker, "sync", wire.SYNC_ACCOUNT, [{"account_id": "a"}, {"account_id": "b"}])
        assert client.llen(f"{namespace}:sync") == 0
    finally:
        broker.close()
        client.close()


def test_the_redis_broker_is_dramatiqs_own_with_our_redelivery_timing(redis_url: str) -> None:
    """Heartbeat timeout and maintenance chance go through ``RedisBroker``'s public constructor
    (workers/broker.py says why the numbers); an upgrade that drops them must fail here."""
    params = inspect.signature(RedisBroker.__init__).parameters
    assert {"heartbeat_timeout", "maintenance_chance", "namespace", "url"} <= set(params)
    broker = build_broker(Settings(_env_file=None, broker_url=redis_url, redis_namespace="sa-wire"))
    try:
        assert type(broker) is RedisBroker
        assert broker.heartbeat_timeout == HEARTBEAT_TIMEOUT_MS == 10_000
        assert broker.maintenance_chance == MAINTENANCE_CHANCE == 100_000
        assert broker.namespace == "sa-wire"
    finally:
        broker.close()


def test_a_message_sent_through_the_broker_runs_and_is_acked(redis_url: str) -> None:
    broker = build_broker(Settings(_env_file=None, broker_url=redis_url, redis_namespace="sa-wire-ack"))
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="ack-test", actor_name="ack_test_actor")
    def ack_test_actor(token: str) -> None:
        ran.append(token)

    ack_test_actor.send("t1")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join("ack-test", timeout=10_000)  # returns once neither the payload nor its ack entry is left
    finally:
        worker.stop()
        broker.close()
    assert ran == ["t1"]


def test_a_retry_of_a_fresh_call_gets_its_own_redis_id_and_survives_the_first_ack(redis_url: str) -> None:
    """``encode_call`` uses a new message's id as its first Redis id; a retry (Dramatiq re-enqueues
    the same ``message_id`` while the first delivery is still unacked) must get its own, or acking
    the first delivery would delete the retry's payload."""
    namespace = f"sa-wire-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=redis_url, namespace=namespace)
    client = redis.Redis.from_url(redis_url)
    try:
        bulk.enqueue_calls(broker, "sync", wire.SYNC_ACCOUNT, [{"account_id": "acc-1"}])
        consumer = broker.consume("sync", prefetch=1, timeout=1000)
        first = next(consumer)
        assert first.options["redis_message_id"] == first.message_id
        again = dramatiq.Message(
            queue_name=first.queue_name,
            actor_name=first.actor_name,
            args=first.args,
            kwargs=first.kwargs,
            options={},
            message_id=first.message_id,
            message_timestamp=first.message_timestamp,
        )
        retry = broker.enqueue(again)  # what Dramatiq's Retries does
        assert retry.options["redis_message_id"] != first.message_id
        consumer.ack(first)
        consumer.close()
        seen = consume_all(broker, ("sync",))
        assert [(m.message_id, m.options["redis_message_id"]) for m in seen["sync"]] == [
            (first.message_id, retry.options["redis_message_id"])
        ]
    finally:
        broker.close()
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        client.close()
