"""Group commit for the callback's enqueues: every waiting callback in one Redis round trip,
written from the event loop itself.

Why: one blocking ``broker.enqueue`` per request, each in a worker thread, spends most of the
request in thread hand-offs and in GIL contention around a tiny Redis command. Here the enqueue is
asynchronous on the event loop (``redis.asyncio``): the first waiting callback starts a flush
task, which writes every message waiting at that moment in one round trip (``_write``) and wakes
the requests; whatever arrives meanwhile goes in the next batch. Under light load a batch is one
message and costs one round trip; under heavy load batches grow by themselves, so throughput
follows the load, and Redis sees one connection from the web process whatever the concurrency.

A batch is one call of the wire module's write script (``workers.messages.REDIS_WRITE_SCRIPT``,
registered with redis-py's ``register_script``): the keys and payloads are exactly Dramatiq's, so
workers consume the messages unchanged. Only for the Redis broker; other brokers keep one thread
per enqueue (``web_callback.callback``).

Failure: when a batch fails every request in it gets ``BrokerConnectionError`` (a 503; the user
clicks again, and the worker treats a repeated state as a replay). The script runs atomically and
stops at its first failing command, so no id is ever pushed without its payload. A batch may take
at most ``timeout`` seconds, so a hung Redis cannot hold browsers. The connection is closed after
``IDLE_SECONDS`` without callbacks and by ``aclose`` (the app's lifespan), always on the loop that
opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import dramatiq
import redis.asyncio
from dramatiq.errors import BrokerConnectionError
from redis.commands.core import AsyncScript

from workers import messages as wire

__all__ = ["IDLE_SECONDS", "MAX_BATCH", "BatchEnqueuer"]

#: messages written per round trip at most (bounds the latency of one batch)
MAX_BATCH = min(500, wire.REDIS_WRITE_MAX)
#: the Redis connection is closed after this long without a callback (reopened on the next one)
IDLE_SECONDS = 30.0


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
        self._script: AsyncScript | None = None  # the write script, registered on ``_client``
        self._pending: list[tuple[wire.Encoded, asyncio.Future[None]]] = []
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
        await self.enqueue_encoded(wire.encode_for_redis(message))

    def enqueue_call(self, actor_name: str, kwargs: dict[str, Any]) -> asyncio.Future[None]:
        """``enqueue(build_message(actor_name, **kwargs))`` (``workers.messages.encode_call``): await
        the result (see :meth:`enqueue_encoded`)."""
        return self.enqueue_encoded(wire.encode_call(actor_name, kwargs))

    def enqueue_encoded(self, item: wire.Encoded) -> asyncio.Future[None]:
        """Queue ``item`` (from ``workers.messages``: a fresh Redis id) for the next batch.

        Await the returned future: it completes once ``item`` is in Redis, or raises
        ``BrokerConnectionError``. A plain function rather than a coroutine: the callback awaits
        the future itself, one suspended frame less per request. The flush task bounds each batch
        by ``timeout``: no timer per request.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return future

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

    async def _write(self, batch: list[wire.Encoded]) -> None:
        """ONE call of the write script for the whole batch, on this batcher's client."""
        if self._client is None or self._script is None:
            # no socket_timeout: the whole batch is bounded by ``timeout`` in ``_flush``
            self._client = redis.asyncio.Redis.from_url(
                self.url, socket_connect_timeout=self.timeout, single_connection_client=True
            )
            self._script = self._client.register_script(wire.REDIS_WRITE_SCRIPT)
        keys, args = wire.redis_write_args(self.namespace, batch)
        await self._script(keys=keys, args=args)  # raises ResponseError when the script failed

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
        client, self._client, self._script = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
