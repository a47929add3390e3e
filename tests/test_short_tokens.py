"""A platform issuing 5-second access tokens, end to end (issue 14, "Tokens of any lifetime").

Before, ``POST /v1/accounts/{id}/token`` refused every token with less than 30 s left, so with
5-second tokens it answered 503 even right after a refresh; and each ``/refresh`` request forced
one more platform call. Here the fake X issues 5-second tokens, and the service's clock is a
hand-moved one (the worker's runtime and each API app's), so no step depends on how fast this
machine runs: the test moves time, never waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from starlette.testclient import TestClient

from tests.fakeplatform import twitter as fake_x
from tests.lifecycle_support import api_client, connect, events, load, refresh_calls
from tests.pipeline_support import Pipeline
from tests.waiting import wait_until
from workers import runtime

LIFETIME = timedelta(seconds=5)


class HandClock:
    """A service clock that stands still until the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def on_clock(client: TestClient, clock: HandClock) -> TestClient:
    """``client``'s app reads ``clock`` (the app's runtime serves the token API)."""
    cast(Any, client.app).state.services.clock = clock
    return client


def refresh_queue_idle(pipe: Pipeline) -> bool:
    """No refresh message waiting, delayed or in flight."""
    client: Any = pipe.broker.client
    ns = pipe.settings.redis_namespace
    waiting = client.llen(f"{ns}:refresh") + client.llen(f"{ns}:refresh.DQ")
    in_flight = sum(int(client.scard(key)) for key in client.scan_iter(f"{ns}:__acks__.*.refresh*"))
    return bool(waiting == 0 and in_flight == 0)


@pytest.fixture
def short_lived(life: Pipeline, monkeypatch: pytest.MonkeyPatch) -> tuple[Pipeline, str, HandClock]:
    """An X account connected while the fake issues 5-second access tokens, on a hand clock
    standing at the moment the token was issued."""
    monkeypatch.setattr(fake_x, "ACCESS_LIFETIME", int(LIFETIME.total_seconds()))
    [account_id] = connect(life, "twitter")
    tokens = load(life, account_id).tokens
    issued = datetime.fromisoformat(tokens.metadata["issued_at"])
    assert tokens.expires_at is not None and timedelta(0) < tokens.expires_at - issued <= LIFETIME
    clock = HandClock(issued)
    monkeypatch.setattr(runtime.current(), "clock", clock)
    return life, account_id, clock


def test_a_5_second_token_just_issued_is_handed_out_without_a_refresh(
    short_lived: tuple[Pipeline, str, HandClock],
) -> None:
    pipe, account_id, clock = short_lived
    stored = load(pipe, account_id).tokens
    pipe.fake.reset_log()
    with on_clock(api_client(pipe), clock) as client:
        answer = client.post(f"/v1/accounts/{account_id}/token")
        assert answer.status_code == 200, answer.text
        assert answer.json()["access_token"] == stored.access_token
        assert refresh_calls(pipe, "twitter") == 0

        clock.now += LIFETIME + timedelta(seconds=1)  # expired a second ago: refreshed, then handed out
        answer = client.post(f"/v1/accounts/{account_id}/token")
        assert answer.status_code == 200, answer.text
        fresh = load(pipe, account_id).tokens
        assert answer.json()["access_token"] == fresh.access_token != stored.access_token
        assert fresh.expires_at == clock.now + LIFETIME
        assert refresh_calls(pipe, "twitter") == 1


def test_thirty_token_and_refresh_calls_on_an_expired_5_second_token_cost_one_refresh(
    short_lived: tuple[Pipeline, str, HandClock],
) -> None:
    pipe, account_id, clock = short_lived
    before = load(pipe, account_id).tokens
    assert before.expires_at is not None
    clock.now = before.expires_at + timedelta(seconds=1)  # the stored token expired a second ago
    pipe.fake.reset_log()
    pipe.fake.delay = 0.3  # a slow token endpoint keeps the window of the race open

    start = threading.Barrier(30)
    handed: list[str] = []
    enqueued: list[int] = []
    failures: list[BaseException] = []

    def caller(path: str, record: Callable[[Any], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                with on_clock(api_client(pipe), clock) as client:
                    start.wait()
                    record(client.post(f"/v1/accounts/{account_id}/{path}"))
            except BaseException as exc:  # collected and asserted below
                failures.append(exc)

        return run

    def token_answer(answer: Any) -> None:
        assert answer.status_code == 200, f"{answer.status_code}: {answer.text}"
        handed.append(answer.json()["access_token"])

    threads = [threading.Thread(target=caller("token", token_answer)) for _ in range(20)]
    threads += [
        threading.Thread(target=caller("refresh", lambda answer: enqueued.append(answer.status_code)))
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_until(lambda: refresh_queue_idle(pipe), timeout=60, what="every refresh message processed")
    pipe.fake.delay = 0.0

    assert not failures, failures
    assert enqueued == [202] * 10
    assert refresh_calls(pipe, "twitter") == 1
    after = load(pipe, account_id)
    assert after.status == "active"
    assert after.tokens.access_token != before.access_token
    assert after.tokens.expires_at == clock.now + LIFETIME
    # every caller got the one token the refresh brought, and it is one the fake issued to the
    # grant, which survives: no spent refresh token was ever replayed
    assert len(handed) == 20 and set(handed) == {after.tokens.access_token}
    grants = pipe.fake.grants
    grant = next(g for g in grants.grants.values() if after.tokens.refresh_token in g.refresh_tokens)
    assert not grant.revoked and grant.refresh_tokens[-1] == after.tokens.refresh_token
    assert grants.access[after.tokens.access_token][0] == grant.grant_id
    assert len(events(pipe, account_id, "refreshed")) == 1
    assert not events(pipe, account_id, "refresh_failed")


def test_the_hand_clock_is_what_the_service_reads(short_lived: tuple[Pipeline, str, HandClock]) -> None:
    """The premise of the tests above: moving the hand clock is moving the service's time."""
    pipe, _account_id, clock = short_lived
    clock.now = datetime(2030, 1, 1, tzinfo=UTC)
    assert runtime.current().clock() == clock.now
    with on_clock(api_client(pipe), clock) as client:
        assert cast(Any, client.app).state.services.clock() == clock.now
