"""The connect pipeline end to end: a real Dramatiq Worker on a real Redis broker, PostgreSQL,
and the fake platforms. No web app: the tests create the attempt with the repository, follow the
adapter's authorization URL on the fake, and enqueue the callback as the web app does.
"""

from __future__ import annotations

import importlib.util
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import redis
from sqlalchemy.orm import Session

from models.repository import load_account
from models.tables import SocialAccountEvent
from platforms.registry import adapter_class
from social_accounts.settings import OAUTH_PLATFORMS
from tests.fakeplatform import FakeResponse
from tests.lifecycle_support import api_client
from tests.pipeline_support import Pipeline, account_rows, bluesky_attempt, code_exchanges, events, token_path
from tests.support import platform_modules
from tests.waiting import wait_until
from workers import connect, retrying


def _faked_oauth_platforms() -> list[str]:
    """OAuth platforms that have an adapter and whose endpoints a fake module serves."""
    env: dict[str, str] = {}
    for module in platform_modules():
        env.update(module.settings_env("http://fake"))
    return [
        p
        for p in OAUTH_PLATFORMS
        if importlib.util.find_spec(f"platforms.{p}") is not None and f"{p.upper()}_TOKEN_URL" in env
    ]


OAUTH = _faked_oauth_platforms()
#: the platform the failure-path tests drive (any standard OAuth fake would do)
MAIN = "twitter"


#: the first API path each adapter reads after the exchange (on the fake)
PROFILE_PATHS = {"twitter": "/users/me", "linkedin": "/userinfo"}


def profile_path(pipe: Pipeline, platform: str) -> str:
    api = pipe.settings.endpoint(platform, "api_url")
    assert api
    return urlsplit(api).path.rstrip("/") + PROFILE_PATHS[platform]


def accounts_of(pipe: Pipeline, ids: list[str]) -> list[Any]:
    with Session(pipe.engine) as session:
        loaded = [load_account(session, pipe.ring, account_id) for account_id in ids]
    assert all(a is not None for a in loaded)
    return loaded


def connected_events(pipe: Pipeline) -> list[SocialAccountEvent]:
    with Session(pipe.engine) as session:
        return list(session.query(SocialAccountEvent).filter_by(kind="connected"))


# ---- the happy path ---------------------------------------------------------------------------


@pytest.mark.skipif(not OAUTH, reason="no OAuth adapter with a fake yet")
@pytest.mark.parametrize("platform", OAUTH)
def test_oauth_connect_ends_connected_with_active_accounts(pipeline: Pipeline, platform: str) -> None:
    attempt_id, _ = pipeline.connect(platform)

    row = pipeline.wait_for(attempt_id)

    assert (row.status, row.stage, row.error_code) == ("connected", "connected", None), row.history
    assert row.account_ids
    assert row.token_bundle is None and row.code_verifier is None  # no secret outlives the attempt
    assert code_exchanges(pipeline, platform) == 1
    margin = adapter_class(platform).refresh_margin
    for account in accounts_of(pipeline, row.account_ids):
        assert (account.platform, account.site_id, account.status, account.health_score) == (
            platform,
            "site-1",
            "active",
            100,
        )
        assert account.tokens.access_token
        expires = account.tokens.expires_at
        if expires is None:
            assert account.next_refresh_at is None
        else:
            lifetime = expires - row.created_at
            lead = min(margin, lifetime / 2)
            assert (
                expires - lead - timedelta(minutes=6)
                <= account.next_refresh_at
                <= expires - lead + timedelta(seconds=5)
            )
    assert sorted(e.account_id for e in connected_events(pipeline)) == sorted(row.account_ids)


@pytest.mark.skipif("facebook" not in OAUTH, reason="no Facebook adapter with a fake yet")
def test_facebook_three_pages_become_three_accounts_and_a_reconnect_adds_none(pipeline: Pipeline) -> None:
    first = pipeline.wait_for(pipeline.connect("facebook", fake_user="alice")[0])
    second = pipeline.wait_for(pipeline.connect("facebook", fake_user="alice")[0])

    assert first.status == second.status == "connected"
    assert len(first.account_ids) == 3
    assert sorted(second.account_ids) == sorted(first.account_ids)
    with Session(pipeline.engine) as session:
        from models.tables import SocialAccount

        assert session.query(SocialAccount).count() == 3
    reasons = sorted(e.reason for e in connected_events(pipeline))
    assert reasons == ["connected"] * 3 + ["reconnected"] * 3


