"""Metrics and logs, observed from the outside: ``/metrics`` after real work, and every log line
of a whole account life checked for secrets.

The flows run on the real pipeline (``tests.pipeline_support``: a Dramatiq worker on real Redis,
PostgreSQL, the fake platform) and go through the real web app where a person or a module would.
Counters are process-wide, so metric tests compare a scrape before with a scrape after.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import httpx
import pytest
import redis
from dramatiq.broker import MessageProxy
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from models.attempts import attempt_secret, load_attempt
from models.engine import make_engine
from models.migrate import upgrade
from social_accounts.logs import configure_logging
from social_accounts.metrics import MESSAGE_LATENCY
from tests.fakeplatform import FakeResponse
from tests.lifecycle_support import api_client, bluesky_settings, events, load, make_due
from tests.pipeline_support import Pipeline
from tests.support import root_logging_kept
from tests.waiting import wait_until
from workers import messages
from workers.broker import build_broker
from workers.cooldowns import set_cooldown
from workers.metrics_middleware import MessageLatency, due_at_ms
from workers.publish import request_refresh, request_sync

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ---- helpers ------------------------------------------------------------------------------------


def scrape(client: TestClient) -> Samples:
    """``/metrics`` parsed: ``(sample name, labels) -> value``."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def oauth_connect(pipe: Pipeline, client: TestClient, platform: str) -> tuple[str, dict[str, str], str]:
    """Start through the API, authorize on the fake, come back through the real callback endpoint.

    Returns ``(attempt_id, callback query, PKCE verifier)``; the attempt has finished.
    """
    started = client.post(f"/v1/connect/{platform}", json={"site_id": "site-1", "user_id": "user-1"})
    assert started.status_code == 201, started.text
    attempt_id = started.json()["attempt_id"]
    with Session(pipe.engine) as session:
        row = load_attempt(session, attempt_id)
        assert row is not None
        verifier = attempt_secret(pipe.ring, row, "code_verifier") or ""
    with httpx.Client() as browser:
        answer = browser.get(started.json()["authorization_url"], follow_redirects=False)
    assert answer.status_code in (302, 303), answer.text
    location = urlsplit(answer.headers["location"])
    back = client.get(f"{location.path}?{location.query}", follow_redirects=False)
    assert back.status_code in (200, 303), back.text  # 200: a "you can close this window" page
    query = dict(httpx.QueryParams(location.query))
    pipe.wait_for(attempt_id)
    return attempt_id, query, verifier


Opener = Callable[[TestClient], TestClient]


@pytest.fixture
def opened() -> Iterator[Opener]:
    """Enter a TestClient (the app's lifespan runs) and leave it at teardown, closing its clients."""
    entered: list[TestClient] = []

    def open_(client: TestClient) -> TestClient:
        entered.append(client.__enter__())
        return client

    yield open_
    for client in reversed(entered):
        client.__exit__(None, None, None)


@pytest.fixture
def captured_logs() -> Iterator[Callable[[Any], io.StringIO]]:
    """``install(settings)``: the production handler (redaction, JSON) on the root logger, writing
    to a buffer; the previous root handlers come back afterwards."""
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "alembic.runtime.plugins")}

    def install(settings: Any) -> io.StringIO:
        buffer = io.StringIO()
        configure_logging(settings, stream=buffer)
        return buffer

    with root_logging_kept():
        yield install
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert text, "nothing was logged"
    return [json.loads(line) for line in text.splitlines()]  # every line is one JSON object


def assert_no_secret(buffer: io.StringIO, secrets: dict[str, str]) -> None:
    text = buffer.getvalue()
    for name, secret in secrets.items():
        assert len(secret) >= 6, f"{name} is too short to be a meaningful check"
        assert secret not in text, f"{name} appears in the logs"


