"""Events out, end to end: real PostgreSQL, real Redis, a real Dramatiq worker, the fake platform
and a real HTTP receiver on loopback that checks every signature with ``standardwebhooks``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from models import outbox
from models.tables import SocialWebhookAttempt, SocialWebhookDelivery, SocialWebhookEndpoint, table_of
from scheduler import jobs
from tests.fakeplatform import FakeResponse
from tests.lifecycle_support import FAST_LIFECYCLE, ShiftedClock, api_client, connect, load, make_due, path_of
from tests.pipeline_support import Pipeline
from tests.waiting import wait_until
from tests.webhook_receiver import SECRET, Receiver
from workers import events, lifecycle_actors, retrying, runtime
from workers.publish import request_disconnect, request_refresh
from workers.sync import sync_now

DELIVERIES = table_of(SocialWebhookDelivery)
ATTEMPTS = table_of(SocialWebhookAttempt)
ENDPOINTS = table_of(SocialWebhookEndpoint)
#: webhook retries in milliseconds, same shape as production
FAST_WEBHOOKS = retrying.RetryPolicy(max_transient=5, max_rate_limited=5, min_backoff_ms=100, max_backoff_ms=300)
ME = "/twitter/2/users/me"


@pytest.fixture
def hooked(pipeline_factory: Callable[..., Pipeline], receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """The real pipeline with one webhook endpoint (the receiver) and fast retries."""
    monkeypatch.setattr(lifecycle_actors, "LIFECYCLE_POLICY", FAST_LIFECYCLE)
    monkeypatch.setattr(events, "WEBHOOK_POLICY", FAST_WEBHOOKS)
    return pipeline_factory(
        webhook_urls=receiver.url,
        webhook_secrets=SECRET,
        events_on_broker=True,
        error_after_failures=2,
        error_after_seconds=0,
        http_timeout_seconds=5,
    )


def deliveries(pipe: Pipeline) -> list[Any]:
    with pipe.engine.connect() as conn:
        return list(conn.execute(sa.select(DELIVERIES).order_by(DELIVERIES.c.seq)))


def all_settled(pipe: Pipeline) -> bool:
    """Everything published, and no delivery still pending."""
    rows = deliveries(pipe)
    return outbox.unpublished_count(pipe.engine) == 0 and all(r.status != "pending" for r in rows)


def types_for(receiver: Receiver, account_id: str) -> list[str]:
    return [r.event["type"] for r in receiver.delivered() if r.event["data"]["account_id"] == account_id]


def test_the_lifecycle_sends_each_event_once_in_order_signed(hooked: Pipeline, receiver: Receiver) -> None:
    pipe = hooked
    [account_id] = connect(pipe, "twitter")
    wait_until(lambda: types_for(receiver, account_id) == ["account.connected"], what="connected")

    # degrade and recover: two 503s make it `error` (error_after_failures=2), the retry heals it
    make_due(pipe, account_id)
    pipe.fake.fail(path_of(pipe, "twitter", "token_url"), FakeResponse(503, {"error": "busy"}), times=2)
    request_refresh(account_id, "scheduled", broker=pipe.broker)
    wait_until(lambda: len(types_for(receiver, account_id)) == 3, what="error and recovery")

    # expire: the user revoked the app
    token = load(pipe, account_id).tokens.refresh_token
    assert token
    pipe.fake.grants.revoke_token(token)
    make_due(pipe, account_id)
    request_refresh(account_id, "scheduled", broker=pipe.broker)
    wait_until(lambda: len(types_for(receiver, account_id)) == 4, what="needs_reconnect")

    # the same account connected again, then disconnected
    assert connect(pipe, "twitter") == [account_id]
    request_disconnect(account_id, broker=pipe.broker)
    wait_until(lambda: all_settled(pipe) and len(types_for(receiver, account_id)) == 6, what="all six")

    assert types_for(receiver, account_id) == [
        "account.connected",
        "account.status_changed",
        "account.recovered",
        "account.needs_reconnect",
        "account.reconnected",
        "account.disconnected",
    ]
    got = receiver.delivered()  # verified with standardwebhooks
    assert len({r.id for r in got}) == len(got) == len(receiver.all()) == 6  # each once, no retry needed
    changed = got[1].event["data"]
    assert (changed["status_from"], changed["status_to"], changed["error_code"]) == ("active", "error", "busy")
    assert isinstance(changed["health_score"], int) and changed["health_reason"]
    expired = got[3].event["data"]
    assert (expired["status_to"], expired["health_score"]) == ("expired", 0)
    assert all(r.event["data"]["site_id"] == "site-1" and r.event["data"]["platform"] == "twitter" for r in got)
    assert all(b"access_token" not in r.body and b"refresh_token" not in r.body for r in got)

    # replay: the same events, in the same order, page by page, with the webhook ids
    with api_client(pipe) as api:
        first = api.get("/v1/events?limit=4").json()
        rest = api.get(f"/v1/events?after={first['next']}&limit=4").json()
        empty = api.get(f"/v1/events?after={rest['next']}").json()
        assert api.get("/v1/events?after=-1").status_code == 400
        assert api.get("/v1/events?limit=0").status_code == 400
        assert api.get("/v1/events?limit=x").status_code == 400
    replayed = [e for e in first["events"] + rest["events"] if e["data"]["account_id"] == account_id]
    assert [e["id"] for e in replayed] == [r.id for r in got]
    assert [e["type"] for e in replayed] == types_for(receiver, account_id)
    assert empty == {"events": [], "next": rest["next"]}

    # the same events on the broker's queue `events`, in Dramatiq's wire format
    payloads = pipe.broker.client.hvals(f"{pipe.settings.redis_namespace}:events.msgs")
    on_broker = sorted((json.loads(p) for p in payloads), key=lambda m: int(m["kwargs"]["cursor"]))
    assert {(m["queue_name"], m["actor_name"]) for m in on_broker} == {("events", "account_event")}
    assert [m["kwargs"]["id"] for m in on_broker if m["kwargs"]["data"]["account_id"] == account_id] == [
        r.id for r in got
    ]
    assert on_broker[0]["kwargs"] == replayed[0]


def test_500_three_times_then_200_arrives_once_with_the_same_id(hooked: Pipeline, receiver: Receiver) -> None:
    receiver.answer_next((500, 0.0), (500, 0.0), (500, 0.0))
    [account_id] = connect(hooked, "twitter")
    wait_until(lambda: all_settled(hooked) and receiver.delivered(), what="the delivery")

    tries = receiver.all()
    assert [r.status for r in tries] == [500, 500, 500, 200]
    assert len({r.id for r in tries}) == 1  # the same webhook-id on every try
    assert len({r.body for r in tries}) == 1  # and the same body
    [delivered] = receiver.delivered()
    assert delivered.event["data"]["account_id"] == account_id
    [row] = deliveries(hooked)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 4, 200)
    with hooked.engine.connect() as conn:
        recorded = list(conn.execute(sa.select(ATTEMPTS).order_by(ATTEMPTS.c.at)))
        endpoint = conn.execute(sa.select(ENDPOINTS)).one()
    assert [a.status_code for a in recorded] == [500, 500, 500, 200]
    assert all(a.latency_ms >= 0 for a in recorded)
    assert endpoint.failing_since is None and endpoint.last_success_at is not None


def test_410_disables_the_endpoint_and_nothing_more_is_sent_to_it(hooked: Pipeline, receiver: Receiver) -> None:
    receiver.answer_next((410, 0.0))
    [first] = connect(hooked, "twitter")
    wait_until(lambda: all_settled(hooked) and receiver.all(), what="the 410")
    with hooked.engine.connect() as conn:
        endpoint = conn.execute(sa.select(ENDPOINTS)).one()
    assert endpoint.disabled_at is not None and "410" in endpoint.disabled_reason
    assert [r.status for r in deliveries(hooked)] == ["dropped"]

    request_disconnect(first, broker=hooked.broker)  # a new event: published, sent to nobody
    wait_until(lambda: load(hooked, first).status == "disconnected" and all_settled(hooked), what="published")
    with api_client(hooked) as api:
        assert [e["type"] for e in api.get("/v1/events").json()["events"]][-1] == "account.disconnected"
    assert len(deliveries(hooked)) == 1 and len(receiver.all()) == 1


def test_a_compressed_outage_is_one_error_and_one_recovery_and_a_blip_sends_nothing(
    pipeline_factory: Callable[..., Pipeline], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10-minute 5xx outage, one sync a minute (the clock moved on, not waited for), with the
    error rule at 3 failures spanning 5 minutes; a second account only sees a 2-minute blip."""
    monkeypatch.setattr(events, "WEBHOOK_POLICY", FAST_WEBHOOKS)
    pipe = pipeline_factory(
        webhook_urls=receiver.url, webhook_secrets=SECRET, error_after_failures=3, error_after_seconds=300
    )
    [down] = connect(pipe, "twitter")
    [blip] = connect(pipe, "twitter", fake_user="bob")
    # the worker's own dispatch of the two connects done first: from here on only the sweep publishes
    wait_until(lambda: all_settled(pipe) and len(receiver.delivered()) == 2, what="the connects sent")
    rt = runtime.current()
    clock = ShiftedClock()
    monkeypatch.setattr(rt, "clock", clock)

    for minute in range(10):
        pipe.fake.fail(ME, FakeResponse(503, {"error": "down"}), times=1)
        with pytest.raises(Exception):  # noqa: B017,PT011 (the policy's Transient, whichever step)
            sync_now(rt, down)
        if minute < 2:
            pipe.fake.fail(ME, FakeResponse(502, {"error": "blip"}), times=1)
            with pytest.raises(Exception):  # noqa: B017,PT011
                sync_now(rt, blip)
        clock.offset += timedelta(minutes=1)
    assert load(pipe, down).status == "error" and load(pipe, blip).status == "active"
    sync_now(rt, down)
    sync_now(rt, blip)
    assert load(pipe, down).status == "active"

    # these ran in the test, not in a worker: the scheduler's sweep publishes them
    ctx = jobs.JobContext(settings=pipe.settings, engine=pipe.engine, broker=pipe.broker, clock=clock)
    assert jobs.events_sweep(ctx)["published"] == 2
    wait_until(lambda: all_settled(pipe), what="every delivery")
    assert types_for(receiver, down) == ["account.connected", "account.status_changed", "account.recovered"]
    assert types_for(receiver, blip) == ["account.connected"]