def test_attempt_api_answers_connected_with_the_accounts_after_a_real_connect(pipeline: Pipeline) -> None:
    """Through HTTP only: start on the API, consent on the fake, come back through the callback
    endpoint; once the worker is done, ``GET /v1/attempts/{id}`` tells the dashboard the outcome."""
    with api_client(pipeline) as client:
        started = client.post("/v1/connect/twitter", json={"site_id": "site-1", "user_id": "user-1"})
        assert started.status_code == 201, started.text
        attempt_id = started.json()["attempt_id"]
        assert client.get(f"/v1/attempts/{attempt_id}").json()["status"] == "pending"
        with httpx.Client() as browser:
            consent = browser.get(started.json()["authorization_url"], follow_redirects=False)
        assert consent.status_code in (302, 303), consent.text
        back = urlsplit(consent.headers["location"])
        assert client.get(f"{back.path}?{back.query}", follow_redirects=False).status_code in (200, 303)
        pipeline.wait_for(attempt_id)

        view = client.get(f"/v1/attempts/{attempt_id}")

    assert view.status_code == 200, view.text
    (account,) = account_rows(pipeline)  # the one account this connect saved, read from its table
    assert (account.site_id, account.platform) == ("site-1", "twitter")
    assert view.json() == {
        "attempt_id": attempt_id,
        "platform": "twitter",
        "site_id": "site-1",
        "status": "connected",
        "error_code": None,
        "error_message": None,
        "account_ids": [account.id],
    }
    assert code_exchanges(pipeline, "twitter") == 1


# ---- replays and redelivery -------------------------------------------------------------------


def test_replayed_callback_is_recorded_as_state_reused_and_changes_nothing(pipeline: Pipeline) -> None:
    attempt_id, query = pipeline.connect(MAIN)
    before = pipeline.wait_for(attempt_id)
    assert before.status == "connected"

    pipeline.callback(attempt_id, query)  # the same callback again: a new message
    after = pipeline.wait_for(attempt_id, lambda row: bool(events(row, "state_reused")))

    assert code_exchanges(pipeline, MAIN) == 1
    assert (after.status, after.stage, after.error_code, after.account_ids) == (
        before.status,
        before.stage,
        before.error_code,
        before.account_ids,
    )
    assert len(events(after, "consumed")) == 1


def test_duplicate_arriving_first_wins_only_once(pipeline: Pipeline) -> None:
    """Two callbacks enqueued together: one exchanges, the other is state_reused."""
    attempt_id, challenge = pipeline.new_attempt(MAIN)
    query = pipeline.authorize(MAIN, attempt_id, challenge)
    pipeline.callback(attempt_id, query)
    pipeline.callback(attempt_id, query)

    row = pipeline.wait_for(attempt_id, lambda r: r.status != "pending" and bool(events(r, "state_reused")))

    assert row.status == "connected"
    assert code_exchanges(pipeline, MAIN) == 1


