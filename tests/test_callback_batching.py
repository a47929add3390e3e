"""``web_callback.batching``: many callbacks, few Redis round trips, every message exactly once,
consumable by Dramatiq unchanged; a dead or hung Redis fails the waiting requests, never hangs them.

Real Redis (fixture ``redis_url``); the hung server is a loopback socket that accepts and never
answers.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import BrokerConnectionError

from tests.waiting import WAIT_SECONDS, await_until
from web_callback.batching import BatchEnqueuer
from workers.messages import build_message, encode_for_redis
from workers.publish import code_received_message


@pytest.fixture
def namespace() -> str:
    return f"sa-batch-{uuid.uuid4().hex[:8]}"


def _messages(n: int) -> list[Any]:
    return [code_received_message(attempt_id=str(uuid.uuid4()), code_enc=f"v1:k1:enc-{i}") for i in range(n)]


def test_concurrent_enqueues_share_round_trips_and_arrive_exactly_once(redis_url: str, namespace: str) -> None:
    messages = _messages(200)

    async def run() -> BatchEnqueuer:
        batcher = BatchEnqueuer(redis_url, namespace)
        try:
            await asyncio.gather(*(batcher.enqueue(m) for m in messages))
        finally:
            await batcher.aclose()
        return batcher

    batcher = run_in_loop(run())
    assert batcher.messages == 200
    assert batcher.batches < 200 / 4  # they were grouped, not sent one by one

    client = redis.Redis.from_url(redis_url)
    try:
        ids = [_text(i) for i in client.lrange(f"{namespace}:connect", 0, -1)]
        assert len(ids) == len(set(ids)) == 200
        payloads = client.hgetall(f"{namespace}:connect.msgs")
        assert sorted(_text(k) for k in payloads) == sorted(ids)
    finally:
        client.close()

    # Dramatiq's own consumer reads them unchanged: same actor, kwargs and message ids
    broker = RedisBroker(url=redis_url, namespace=namespace)
    broker.declare_queue("connect")
    try:
        consumer = broker.consume("connect", prefetch=500, timeout=1000)
        seen = []
        for message in consumer:
            if message is None:
                break
            seen.append(message)
            consumer.ack(message)
        consumer.close()
    finally:
        broker.close()
    assert sorted(m.message_id for m in seen) == sorted(m.message_id for m in messages)
    assert {m.actor_name for m in seen} == {"code_received"}
    by_id = {m.message_id: m for m in messages}
    for message in seen:
        assert message.kwargs == by_id[message.message_id].kwargs
        assert message.options["redis_message_id"] in ids


def test_messages_for_several_queues_land_in_their_own_queue(redis_url: str, namespace: str) -> None:
    refresh = build_message("refresh_account", account_id="acc-1", reason="requested")
    connect = _messages(1)[0]

    async def run() -> None:
        batcher = BatchEnqueuer(redis_url, namespace)
        try:
            await asyncio.gather(batcher.enqueue(refresh), batcher.enqueue(connect))
        finally:
            await batcher.aclose()

    run_in_loop(run())
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(f"{namespace}:refresh") == 1
        assert client.llen(f"{namespace}:connect") == 1
    finally:
        client.close()


def test_each_enqueue_gets_its_own_redis_id() -> None:
    message = _messages(1)[0]
    first, second = encode_for_redis(message), encode_for_redis(message)
    assert first.redis_id != second.redis_id
    assert first.redis_id.encode() in first.payload
    assert message.message_id.encode() in first.payload


def test_a_batch_redis_refuses_fails_its_requests_and_pushes_no_id(redis_url: str, namespace: str) -> None:
    """The write stops at its first failing command: an id never lands without its payload."""
    client = redis.Redis.from_url(redis_url)
    client.set(f"{namespace}:connect.msgs", "not a hash")  # HSET answers WRONGTYPE

    async def run() -> list[BaseException | None]:
        batcher = BatchEnqueuer(redis_url, namespace)
        try:
            return await asyncio.gather(*(batcher.enqueue(m) for m in _messages(3)), return_exceptions=True)
        finally:
            await batcher.aclose()

    try:
        results = run_in_loop(run())
        assert len(results) == 3
        assert all(isinstance(r, BrokerConnectionError) for r in results), results
        assert client.llen(f"{namespace}:connect") == 0
    finally:
        client.close()


def test_a_server_that_forgot_the_write_script_still_takes_the_batch(redis_url: str, namespace: str) -> None:
    async def run() -> int:
        batcher = BatchEnqueuer(redis_url, namespace)
        try:
            await batcher.enqueue(_messages(1)[0])
            assert batcher._client is not None
            await batcher._client.script_flush()  # a restarted Redis has no scripts cached
            await batcher.enqueue(_messages(1)[0])
            return batcher.messages
        finally:
            await batcher.aclose()

    assert run_in_loop(run()) == 2
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(f"{namespace}:connect") == 2
    finally:
        client.close()


def test_dead_redis_fails_every_waiting_request(unused_tcp_url: str, namespace: str) -> None:
    async def run() -> list[BaseException | None]:
        batcher = BatchEnqueuer(unused_tcp_url, namespace, timeout=2.0)
        try:
            return await asyncio.gather(*(batcher.enqueue(m) for m in _messages(5)), return_exceptions=True)
        finally:
            await batcher.aclose()

    results = run_in_loop(run())
    assert len(results) == 5
    assert all(isinstance(r, BrokerConnectionError) for r in results), results


def test_hung_redis_times_out_instead_of_hanging(silent_server_url: str, namespace: str) -> None:
    """The batch's own timeout ends it (a hang would fail at the test's bound instead)."""

    async def run() -> list[BaseException | None]:
        batcher = BatchEnqueuer(silent_server_url, namespace, timeout=0.5)
        try:
            async with asyncio.timeout(WAIT_SECONDS):  # only a hung batcher gets there
                return await asyncio.gather(*(batcher.enqueue(m) for m in _messages(3)), return_exceptions=True)
        finally:
            await batcher.aclose()

    results = run_in_loop(run())
    assert all(isinstance(r, BrokerConnectionError) for r in results), results
    assert all("TimeoutError" in str(r) for r in results), results


def test_batcher_recovers_after_a_failed_batch(redis_url: str, namespace: str) -> None:
    """A failed batch drops the connection; the next batch opens a fresh one and succeeds."""

    async def run() -> tuple[BaseException | None, int]:
        batcher = BatchEnqueuer(redis_url, namespace)
        try:
            await batcher.enqueue(_messages(1)[0])
            assert batcher._client is not None
            await batcher._client.connection_pool.disconnect()  # the server "restarted"
            error: BaseException | None = None
            try:
                await batcher.enqueue(_messages(1)[0])
            except BrokerConnectionError as exc:
                error = exc
            await batcher.enqueue(_messages(1)[0])
            return error, batcher.messages
        finally:
            await batcher.aclose()

    _, written = run_in_loop(run())
    assert written >= 2  # redis-py reconnects (or the batch failed once and the next one worked)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(f"{namespace}:connect") == written
    finally:
        client.close()


def test_aclose_closes_the_connection_and_it_reopens_on_demand(redis_url: str, namespace: str) -> None:
    async def run() -> tuple[bool, bool, int]:
        batcher = BatchEnqueuer(redis_url, namespace)
        await batcher.enqueue(_messages(1)[0])
        opened = batcher._client is not None
        await batcher.aclose()
        closed = batcher._client is None
        await batcher.enqueue(_messages(1)[0])
        await batcher.aclose()
        return opened, closed, batcher.messages

    opened, closed, written = run_in_loop(run())
    assert opened and closed and written == 2


def test_idle_connection_is_closed_by_itself(redis_url: str, namespace: str) -> None:
    async def run() -> bool:
        batcher = BatchEnqueuer(redis_url, namespace, idle_seconds=0.05)
        await batcher.enqueue(_messages(1)[0])
        opened = batcher._client is not None
        await await_until(lambda: batcher._client is None, what="the idle connection closed")
        await batcher.aclose()
        return opened

    assert run_in_loop(run())


# ---- helpers ----------------------------------------------------------------------------------


def run_in_loop(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def unused_tcp_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def silent_server_url() -> Iterator[str]:
    """A loopback port that accepts connections (kernel backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        server.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