def settings_secrets(settings: Any) -> dict[str, str]:
    found = {"API_TOKEN": settings.api_token, "STATE_SECRET": settings.state_secret}
    for item in settings.token_keys.split(","):
        found[f"TOKEN_KEYS {item.partition(':')[0]}"] = item.partition(":")[2]
    for name, setting in settings.model_dump().items():
        if name.endswith("_secret") and name != "state_secret" and isinstance(setting, str) and setting:
            found[name.upper()] = setting
    return found


def event_line(lines: list[dict[str, Any]], message: str, account_id: str) -> dict[str, Any]:
    for line in lines:
        if line["message"] == message and line.get("account_id") == account_id:
            return line
    raise AssertionError(f"no {message!r} line for {account_id}: {[x['message'] for x in lines]}")


# ---- /metrics after real work -------------------------------------------------------------------


def test_metrics_count_connects_refreshes_errors_and_latency(pipeline: Pipeline, opened: Opener) -> None:
    client = opened(api_client(pipeline))
    before = scrape(client)

    attempt_id, _ = pipeline.connect("twitter")
    row = pipeline.wait_for(attempt_id)
    assert row.status == "connected", row.history
    (account_id,) = row.account_ids
    make_due(pipeline, account_id)
    request_refresh(account_id, "manual", broker=pipeline.broker)
    wait_until(lambda: events(pipeline, account_id, "refreshed"), what="the refresh")
    token_path = urlsplit(pipeline.settings.endpoint("twitter", "token_url") or "").path
    pipeline.fake.fail(token_path, FakeResponse(400, {"error": "invalid_grant"}), times=1)
    failed_id, _ = pipeline.connect("twitter")
    assert pipeline.wait_for(failed_id).status == "failed"

    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("social_accounts_attempts_total", platform="twitter", outcome="connected") == 1
    assert delta("social_accounts_attempts_total", platform="twitter", outcome="failed") == 1
    assert delta("social_accounts_refreshes_total", platform="twitter", outcome="refreshed") == 1
    errors = "social_accounts_platform_errors_total"
    assert total(after, errors, platform="twitter") - total(before, errors, platform="twitter") == 1
    # every message the worker started was timed, on its own queue
    assert delta("social_accounts_message_latency_seconds_count", queue="connect") >= 2
    assert delta("social_accounts_message_latency_seconds_count", queue="refresh") >= 1
    # the scrape-time gauges are there too: queues drained, no cooldown
    assert value(after, "social_accounts_queue_depth", queue="connect") == 0
    assert value(after, "social_accounts_cooldowns_active", platform="twitter") == 0


@pytest.fixture
def scrape_app(
    pg_url: str, redis_url: str, redis_namespace: str, settings_factory: Any, opened: Opener
) -> Iterator[Callable[..., TestClient]]:
    """A web app on its own Redis namespace, without a worker (messages stay queued)."""
    from web_callback.app import create_app

    upgrade(pg_url)
    engine = make_engine(pg_url)
    brokers: list[dramatiq.Broker] = []

    def build(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "database_url": pg_url,
            "broker_url": redis_url,
            "redis_namespace": f"{redis_namespace}-{len(brokers)}",  # one per app, all the test's
        }
        settings = settings_factory(**{**values, **overrides})
        broker = build_broker(settings)
        brokers.append(broker)
        return opened(TestClient(create_app(settings, broker=broker, engine=engine)))

    yield build
    for broker in brokers:
        broker.close()
    engine.dispose()


