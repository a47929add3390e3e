"""One ``dispatch_events`` serves every event written until it starts (``workers.events.EventNudge``).

Why: each connect writes an ``account.connected`` event; one dispatch message per event cost a
third of a connect's worker CPU in ``bench/pipeline.py``. The flag that coalesces them lives in
the shared coordination (Redis, or process memory under ``run``) and the dispatcher lowers it
before it reads the outbox, so no event waits for the sweep.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from models import outbox
from social_accounts.settings import Settings
from workers import messages, runtime
from workers.coordination import LocalCoordination, RedisCoordination, for_runtime
from workers.events import NUDGE_FLAG, EventNudge


@pytest.mark.unit
def test_a_local_flag_is_raised_once_until_cleared_or_expired() -> None:
    flags = LocalCoordination()
    assert flags.claim_flag("f", 60) is True
    assert flags.claim_flag("f", 60) is False  # up: nobody else raises it
    assert flags.claim_flag("g", 60) is True  # another flag is its own
    flags.clear_flag("f")
    assert flags.claim_flag("f", 60) is True
    assert flags.claim_flag("h", 0.0) is True
    assert flags.claim_flag("h", 0.0) is True  # a flag of no duration is down again at once


def test_a_redis_flag_is_raised_once_until_cleared_and_expires(redis_url: str, redis_namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        flags = RedisCoordination(client, redis_namespace)
        assert flags.claim_flag("f", 60) is True
        assert flags.claim_flag("f", 60) is False
        assert 0 < client.pttl(f"{redis_namespace}:flag:f") <= 60_000  # it cannot stay up forever
        flags.clear_flag("f")
        assert flags.claim_flag("f", 60) is True
    finally:
        client.close()


@pytest.fixture
def stub() -> Iterator[StubBroker]:
    """A runtime with no Redis (the flag in process memory) and a stub broker that counts messages."""
    broker = StubBroker()
    broker.declare_queue(messages.QUEUE_WEBHOOKS)
    rt = runtime.configure(Settings(_env_file=None, broker_url="memory://"), broker=broker)  # type: ignore[call-arg]
    for_runtime(rt).clear_flag(NUDGE_FLAG)  # the in-process flags outlive a runtime
    yield broker
    for_runtime(rt).clear_flag(NUDGE_FLAG)
    runtime.reset()
    broker.close()


def _after_a_message_that_wrote_an_event(nudge: EventNudge, broker: StubBroker) -> None:
    outbox.note_written(["connected"])
    nudge.after_process_message(broker, message=None)  # type: ignore[arg-type]


def dispatches(broker: StubBroker) -> int:
    return broker.queues[messages.QUEUE_WEBHOOKS].qsize()


@pytest.mark.unit
def test_a_burst_of_events_sends_one_dispatch_until_the_dispatcher_starts(stub: StubBroker) -> None:
    nudge = EventNudge()
    for _ in range(50):
        _after_a_message_that_wrote_an_event(nudge, stub)
    assert dispatches(stub) == 1

    # the dispatcher lowers the flag before reading: the next event nudges again
    for_runtime(runtime.current()).clear_flag(NUDGE_FLAG)
    _after_a_message_that_wrote_an_event(nudge, stub)
    assert dispatches(stub) == 2


@pytest.mark.unit
def test_a_message_that_wrote_no_public_event_sends_nothing(stub: StubBroker) -> None:
    outbox.take_written()
    EventNudge().after_process_message(stub, message=None)  # type: ignore[arg-type]
    assert dispatches(stub) == 0
