"""``GET /oauth/callback``: verify the state, enqueue one encrypted message, redirect — nothing else.

Most tests give the app an engine pointing at a closed port: the callback must work without the
database, so any database access would fail them. The broker is the real Redis (fixture
``redis_url``), and the queue is inspected in Redis itself; the tests marked ``@BOTH`` also run on
Dramatiq's in-memory ``StubBroker`` (the unit tier).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import httpx2
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from models.crypto import KeyRing
from models.engine import make_engine
from social_accounts.settings import Settings
from tests.support import WEB_BACKENDS, queued_messages, web_backend
from tests.waiting import WAIT_SECONDS, wait_until
from web_callback.app import DropQueryString, create_app
from web_callback.state import SignedState, sign_state
from workers.broker import build_broker

DEAD_DB = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
DEAD_REDIS = "redis://127.0.0.1:1/0"
RETURN_TO = "http://127.0.0.1:8000/dashboard/social?tab=accounts"
ATTEMPT = "0b8e4c52-2d3f-4a1e-9c7b-6f5a4d3c2b1a"


@dataclass
class CallbackEnv:
    client: TestClient
    settings: Settings
    broker: Any  # a RedisBroker, or the unit tier's StubBroker
    ring: KeyRing

    @property
    def namespace(self) -> str:
        return self.settings.redis_namespace

    def stored(self) -> bytes:
        """Every value under our namespace (every queued message in memory), concatenated (to
        search for secrets)."""
        if isinstance(self.broker, StubBroker):
            return b"\n".join(data for queue in self.broker.queues.values() for data in list(queue.queue))
        client = self.broker.client
        out = []
        for key in client.scan_iter(f"{self.namespace}:*"):
            kind = client.type(key)
            if kind == b"hash":
                out += [k + v for k, v in client.hgetall(key).items()]
            elif kind == b"list":
                out += client.lrange(key, 0, -1)
            elif kind == b"zset":
                out += client.zrange(key, 0, -1)
            elif kind == b"string":
                out.append(client.get(key) or b"")
        return b"\n".join(out)

    def queued(self, queue: str = "connect") -> list[dict[str, Any]]:
        """The messages waiting on ``queue``, read straight from Redis (or the StubBroker)."""
        return queued_messages(self.broker, queue)

    def state(self, *, expires_in: timedelta = timedelta(minutes=10), return_to: str | None = RETURN_TO) -> str:
        signed = SignedState(ATTEMPT, "twitter", datetime.now(UTC) + expires_in, return_to)
        return sign_state(signed, self.settings.state_secret or "")

    def callback(self, **params: str) -> httpx2.Response:
        return self.client.get("/oauth/callback?" + urlencode(params))


@pytest.fixture
def dead_engine() -> Iterator[Engine]:
    engine = make_engine(DEAD_DB)
    yield engine
    engine.dispose()


#: run a test on Redis and on the in-memory broker (unit tier)
BOTH = pytest.mark.parametrize("env", WEB_BACKENDS, indirect=True)


@pytest.fixture
def env(
    request: pytest.FixtureRequest, tmp_path: Any, settings_factory: Any, dead_engine: Engine
) -> Iterator[CallbackEnv]:
    _, broker_url = web_backend(request, tmp_path)
    settings = settings_factory(broker_url=broker_url, database_url=DEAD_DB)
    broker = build_broker(settings)
    try:
        with TestClient(create_app(settings, broker=broker, engine=dead_engine), follow_redirects=False) as client:
            yield CallbackEnv(client, settings, broker, KeyRing.from_settings(settings))
    finally:
        broker.close()


# ---- the happy paths ------------------------------------------------------------------------


@BOTH
def test_valid_callback_enqueues_one_encrypted_message_and_redirects(env: CallbackEnv) -> None:
    code = "the-authorization-code-0123456789"
    response = env.callback(code=code, state=env.state())

    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("http", "127.0.0.1:8000", "/dashboard/social")
    assert parse_qs(location.query) == {"tab": ["accounts"], "attempt": [ATTEMPT]}
    assert response.headers["cache-control"] == "no-store"

    messages = env.queued()
    assert len(messages) == 1
    message = messages[0]
    assert message["actor_name"] == "code_received"
    kwargs = message["kwargs"]
    assert kwargs["attempt_id"] == ATTEMPT and kwargs["error"] is None
    assert code not in json.dumps(message)
    assert env.ring.decrypt(kwargs["code_enc"], table="message", column="code", row_id=ATTEMPT) == code
    # bound to the attempt: the same ciphertext is useless for another one
    with pytest.raises(Exception, match="decrypt|authentic|tamper|moved"):
        env.ring.decrypt(kwargs["code_enc"], table="message", column="code", row_id="other")
    assert kwargs["code_enc"].encode() in env.stored()  # the search below does see the message
    assert code.encode() not in env.stored()


@BOTH
def test_access_denied_with_valid_state_is_enqueued_too(env: CallbackEnv) -> None:
    response = env.callback(error="access_denied", error_description="The user said no", state=env.state())
    assert response.status_code == 303
    assert parse_qs(urlsplit(response.headers["location"]).query)["attempt"] == [ATTEMPT]
    [message] = env.queued()
    assert message["kwargs"]["error"] == "access_denied"
    assert message["kwargs"]["code_enc"] is None
    assert message["kwargs"]["error_description"] == "The user said no"


@BOTH
def test_existing_attempt_parameter_is_replaced_not_duplicated(env: CallbackEnv) -> None:
    response = env.callback(code="c0de", state=env.state(return_to="http://127.0.0.1:8000/x?attempt=old&a=1#frag"))
    location = urlsplit(response.headers["location"])
    assert parse_qs(location.query) == {"a": ["1"], "attempt": [ATTEMPT]}
    assert location.fragment == "frag"


@BOTH
def test_without_return_to_a_plain_page_answers(env: CallbackEnv) -> None:
    response = env.callback(code="c0de", state=env.state(return_to=None))
    assert response.status_code == 200
    assert "close this window" in response.text
    assert len(env.queued()) == 1


# ---- refused: nothing enqueued --------------------------------------------------------------


def refused(env: CallbackEnv, response: httpx2.Response, *phrases: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/plain")
    for phrase in phrases:
        assert phrase in response.text
    assert env.queued() == []
    assert env.stored() == b""  # not even a dangling message id


@BOTH
def test_forged_state_is_refused(env: CallbackEnv) -> None:
    forged = sign_state(SignedState(ATTEMPT, "twitter", datetime.now(UTC) + timedelta(minutes=5)), "not-our-secret")
    refused(env, env.callback(code="c0de", state=forged), "not valid", "signature")


@BOTH
def test_malformed_state_is_refused(env: CallbackEnv) -> None:
    refused(env, env.callback(code="c0de", state="garbage"), "not valid", "malformed")


@BOTH
def test_expired_state_is_refused(env: CallbackEnv) -> None:
    refused(env, env.callback(code="c0de", state=env.state(expires_in=timedelta(seconds=-1))), "expired")


@BOTH
def test_missing_state_is_refused(env: CallbackEnv) -> None:
    refused(env, env.callback(code="c0de"), "no state")


@BOTH
def test_missing_code_and_error_is_refused(env: CallbackEnv) -> None:
    refused(env, env.callback(state=env.state()), "neither an authorization code nor an error")
    refused(env, env.callback(state=env.state(), code=""), "neither")


@BOTH
def test_oversized_parameters_are_refused(env: CallbackEnv) -> None:
    refused(env, env.callback(code="c" * 5000, state=env.state()), "'code' parameter is too long")
    refused(env, env.callback(error="x" * 500, state=env.state()), "'error' parameter is too long")
    refused(env, env.callback(code="c0de", state=env.state(), junk="j" * 9000), "too large")


@BOTH
def test_error_that_is_not_an_oauth_code_is_refused(env: CallbackEnv) -> None:
    refused(env, env.callback(error="access denied\n", state=env.state()), "not a valid OAuth error code")


def test_broker_down_is_503_and_the_user_can_simply_retry(
    redis_url: str, settings_factory: Any, dead_engine: Engine
) -> None:
    down = settings_factory(broker_url=DEAD_REDIS, database_url=DEAD_DB)
    namespace = down.redis_namespace
    state = sign_state(
        SignedState(ATTEMPT, "twitter", datetime.now(UTC) + timedelta(minutes=5), RETURN_TO), "test-state-secret"
    )
    query = "/oauth/callback?" + urlencode({"code": "c0de-c0de", "state": state})
    with TestClient(create_app(down, engine=dead_engine), follow_redirects=False) as client:
        response = client.get(query)
    assert response.status_code == 503
    assert "try connecting again" in response.text
    assert "c0de" not in response.text

    # the broker is back: the same click now goes through, exactly once
    up = down.model_copy(update={"broker_url": redis_url})
    broker = build_broker(up)
    conn = redis.Redis.from_url(redis_url)
    try:
        with TestClient(create_app(up, broker=broker, engine=dead_engine), follow_redirects=False) as client:
            assert client.get(query).status_code == 303
        assert conn.llen(f"{namespace}:connect") == 1
    finally:
        conn.close()
        broker.close()


# ---- the event loop -------------------------------------------------------------------------


class GatedBroker(StubBroker):
    """A broker whose enqueue blocks until the test opens the gate: a Redis round trip as slow as
    the test wants. The wait is bounded only so that a blocked event loop fails the test instead
    of hanging it (``timed_out``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0
        self.timed_out = 0
        self._count = threading.Lock()

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        with self._count:
            self.waiting += 1
        if not self.gate.wait(WAIT_SECONDS):
            self.timed_out += 1
        return super().enqueue(message, delay=delay)


@pytest.mark.unit
def test_a_slow_broker_does_not_block_the_event_loop(settings_factory: Any, dead_engine: Engine) -> None:
    settings = settings_factory(database_url=DEAD_DB)
    broker = GatedBroker()
    app = create_app(settings, broker=broker, engine=dead_engine)
    state = sign_state(
        SignedState(ATTEMPT, "twitter", datetime.now(UTC) + timedelta(minutes=5), RETURN_TO), "test-state-secret"
    )
    n = 6

    async def run() -> tuple[list[int], int, bool]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
            callbacks = [client.get("/oauth/callback", params={"code": f"code-{i}", "state": state}) for i in range(n)]
            tasks = [asyncio.ensure_future(c) for c in callbacks]
            # all n wait in the broker at once: side by side in threads, not one after the other
            await asyncio.to_thread(wait_until, lambda: broker.waiting == n, what="every callback in the broker")
            health = await client.get("/healthz")  # the loop still serves while they wait
            answered_while_blocked = not broker.gate.is_set()
            broker.gate.set()
            responses = await asyncio.gather(*tasks)
            return [r.status_code for r in responses], health.status_code, answered_while_blocked

    statuses, health, answered_while_blocked = asyncio.run(run())
    assert (health, answered_while_blocked) == (200, True)
    assert statuses == [303] * n
    assert broker.queues["connect"].qsize() == n
    assert broker.timed_out == 0  # no enqueue ever held the loop until the gate gave up


# ---- end to end with the fake platform and the real database -----------------------------------


def test_connect_then_platform_redirect_then_callback(
    pg_url: str, redis_url: str, settings_factory: Any, fake: Any
) -> None:
    from models.migrate import upgrade

    upgrade(pg_url)
    settings = settings_factory(broker_url=redis_url, database_url=pg_url)
    engine = make_engine(pg_url)
    broker = build_broker(settings)
    conn = redis.Redis.from_url(redis_url)
    try:
        with TestClient(create_app(settings, broker=broker, engine=engine), follow_redirects=False) as client:
            started = client.post(
                "/v1/connect/twitter",
                json={"site_id": "site-1", "user_id": "user-1", "return_to": RETURN_TO},
                headers={"Authorization": "Bearer test-api-token"},
            )
            assert started.status_code == 201, started.text
            attempt_id = started.json()["attempt_id"]
            # the fake X consents at once and sends the browser back with code and state
            consent = httpx.get(started.json()["authorization_url"], follow_redirects=False)
            assert consent.status_code == 302
            back = urlsplit(consent.headers["location"])
            assert back.path == "/oauth/callback"
            code = parse_qs(back.query)["code"][0]
            response = client.get(f"/oauth/callback?{back.query}")
        assert response.status_code == 303
        assert parse_qs(urlsplit(response.headers["location"]).query)["attempt"] == [attempt_id]
        ids = conn.lrange(f"{settings.redis_namespace}:connect", 0, -1)
        assert len(ids) == 1
        payload = conn.hget(f"{settings.redis_namespace}:connect.msgs", ids[0])
        assert payload is not None and code.encode() not in payload
        assert json.loads(payload)["kwargs"]["attempt_id"] == attempt_id
    finally:
        conn.close()
        broker.close()
        engine.dispose()


# ---- logging --------------------------------------------------------------------------------


@BOTH
def test_uvicorn_access_log_drops_the_query_string(env: CallbackEnv, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("uvicorn.access")
    assert any(isinstance(f, DropQueryString) for f in logger.filters)  # installed by create_app
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logger.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/oauth/callback?code=SECRETCODE&state=s", "1.1", 303
        )
    [record] = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert "SECRETCODE" not in record.getMessage()
    assert '"GET /oauth/callback HTTP/1.1" 303' in record.getMessage()


@BOTH
def test_callback_logs_never_carry_the_code_or_state(env: CallbackEnv, caplog: pytest.LogCaptureFixture) -> None:
    code, state = "a-code-nobody-may-log-0123456789", env.state()
    with caplog.at_level(logging.DEBUG):
        assert env.callback(code=code, state=state).status_code == 303
        assert env.callback(code=code, state="forged." + state).status_code == 400
    outcomes = [getattr(r, "outcome", None) for r in caplog.records if r.name == "web_callback.callback"]
    assert outcomes == ["enqueued", "state_invalid"]
    for record in caplog.records:
        if record.name.startswith("httpx"):  # the test's own HTTP client, playing the browser
            continue
        text = record.getMessage() + json.dumps(record.__dict__, default=str)
        assert code not in text and state not in text