def test_queue_depth_and_cooldowns_are_read_at_scrape_time(
    scrape_app: Any, redis_url: str, redis_namespace: str
) -> None:
    client = scrape_app()
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    broker = client.app.state.services.broker  # type: ignore[attr-defined]
    namespace = settings.redis_namespace
    for _ in range(3):
        request_sync(f"acct-{uuid.uuid4().hex[:6]}", broker=broker)
    broker.enqueue(messages.build_message(messages.REFRESH_ACCOUNT, account_id="x", reason="later"), delay=60_000)
    store = redis.Redis.from_url(redis_url)
    try:
        store.zadd(f"{namespace}:sync.XQ", {"dead-message-id": time.time()})  # Dramatiq's dead letters
        set_cooldown(store, namespace, "twitter", 60)
        set_cooldown(store, namespace, "mastodon", 60, account_id="acct-1")
        set_cooldown(store, namespace, "mastodon", 60, account_id="acct-2")
        set_cooldown(store, f"{redis_namespace}-another", "facebook", 60)  # the test's, not the app's

        samples = scrape(client)

        depth = "social_accounts_queue_depth"
        assert value(samples, depth, queue="sync") == 3
        assert value(samples, depth, queue="refresh") == 0
        assert value(samples, depth, queue="refresh.DQ") == 1
        assert value(samples, depth, queue="sync.XQ") == 1
        cooldowns = "social_accounts_cooldowns_active"
        assert value(samples, cooldowns, platform="twitter") == 1
        assert value(samples, cooldowns, platform="mastodon") == 2
        assert value(samples, cooldowns, platform="facebook") == 0  # another namespace's cooldown

        # read again, not remembered: the cooldown ended, the queue was drained
        store.delete(f"{namespace}:cooldown:twitter:app")
        broker.flush_all()
        samples = scrape(client)
        assert value(samples, cooldowns, platform="twitter") == 0
        assert value(samples, depth, queue="sync") == 0
    finally:
        store.close()


def test_leaving_the_app_closes_the_redis_connection_the_scrape_opened(scrape_app: Any) -> None:
    client = scrape_app()
    scrape(client)  # reads the cooldowns through the app's runtime: a Redis connection of its own
    services = client.app.state.services  # type: ignore[attr-defined]
    pool = services.redis.connection_pool
    opened = [conn for conn in pool._available_connections if conn._sock is not None]
    assert opened, "the scrape opened no Redis connection"
    client.__exit__(None, None, None)  # the lifespan's end, as at shutdown
    assert all(conn._sock is None for conn in opened), "a Redis connection outlived the app"


def test_a_dead_broker_does_not_fail_the_scrape(scrape_app: Any) -> None:
    client = scrape_app(broker_url="redis://127.0.0.1:1/0", redis_url="redis://127.0.0.1:1/0")
    before = value(scrape(client), "social_accounts_scrape_errors_total")

    samples = scrape(client)

    assert value(samples, "social_accounts_scrape_errors_total") == before + 2  # queue depth and cooldowns


def _proxy(**fields: Any) -> MessageProxy:
    message = messages.build_message(messages.SYNC_ACCOUNT, account_id="a")
    return MessageProxy(message.copy(**fields))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("fields", "now_ms", "expected"),
    [
        ({"message_timestamp": 1_000_000}, 1_004_500, 4.5),  # enqueued 4.5 s ago
        ({"message_timestamp": 1_000_000, "options": {"eta": 1_003_000}}, 1_004_000, 1.0),  # a retry: from its eta
        ({"message_timestamp": 1_010_000}, 1_004_000, 0.0),  # another host's clock ahead: never negative
    ],
)
def test_latency_is_measured_from_when_the_message_became_due(
    fields: dict[str, Any], now_ms: int, expected: float
) -> None:
    queue = f"q{uuid.uuid4().hex[:6]}"  # a fresh label: nothing else observes it
    proxy = _proxy(queue_name=f"{queue}.DQ", **fields)  # a delayed queue counts as its queue
    histogram = MESSAGE_LATENCY.labels(queue)

    MessageLatency(clock=lambda: now_ms / 1000).before_process_message(None, proxy)  # type: ignore[arg-type]

    (sum_sample,) = [s for s in histogram.collect()[0].samples if s.name.endswith("_sum")]
    assert sum_sample.value == pytest.approx(expected)
    assert due_at_ms(proxy) == fields.get("options", {}).get("eta", fields["message_timestamp"])


@pytest.mark.unit
def test_the_broker_times_every_message() -> None:
    from workers.broker import _middleware

    assert any(isinstance(m, MessageLatency) for m in _middleware())


# ---- every log line of a whole account life, and no secret in any -------------------------------


