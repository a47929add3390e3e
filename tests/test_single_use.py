"""A single-use request that may have reached the platform is never sent again, end to end.

The code exchange (``tests/test_connect_pipeline.py``: ``exchange_uncertain``), the rotating
refresh and the revocation alike: the platform answers after the client's read timeout, so the
worker cannot know whether the request took effect, and the policy ends the step as uncertain
with no retry. Real PostgreSQL, Redis and worker, the fake platforms.
"""

from __future__ import annotations

from typing import Any

import redis

from tests.fakeplatform import FakeResponse
from tests.lifecycle_support import (
    FAST_LIFECYCLE,
    LIFECYCLE_SETTINGS,
    calls,
    connect,
    events,
    make_due,
    path_of,
    raw_row,
    refresh_calls,
)
from tests.pipeline_support import Pipeline
from tests.waiting import wait_until
from workers import lifecycle_actors
from workers.publish import request_disconnect, request_refresh

#: the fake answers after this, the client gives up before it
LATE = 1.0


def _slow_life(pipeline_factory: Any, monkeypatch: Any) -> Pipeline:
    monkeypatch.setattr(lifecycle_actors, "LIFECYCLE_POLICY", FAST_LIFECYCLE)
    return pipeline_factory(**{**LIFECYCLE_SETTINGS, "http_timeout_seconds": 0.3})


def _delayed(pipe: Pipeline, queue: str) -> int:
    client = redis.Redis.from_url(pipe.settings.effective_broker_url)
    try:
        return int(client.hlen(f"{pipe.settings.redis_namespace}:{queue}.DQ.msgs"))
    finally:
        client.close()


def test_a_rotating_refresh_without_an_answer_ends_uncertain_and_is_not_repeated(
    pipeline_factory: Any, monkeypatch: Any
) -> None:
    pipe = _slow_life(pipeline_factory, monkeypatch)
    [account_id] = connect(pipe, "twitter")
    make_due(pipe, account_id)
    late = FakeResponse(200, {"access_token": "late"})
    pipe.fake.fail(path_of(pipe, "twitter", "token_url"), late, times=5, delay=LATE)

    request_refresh(account_id, "scheduled", broker=pipe.broker)
    [uncertain] = wait_until(lambda: events(pipe, account_id, "refresh_uncertain"), what="refresh_uncertain")

    assert "request_maybe_sent" in (uncertain.reason or "")
    assert refresh_calls(pipe, "twitter") == 1
    assert _delayed(pipe, "refresh") == 0  # decided: no retry waits on the delay queue


def test_a_revocation_without_an_answer_erases_the_tokens_and_is_not_repeated(
    pipeline_factory: Any, monkeypatch: Any
) -> None:
    pipe = _slow_life(pipeline_factory, monkeypatch)
    revoke = "/twitter/2/oauth2/revoke"
    [account_id] = connect(pipe, "twitter")
    pipe.fake.fail(revoke, FakeResponse(200, {}), times=5, delay=LATE)

    request_disconnect(account_id, broker=pipe.broker)
    [done] = wait_until(lambda: events(pipe, account_id, "disconnected"), what="disconnected")

    assert done.data["revocation"] == "revoke_uncertain"
    assert calls(pipe.fake, revoke) == 1
    assert len(events(pipe, account_id, "revoke_failed")) == 1
    row = raw_row(pipe, account_id)
    assert (row.status, row.access_token, row.refresh_token) == ("disconnected", None, None)
    assert _delayed(pipe, "maintenance") == 0
