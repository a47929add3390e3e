"""Group commit for the callback's enqueues: every waiting callback in one Redis round trip,
written from the event loop itself.

Why: one blocking ``broker.enqueue`` per request, each in a worker thread, spends most of the
request in thread hand-offs and in GIL contention around a tiny Redis command. Measured with
``bench/callback.py`` (2 cores) it reached about 0.2x the throughput of a bare endpoint on the
same server, with 6x its p99; a single enqueuing thread with batches still paid a thread wake-up
per batch and fought the loop for the GIL. Here the enqueue is asynchronous on the event loop
(``redis.asyncio``): the first waiting callback starts a flush task, which writes every message
waiting at that moment in one round trip (``_write``) and wakes the requests; whatever arrives
meanwhile goes in the next batch. Under light load a batch is one message and costs one round
trip; under heavy load batches grow by themselves, so throughput follows the load, and Redis sees
one connection from the web process whatever the concurrency.

The keys and values are exactly Dramatiq's (``HSET <ns>:<queue>.msgs <redis id> <payload>`` and
``RPUSH <ns>:<queue> <redis id>``, the id also in the payload's options), so workers consume the
messages unchanged. Only for the Redis broker; other brokers keep one thread per enqueue
(``web_callback.callback``).

Cost: this runs once per callback on the loop that also parses HTTP, so each step is kept small
(``bench/callback.py``). A batch is ONE ``EVAL`` of ``_WRITE_SCRIPT`` (per queue one multi-field
``HSET`` of the payloads, then one multi-value ``RPUSH`` of their ids), packed here and sent on
one connection held for the batcher's life: redis-py's pipeline (a ``MULTI``/``EXEC`` before)
cost several times the round trip itself in command objects, per-read timers, a task per write
timeout and four replies to parse. The batch's time bound is one ``asyncio.timeout`` (no task,
as ``wait_for`` creates), and the idle timer is set once per idle period, not per batch.
``enqueue_call`` writes the payload from a template instead of building a ``dramatiq.Message``
(the bytes ``Message.encode`` would produce; ids come from ``os.urandom`` in bulk), like
``workers.bulk.enqueue_calls``.

Failure: when a batch fails every request in it gets ``BrokerConnectionError`` (a 503; the user
clicks again, and the worker treats a repeated state as a replay). A script runs atomically and
stops at its first failing command, so no id is ever pushed without its payload. A batch may take
at most ``timeout`` seconds, so a hung Redis cannot hold browsers. The connection is closed after
``IDLE_SECONDS`` without callbacks and by ``aclose`` (the app's lifespan), always on the loop that
opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from typing import Any, NamedTuple

import dramatiq
import redis.asyncio
from dramatiq import get_encoder
from dramatiq.errors import BrokerConnectionError

from workers.messages import ACTOR_QUEUES

__all__ = ["IDLE_SECONDS", "MAX_BATCH", "BatchEnqueuer", "Encoded", "encode", "encode_call"]

#: messages written per round trip at most (bounds the latency of one batch, and the script's
#: ``unpack`` of at most 2 values per message stays far below Lua's limit of 8,000)
MAX_BATCH = 500
#: the Redis connection is closed after this long without a callback (reopened on the next one)
IDLE_SECONDS = 30.0

#: KEYS = ``<q>.msgs, <q>`` per queue; ARGV = per queue its message count n, the n redis ids, then
#: the n pairs ``redis id, payload``. Payloads are stored before their ids are pushed, atomically.
_WRITE_SCRIPT = b"""
local a = 1
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  redis.call("HSET", KEYS[k], unpack(ARGV, a + n + 1, a + 3 * n))
  redis.call("RPUSH", KEYS[k + 1], unpack(ARGV, a + 1, a + n))
  a = a + 3 * n + 1