def test_a_whole_account_life_logs_each_event_and_never_a_secret(
    pipeline_factory: Callable[..., Pipeline], captured_logs: Callable[[Any], io.StringIO], opened: Opener
) -> None:
    pipe = pipeline_factory(log_format="json", log_level="DEBUG")
    buffer = captured_logs(pipe.settings)
    client = opened(api_client(pipe))
    secrets = settings_secrets(pipe.settings)

    attempt_id, query, verifier = oauth_connect(pipe, client, "twitter")
    row = pipe.attempt(attempt_id)
    assert row.status == "connected", row.history
    (account_id,) = row.account_ids
    first = load(pipe, account_id).tokens
    secrets.update(code=query["code"], verifier=verifier)
    secrets.update(access_token=first.access_token, refresh_token=first.refresh_token or "")

    make_due(pipe, account_id)
    assert client.post(f"/v1/accounts/{account_id}/refresh").status_code == 202
    wait_until(lambda: events(pipe, account_id, "refreshed"), what="the refresh")
    second = load(pipe, account_id).tokens
    assert second.access_token != first.access_token
    secrets.update(new_access_token=second.access_token, new_refresh_token=second.refresh_token or "")
    handed = client.post(f"/v1/accounts/{account_id}/token")  # the token API logs too
    assert handed.status_code == 200 and handed.json()["access_token"] == second.access_token

    assert client.post(f"/v1/accounts/{account_id}/sync").status_code == 202
    wait_until(lambda: events(pipe, account_id, "synced"), what="the sync")
    assert client.delete(f"/v1/accounts/{account_id}").status_code == 202
    wait_until(lambda: events(pipe, account_id, "disconnected"), what="the disconnect")
    wait_until(lambda: "account disconnected" in buffer.getvalue(), what="the disconnect's log line")

    lines = json_lines(buffer)
    for message in ("account connected", "token refreshed", "stats synced", "account disconnected"):
        line = event_line(lines, message, account_id)
        assert line["platform"] == "twitter" and line["outcome"], line
        assert {"ts", "level", "logger"} <= set(line)
    assert_no_secret(buffer, secrets)


@pytest.mark.pds
def test_a_bluesky_login_and_refresh_never_log_the_app_password_or_session(
    pipeline_factory: Callable[..., Pipeline],
    captured_logs: Callable[[Any], io.StringIO],
    opened: Opener,
    request: pytest.FixtureRequest,
) -> None:
    pds = request.getfixturevalue("pds")
    pipe = pipeline_factory(log_format="json", log_level="DEBUG", **bluesky_settings(pds))
    buffer = captured_logs(pipe.settings)
    client = opened(api_client(pipe))
    person = pds.create_account()
    secrets = {**settings_secrets(pipe.settings), "app_password": person.app_password}

    body = {"site_id": "site-1", "user_id": "user-1", "handle": person.handle, "app_password": person.app_password}
    started = client.post("/v1/connect/bluesky", json=body)
    assert started.status_code == 202, started.text
    row = pipe.wait_for(started.json()["attempt_id"])
    assert row.status == "connected", row.history
    (account_id,) = row.account_ids
    first = load(pipe, account_id).tokens
    secrets.update(access_jwt=first.access_token, refresh_jwt=first.refresh_token or "")
    make_due(pipe, account_id)
    assert client.post(f"/v1/accounts/{account_id}/refresh").status_code == 202
    wait_until(lambda: events(pipe, account_id, "refreshed"), what="the refresh")
    second = load(pipe, account_id).tokens
    secrets.update(new_access_jwt=second.access_token, new_refresh_jwt=second.refresh_token or "")
    wait_until(lambda: "token refreshed" in buffer.getvalue(), what="the refresh's log line")

    lines = json_lines(buffer)
    assert event_line(lines, "account connected", account_id)["platform"] == "bluesky"
    assert event_line(lines, "token refreshed", account_id)["outcome"] == "ok"
    assert_no_secret(buffer, secrets)