def test_worker_dying_after_the_exchange_resumes_from_stored_tokens(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = connect.repository.save_connected_accounts
    calls = {"n": 0}

    def dies_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker died here")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(connect.repository, "save_connected_accounts", dies_once)
    attempt_id, _ = pipeline.connect(MAIN)

    row = pipeline.wait_for(attempt_id)

    assert row.status == "connected", row.history
    assert code_exchanges(pipeline, MAIN) == 1
    retries = events(row, "retry")
    assert len(retries) == 1 and "RuntimeError" in retries[0]["detail"]
    assert "worker died here" not in str(row.history)


def test_redelivery_of_the_same_message_continues_but_another_message_does_not(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called inline, as a redelivered message after a crash would run (same message id)."""
    from workers import runtime

    attempt_id, challenge = pipeline.new_attempt(MAIN)
    query = pipeline.authorize(MAIN, attempt_id, challenge)
    code_enc = pipeline.encrypt_code(attempt_id, query["code"])
    delivery = retrying.Delivery(message_id="m-1", retries=0)
    kwargs: dict[str, Any] = {"attempt_id": attempt_id, "code_enc": code_enc, "error": None, "error_description": None}

    def crash(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt  # not an Exception: nothing in the pipeline may swallow it

    monkeypatch.setattr(connect.repository, "save_connected_accounts", crash)
    with pytest.raises(KeyboardInterrupt):
        connect.handle_code_received(runtime.current(), delivery=delivery, **kwargs)
    monkeypatch.undo()
    assert pipeline.attempt(attempt_id).stage == "exchanged"

    other = retrying.Delivery(message_id="m-2", retries=0)
    assert connect.handle_code_received(runtime.current(), delivery=other, **kwargs) == "ignored"
    assert connect.handle_code_received(runtime.current(), delivery=delivery, **kwargs) == "connected"
    assert connect.handle_code_received(runtime.current(), delivery=delivery, **kwargs) == "ignored"

    row = pipeline.attempt(attempt_id)
    assert row.status == "connected"
    assert code_exchanges(pipeline, MAIN) == 1
    assert len(events(row, "state_reused")) == 1


# ---- failures -----------------------------------------------------------------------------------


def test_transient_5xx_on_the_profile_fetch_is_retried_then_connected(pipeline: Pipeline) -> None:
    pipeline.fake.fail(profile_path(pipeline, MAIN), FakeResponse(503, {"error": "busy"}), times=2)
    attempt_id, _ = pipeline.connect(MAIN)

    row = pipeline.wait_for(attempt_id)

    assert row.status == "connected", row.history
    assert len(events(row, "retry")) == 2
    assert all("HTTP 503" in e["detail"] for e in events(row, "retry"))
    assert code_exchanges(pipeline, MAIN) == 1


def test_transient_failures_beyond_the_budget_fail_with_the_step_code(pipeline: Pipeline) -> None:
    budget = retrying.CONNECT_POLICY.max_transient
    pipeline.fake.fail(profile_path(pipeline, MAIN), FakeResponse(502, {"error": "down"}), times=budget + 5)
    attempt_id, _ = pipeline.connect(MAIN)

    row = pipeline.wait_for(attempt_id)

    assert (row.status, row.error_code) == ("failed", "profile_fetch_failed")
    assert len(events(row, "retry")) == budget
    assert row.token_bundle is None


def test_permanent_refusal_of_the_profile_fetch_fails_at_once_without_retry(pipeline: Pipeline) -> None:
    """A 403 is a refusal, not a blip: asking again cannot change it (``platforms.http.default_error``).

    X's problem-details shape (docs/platforms.md, "X / Twitter", documents it for 401; a 403 carries the same).
    The fault answers more than once, so a retry would meet it again and be counted."""
    path = profile_path(pipeline, MAIN)
    forbidden = {"title": "Forbidden", "type": "about:blank", "status": 403, "detail": "Forbidden"}
    pipeline.fake.fail(path, FakeResponse(403, forbidden), times=10)
    attempt_id, _ = pipeline.connect(MAIN)

    row = pipeline.wait_for(attempt_id)

    assert (row.status, row.stage, row.error_code) == ("failed", "failed", "profile_fetch_failed"), row.history
    assert "HTTP 403" in (row.error_message or "")
    assert not events(row, "retry")
    assert pipeline.fake.count(path) == 1
    assert code_exchanges(pipeline, MAIN) == 1
    assert row.token_bundle is None and row.account_ids == []
    assert account_rows(pipeline) == []


@pytest.mark.skipif("linkedin" not in OAUTH, reason="needs an adapter that honours Retry-After")
def test_rate_limited_profile_fetch_waits_for_retry_after(pipeline: Pipeline) -> None:
    path = profile_path(pipeline, "linkedin")
    pipeline.fake.fail(path, FakeResponse(429, {"message": "slow down"}, {"Retry-After": "1"}), times=1)
    attempt_id, _ = pipeline.connect("linkedin")

    row = pipeline.wait_for(attempt_id)

    assert row.status == "connected", row.history
    times = pipeline.sent_to(path)
    assert len(times) >= 2
    assert times[1] - times[0] >= 1.0
    [retry] = events(row, "retry")
    assert "rate_limited" in retry["detail"]


def test_invalid_grant_fails_at_once_without_retry(pipeline: Pipeline) -> None:
    body = {"error": "invalid_grant", "error_description": "code expired"}
    pipeline.fake.fail(token_path(pipeline, MAIN), FakeResponse(400, body), times=1)
    attempt_id, _ = pipeline.connect(MAIN)

    row = pipeline.wait_for(attempt_id)

    assert (row.status, row.error_code) == ("failed", "token_exchange_failed")
    assert not events(row, "retry")
    assert code_exchanges(pipeline, MAIN) == 1


def test_read_timeout_on_the_exchange_is_uncertain_and_not_retried(pipeline_factory: Any) -> None:
    pipe = pipeline_factory(http_timeout_seconds=0.3)
    ok = {"access_token": "never-seen", "token_type": "bearer"}
    pipe.fake.fail(token_path(pipe, MAIN), FakeResponse(200, ok), times=1, delay=1.0)
    attempt_id, _ = pipe.connect(MAIN)

    row = pipe.wait_for(attempt_id)

    assert (row.status, row.error_code) == ("failed", "exchange_uncertain")
    assert not events(row, "retry")
    assert code_exchanges(pipe, MAIN) == 1


def test_access_denied_fails_the_attempt_without_any_exchange(pipeline: Pipeline) -> None:
    attempt_id, challenge = pipeline.new_attempt(MAIN)
    pipeline.callback(attempt_id, {"error": "access_denied", "error_description": "The user said no"})

    row = pipeline.wait_for(attempt_id)

    assert (row.status, row.error_code) == ("failed", "access_denied")
    assert code_exchanges(pipeline, MAIN) == 0


def test_unknown_attempt_is_dropped_quietly(pipeline: Pipeline) -> None:
    from workers import runtime

    delivery = retrying.Delivery(message_id="m-x", retries=0)
    outcome = connect.handle_code_received(
        runtime.current(), attempt_id="0" * 36, code_enc=None, error=None, error_description=None, delivery=delivery
    )
    assert outcome == "ignored"


# ---- secrets ------------------------------------------------------------------------------------


def _redis_dump(url: str) -> str:
    client = redis.Redis.from_url(url)
    parts: list[str] = []
    for key in client.scan_iter(count=500):
        parts.append(key.decode(errors="replace"))
        kind = client.type(key).decode()
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "hash":
            parts.extend(f"{k!r}{v!r}" for k, v in client.hgetall(key).items())
        elif kind == "list":
            parts.extend(map(repr, client.lrange(key, 0, -1)))
        elif kind == "set":
            parts.extend(map(repr, client.smembers(key)))
        elif kind == "zset":
            parts.extend(map(repr, client.zrange(key, 0, -1)))
    client.close()
    return "\n".join(parts)


class RedisMonitor:
    """Everything any client sends to Redis while it runs (MONITOR), payloads included."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self._monitor = self.client.monitor().__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            for command in self._monitor.listen():
                self.lines.append(str(command.get("command", "")))
        except (redis.RedisError, OSError, ValueError, AttributeError):
            pass  # the connection was closed by stop()

    def stop(self) -> str:
        # MONITOR streams commands in the order Redis ran them: once a marker sent now shows up,
        # every command run before it has been seen
        marker = f"monitor-end-{uuid.uuid4().hex}"
        self.client.exists(marker)
        wait_until(lambda: any(marker in line for line in self.lines), what="the monitor's end marker")
        self._monitor.connection.disconnect()
        self._thread.join(timeout=5)
        self.client.close()
        return "\n".join(self.lines)


def test_no_token_code_or_client_secret_ever_reaches_redis(pipeline: Pipeline, redis_url: str) -> None:
    monitor = RedisMonitor(redis_url)
    # a connect with a retry (tracebacks are stored in the message) and one that fails for good
    pipeline.fake.fail(profile_path(pipeline, MAIN), FakeResponse(503, {"error": "busy"}), times=1)
    ok_id, ok_query = pipeline.connect(MAIN)
    assert pipeline.wait_for(ok_id).status == "connected"
    body = {"error": "invalid_grant", "error_description": "nope"}
    pipeline.fake.fail(token_path(pipeline, MAIN), FakeResponse(400, body), times=1)
    bad_id, bad_query = pipeline.connect(MAIN)
    assert pipeline.wait_for(bad_id).status == "failed"

    dump = monitor.stop() + _redis_dump(redis_url)

    # the dump does hold the messages (with their encrypted code) and their retry tracebacks
    assert '"code_enc":"v1:' in dump.replace("\\", "") and "Traceback" in dump
    (account,) = accounts_of(pipeline, pipeline.attempt(ok_id).account_ids)
    secrets = [ok_query["code"], bad_query["code"], account.tokens.access_token]
    secrets += [account.tokens.refresh_token] if account.tokens.refresh_token else []
    secrets += [v for k, v in pipeline.settings.model_dump().items() if k.endswith("_secret") and v]
    with pipeline.fake.grants.lock:
        secrets += list(pipeline.fake.grants.access) + list(pipeline.fake.grants.refresh_owner)
    leaked = [s for s in secrets if s and s in dump]
    assert not leaked, f"{len(leaked)} secrets found in Redis"


@pytest.mark.unit
def test_next_refresh_at_keeps_margin_but_never_more_than_half_the_lifetime() -> None:
    from social_accounts.values import TokenSet

    now = datetime(2026, 1, 1, tzinfo=UTC)
    short = TokenSet("t", expires_at=now + timedelta(seconds=60))
    long = TokenSet("t", expires_at=now + timedelta(hours=2))
    margin = timedelta(minutes=10)

    at_short = connect.next_refresh_at(short, margin, now)
    at_long = connect.next_refresh_at(long, margin, now)

    assert at_short is not None and now + timedelta(seconds=27) <= at_short <= now + timedelta(seconds=30)
    assert at_long is not None
    assert now + timedelta(minutes=110) - timedelta(minutes=1) <= at_long <= now + timedelta(minutes=110)
    assert connect.next_refresh_at(TokenSet("t"), margin, now) is None


# ---- Bluesky (the real reference PDS) -----------------------------------------------------------


@pytest.fixture
def bluesky_pipeline(pipeline_factory: Any, request: pytest.FixtureRequest) -> tuple[Pipeline, Any]:
    peer = request.getfixturevalue("pds")  # requested lazily: only Bluesky tests start the PDS
    pipe = pipeline_factory(bluesky_service_url=peer.service_url, bluesky_plc_url=peer.plc_url)
    return pipe, peer


def _bluesky_attempt(pipe: Pipeline, handle: str, app_password: str) -> str:
    from workers.publish import enqueue_bluesky_login

    attempt_id = bluesky_attempt(pipe, handle, app_password)
    enqueue_bluesky_login(attempt_id, broker=pipe.broker)
    return attempt_id


@pytest.mark.pds
def test_bluesky_login_connects_and_clears_the_app_password(bluesky_pipeline: tuple[Pipeline, Any]) -> None:
    pipe, peer = bluesky_pipeline
    account = peer.create_account()

    row = pipe.wait_for(_bluesky_attempt(pipe, account.handle, account.app_password))

    assert row.status == "connected", row.history
    assert row.app_password is None and row.token_bundle is None
    (loaded,) = accounts_of(pipe, row.account_ids)
    assert (loaded.platform_account_id, loaded.status) == (account.did, "active")
    assert loaded.tokens.refresh_token


@pytest.mark.pds
def test_bluesky_wrong_app_password_fails_login_without_retry(bluesky_pipeline: tuple[Pipeline, Any]) -> None:
    pipe, peer = bluesky_pipeline
    account = peer.create_account()

    row = pipe.wait_for(_bluesky_attempt(pipe, account.handle, "aaaa-bbbb-cccc-dddd"))

    assert (row.status, row.error_code) == ("failed", "login_failed"), row.history
    assert not events(row, "retry")
    assert row.app_password is None and row.token_bundle is None  # no secret outlives the attempt
    assert row.account_ids == []
    assert account_rows(pipe) == []


@pytest.mark.pds
def test_bluesky_main_password_fails_with_its_own_code_and_saves_nothing(
    bluesky_pipeline: tuple[Pipeline, Any],
) -> None:
    pipe, peer = bluesky_pipeline
    account = peer.create_account()

    row = pipe.wait_for(_bluesky_attempt(pipe, account.handle, account.password))

    assert (row.status, row.error_code) == ("failed", "app_password_required"), row.history
    from web_callback.messages import error_message

    assert "Create an app password" in (error_message(row.error_code) or "")  # what the API shows
    assert not events(row, "retry")
    assert row.app_password is None and row.token_bundle is None
    assert row.account_ids == [] and account_rows(pipe) == []


# ---- Mastodon (per-instance app kept in the database) -------------------------------------------


def test_mastodon_connect_uses_the_app_registered_in_the_database(pipeline: Pipeline) -> None:
    from workers import runtime
    from workers.mastodon_store import mastodon_adapter

    instance = pipeline.fake.base_url
    rows = []
    for _ in range(2):
        attempt_id, challenge = pipeline.new_attempt("mastodon", instance=instance)
        web_side = mastodon_adapter(runtime.current())  # a fresh adapter: only the database remembers the app
        url = web_side.authorization_url(
            state=attempt_id, redirect_uri=pipeline.settings.redirect_uri, code_challenge=challenge, instance=instance
        )
        with httpx.Client() as browser:
            location = browser.get(url, follow_redirects=False).headers["location"]
        pipeline.callback(attempt_id, dict(parse_qsl(urlsplit(location).query)))
        rows.append(pipeline.wait_for(attempt_id))

    assert [r.status for r in rows] == ["connected", "connected"], rows[0].history
    assert rows[0].account_ids == rows[1].account_ids
    assert pipeline.fake.count("/api/v1/apps", "POST") == 1
    (account,) = accounts_of(pipeline, rows[0].account_ids)
    assert account.next_refresh_at is None  # Mastodon tokens never expire