def test_an_endpoint_failing_for_a_day_shows_in_doctor_metrics_and_the_page(
    hooked: Pipeline, receiver: Receiver
) -> None:
    from service.doctor import Check, check_webhooks

    receiver.answer_next(*[(500, 0.0)] * (FAST_WEBHOOKS.max_transient + 1))
    [account_id] = connect(hooked, "twitter")
    wait_until(lambda: [r.status for r in deliveries(hooked)] == ["failed"], what="the retries spent")
    assert [r.status for r in receiver.all()] == [500] * (FAST_WEBHOOKS.max_transient + 1)
    fresh: list[Check] = []
    check_webhooks(hooked.settings, hooked.engine, fresh)
    assert [c.status for c in fresh] == ["ok"]  # failing, but not for a day yet

    with hooked.engine.begin() as conn:  # a day of failures
        conn.execute(sa.update(ENDPOINTS).values(failing_since=datetime.now(UTC) - timedelta(days=1, minutes=1)))
    out: list[Check] = []
    check_webhooks(hooked.settings, hooked.engine, out)
    [check] = out
    assert check.status == "warn" and "1 failing" in check.detail
    assert any("127.0.0.1" in item for item in check.items)
    host = receiver.url.split("/")[2]
    with api_client(hooked) as api:
        metrics = api.get("/metrics").text
    assert f'social_accounts_webhook_endpoints_failing{{endpoint="{host}"}} 1.0' in metrics

    # the page: the failing endpoint on top, the account's last events on its card
    from web_callback.pages import _page_context

    context = _page_context(runtime.current(), "site-1", {})
    assert context["failing_webhooks"] == [host]
    [card] = [a for c in context["cards"] for a in c["accounts"] if a["id"] == account_id]
    assert [e["type"] for e in card["events"]] == ["account.connected"]

    # redeliver --since: the same event again, same webhook-id, and this time it arrives
    ids = outbox.redeliver(hooked.engine, since=datetime.now(UTC) - timedelta(hours=1), now=datetime.now(UTC))
    events.enqueue_deliveries(hooked.broker, ids)
    wait_until(lambda: receiver.delivered(), what="the redelivery")
    assert {r.id for r in receiver.all()} == {receiver.delivered()[0].id}
    wait_until(lambda: all_settled(hooked), what="settled")
    with hooked.engine.connect() as conn:
        assert conn.execute(sa.select(ENDPOINTS.c.failing_since)).scalar_one() is None