end
return a - 1
"""
#: ids handed out per ``os.urandom`` call
_ID_CHUNK = 512
_JSON = json.JSONEncoder(separators=(",", ":"))  # the output of dramatiq's JSONEncoder for the kwargs
_quote = json.encoder.encode_basestring_ascii  # a str as JSON, as json.dumps (ensure_ascii) writes it


class Encoded(NamedTuple):
    """One message as Redis holds it: its queue, its fresh Redis id and its payload."""

    queue_name: str
    redis_id: str
    payload: bytes


def encode(message: dramatiq.Message[Any]) -> Encoded:
    """``message`` with a fresh ``redis_message_id`` in its options, encoded as Dramatiq encodes it
    (``RedisBroker.enqueue`` does the same: every enqueue gets its own Redis id)."""
    redis_id = _new_id()
    data = message.asdict()
    data["options"] = {**message.options, "redis_message_id": redis_id}
    return Encoded(message.queue_name, redis_id, get_encoder().encode(data))


#: the hex digit after a UUID's variant bits (``10xx``) are set, by the random digit
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_ids: list[str] = []
#: a forked child must not hand out its parent's ids (two messages with one Redis id overwrite each other)
os.register_at_fork(after_in_child=_ids.clear)


def _uuid4_strings(count: int) -> list[str]:
    """``count`` random version-4 UUID strings from one ``os.urandom`` call (what
    ``str(uuid.uuid4())`` gives, without a system call and a ``UUID`` object per id)."""
    text = os.urandom(16 * count).hex()
    return [
        f"{text[i : i + 8]}-{text[i + 8 : i + 12]}-4{text[i + 13 : i + 16]}-"
        f"{_VARIANT[text[i + 16]]}{text[i + 17 : i + 20]}-{text[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def _new_id() -> str:
    """A random version-4 UUID string, drawn from a stock made ``_ID_CHUNK`` at a time."""
    try:
        return _ids.pop()
    except IndexError:
        _ids.extend(_uuid4_strings(_ID_CHUNK))  # another thread may refill too: only more ids
        return _ids.pop()


def _json_object(kwargs: dict[str, Any]) -> str:
    """``json.dumps(kwargs, separators=(",", ":"))`` (dramatiq's JSON), quicker for the usual flat
    dict of strings and None; anything else goes through the ``json`` encoder."""
    parts = []
    for key, value in kwargs.items():
        if type(key) is not str:
            return _JSON.encode(kwargs)
        if value is None:
            parts.append(f"{_quote(key)}:null")
        elif type(value) is str:
            parts.append(f"{_quote(key)}:{_quote(value)}")
        else:
            return _JSON.encode(kwargs)
    return "{" + ",".join(parts) + "}"


@functools.lru_cache(maxsize=32)
def _head(queue_name: str, actor_name: str) -> str:
    return json.dumps({"queue_name": queue_name, "actor_name": actor_name, "args": []}, separators=(",", ":"))[:-1]


def encode_call(actor_name: str, kwargs: dict[str, Any]) -> Encoded:
    """What ``encode(build_message(actor_name, **kwargs))`` returns, made without the ``Message``.

    With Dramatiq's default JSON encoder the payload is written from a template (the same fields,
    in the same order, as ``Message.encode()``); with any other encoder it goes through
    ``dramatiq.Message`` and ``encode``.
    """
    queue_name = ACTOR_QUEUES[actor_name]
    if type(get_encoder()) is not dramatiq.JSONEncoder:
        from workers.messages import build_message

        return encode(build_message(actor_name, **kwargs))
    redis_id = _new_id()
    payload = (
        f'{_head(queue_name, actor_name)},"kwargs":{_json_object(kwargs)},'
        f'"options":{{"redis_message_id":"{redis_id}"}},'
        f'"message_id":"{_new_id()}","message_timestamp":{int(time.time() * 1000)}}}'
    )
    return Encoded(queue_name, redis_id, payload.encode())


def _pack(*args: bytes) -> list[bytes]:
    """One Redis command in RESP (what redis-py's ``pack_command`` makes, minus its generality)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return out


class BatchEnqueuer:
    """Batches enqueues for ONE event loop (the one that first uses it) onto one connection.

    Parameters:
      url(str): the broker's Redis URL (``BROKER_URL``).
      namespace(str): the broker's key namespace (``RedisBroker.namespace``).
      timeout(float): how long one batch may take (connect, write, answer), in seconds.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        timeout: float = 10.0,
        max_batch: int = MAX_BATCH,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.timeout = timeout
        self.max_batch = max_batch
        self.idle_seconds = idle_seconds
        self._client: redis.asyncio.Redis | None = None
        self._conn: Any = None  # the client's connection this batcher writes on
        self._pending: list[tuple[Encoded, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last_batch = 0.0  # loop time the last batch ended (the idle timer checks it)
        #: batches and messages written so far (tests, curiosity)
        self.batches = 0
        self.messages = 0

    async def enqueue(self, message: dramatiq.Message[Any]) -> None:
        """Return once ``message`` is in Redis.

        Raises:
          BrokerConnectionError: the broker did not take it, or did not answer within ``timeout``.
        """
        await self.enqueue_encoded(encode(message))

    async def enqueue_call(self, actor_name: str, kwargs: dict[str, Any]) -> None:
        """``enqueue(build_message(actor_name, **kwargs))`` without the ``Message`` (``encode_call``)."""
        await self.enqueue_encoded(encode_call(actor_name, kwargs))

    async def enqueue_encoded(self, item: Encoded) -> None:
        """Return once ``item`` (from ``encode`` or ``encode_call``: a fresh Redis id) is in Redis."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        await future  # the flush task bounds each batch by ``timeout``: no timer per request

    async def aclose(self) -> None:
        """Close the connection (the app's lifespan calls this on shutdown)."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        await self._drop_client()

    # ---- the flush task ---------------------------------------------------------------------

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                error: str | None = None
                try:
                    async with asyncio.timeout(self.timeout):
                        await self._write([item for item, _ in batch])
                except Exception as exc:  # RedisError, OSError, TimeoutError, or a bug: never leave a request hanging
                    error = type(exc).__name__
                    await self._drop_client()  # a fresh connection for the next batch
                else:
                    self.batches += 1
                    self.messages += len(batch)
                for _, future in batch:
                    if future.done():  # that request was cancelled meanwhile
                        continue
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(BrokerConnectionError(f"could not enqueue code_received ({error})"))
        finally:
            self._flusher = None
            loop = asyncio.get_running_loop()
            self._last_batch = loop.time()
            if self._client is not None and self._idle is None:  # one timer per idle period, not per batch
                self._idle = loop.call_later(self.idle_seconds, self._close_when_idle)

    async def _write(self, batch: list[Encoded]) -> None:
        """ONE ``EVAL`` of ``_WRITE_SCRIPT`` for the whole batch, on this batcher's connection."""
        if self._client is None:
            # no socket_timeout: the whole batch is bounded by ``timeout`` in ``_flush`` (a read
            # timeout would add a timer per read, and one per write a task)
            self._client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=self.timeout)
        if self._conn is None:
            self._conn = await self._client.connection_pool.get_connection()
        by_queue: dict[str, tuple[list[bytes], list[bytes]]] = {}
        for item in batch:
            lists = by_queue.get(item.queue_name)
            if lists is None:
                lists = by_queue[item.queue_name] = ([], [])
            redis_id = item.redis_id.encode()
            lists[0].append(redis_id)
            lists[1].extend((redis_id, item.payload))
        keys: list[bytes] = []
        argv: list[bytes] = []
        for queue_name, (ids, pairs) in by_queue.items():
            queue = f"{self.namespace}:{queue_name}".encode()
            keys += (queue + b".msgs", queue)
            argv.append(b"%d" % len(ids))
            argv += ids
            argv += pairs
        await self._conn.send_packed_command(
            _pack(b"EVAL", _WRITE_SCRIPT, b"%d" % len(keys), *keys, *argv), check_health=False
        )
        await self._conn.read_response()  # raises ResponseError when the script failed

    def _close_when_idle(self) -> None:
        self._idle = None
        if self._client is None or self._flusher is not None or self._pending:
            return  # closed already, or a batch is under way (its end sets the timer again)
        loop = asyncio.get_running_loop()
        due = self._last_batch + self.idle_seconds
        if loop.time() < due:  # batches ran meanwhile: look again one idle period after the last
            self._idle = loop.call_at(due, self._close_when_idle)
            return
        self._flusher = loop.create_task(self._close_task())

    async def _close_task(self) -> None:
        try:
            await self._drop_client()
        finally:
            self._flusher = None
            if self._pending:  # a callback arrived while closing
                self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _drop_client(self) -> None:
        client, self._client, self._conn = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
