"""A module in another language publishes ``refresh_account`` / ``sync_account`` with plain Redis
commands (the wire format of docs/publishing.md): no code of this project builds the message.

The payload below is written by hand on purpose; if Dramatiq or our actors ever stop accepting
it, this test fails and the documented format must change with them.
"""

from __future__ import annotations

import json
import time
import uuid

import redis

from tests.lifecycle_support import connect, events, load, make_due, raw_row, refresh_calls
from tests.pipeline_support import Pipeline
from tests.waiting import wait_until


def publish_raw(client: redis.Redis, namespace: str, queue: str, actor: str, kwargs: dict[str, str]) -> str:
    """Exactly what docs/publishing.md tells a foreign producer to do: HSET the payload, RPUSH its id."""
    redis_message_id = str(uuid.uuid4())
    payload = {
        "queue_name": queue,
        "actor_name": actor,
        "args": [],
        "kwargs": kwargs,
        "options": {"redis_message_id": redis_message_id},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    client.hset(f"{namespace}:{queue}.msgs", redis_message_id, json.dumps(payload))
    client.rpush(f"{namespace}:{queue}", redis_message_id)
    return redis_message_id


def test_hand_written_messages_refresh_and_sync_in_a_real_worker(life: Pipeline) -> None:
    [account_id] = connect(life, "twitter")
    make_due(life, account_id)
    old = load(life, account_id).tokens.access_token
    ns = life.settings.redis_namespace
    client = redis.Redis.from_url(life.settings.effective_broker_url)

    publish_raw(client, ns, "refresh", "refresh_account", {"account_id": account_id, "reason": "billing-module"})
    wait_until(lambda: events(life, account_id, "refreshed"), what="the refresh")

    [refreshed] = events(life, account_id, "refreshed")
    assert refreshed.reason == "billing-module"
    assert load(life, account_id).tokens.access_token != old
    assert refresh_calls(life, "twitter") == 1

    publish_raw(client, ns, "sync", "sync_account", {"account_id": account_id})
    wait_until(lambda: events(life, account_id, "synced"), what="the sync")
    assert raw_row(life, account_id).last_synced_at is not None

    # the messages were consumed and acknowledged: nothing left behind in Redis
    wait_until(lambda: client.hlen(f"{ns}:refresh.msgs") == 0 and client.hlen(f"{ns}:sync.msgs") == 0, what="acks")
    assert client.llen(f"{ns}:refresh") == 0
    client.close()


def test_reason_is_optional_and_a_due_check_still_applies(life: Pipeline) -> None:
    """``reason`` defaults to "requested", which never forces a refresh of a token that is not due."""
    [account_id] = connect(life, "twitter")
    ns = life.settings.redis_namespace
    client = redis.Redis.from_url(life.settings.effective_broker_url)

    publish_raw(client, ns, "refresh", "refresh_account", {"account_id": account_id})
    # out of the store once acked, after the actor ran: whatever it did is done
    wait_until(lambda: client.hlen(f"{ns}:refresh.msgs") == 0, what="the message consumed")

    assert refresh_calls(life, "twitter") == 0
    assert not events(life, account_id, "refreshed")
    assert load(life, account_id).status == "active"
    client.close()