def test_a_later_event_of_an_account_waits_for_the_earlier_one(hooked: Pipeline, receiver: Receiver) -> None:
    receiver.answer_next((500, 0.0), (500, 0.0), (500, 0.0))  # the first event needs four tries
    [account_id] = connect(hooked, "twitter")
    request_disconnect(account_id, broker=hooked.broker)  # the second event, published meanwhile
    wait_until(lambda: all_settled(hooked) and len(receiver.delivered()) == 2, what="both events")
    assert types_for(receiver, account_id) == ["account.connected", "account.disconnected"]
    assert [r.status for r in receiver.all()] == [500, 500, 500, 200, 200]


def test_a_purged_account_leaves_no_event_nor_delivery(hooked: Pipeline, receiver: Receiver) -> None:
    from tests.test_erasure import gone, traces

    [account_id] = connect(hooked, "twitter")
    wait_until(lambda: all_settled(hooked) and receiver.delivered(), what="the connected event")
    assert {table for table, _ in traces(hooked.engine, [account_id])} >= {
        "social_account_events",
        "social_webhook_deliveries",
    }
    with api_client(hooked) as api:
        assert api.delete(f"/v1/accounts/{account_id}?purge=true").status_code == 202
    wait_until(lambda: gone(hooked, account_id), what="the purge")
    assert traces(hooked.engine, [account_id]) == []
