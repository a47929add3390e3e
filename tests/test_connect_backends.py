"""The connect steps on both backends: PostgreSQL and the embedded SQLite default.

Why: the connect worker writes attempts with Core statements that append to ``history`` inside
the database (JSONB ``||`` on PostgreSQL, ``json_insert`` on SQLite) and folds the first stats
turn into the account upsert; the pipeline tests cover PostgreSQL only. These tests call
``workers.connect.handle_code_received`` inline (as a worker thread would, with a chosen
message id) against the fake platform, on each backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.attempts import create_attempt, load_attempt
from models.crypto import KeyRing
from models.engine import make_engine
from models.migrate import upgrade
from models.tables import SocialAccount, SocialAccountEvent, SocialOAuthState
from platforms.oauth2 import pkce_pair
from social_accounts.errors import NotNow, Transient
from tests.fakeplatform import FakePlatformServer, FakeResponse
from tests.pipeline_support import FAST_POLICY_KW
from workers import connect, retrying, runtime
from workers.adapters import adapter_for
from workers.cooldowns import cooldown_key, set_cooldown

TOKEN = "/twitter/2/oauth2/token"
ME = "/twitter/2/users/me"


class Connects:
    """One backend, the runtime configured on it, and helpers to drive a twitter connect."""

    def __init__(self, rt: runtime.Runtime, engine: Engine, fake: FakePlatformServer) -> None:
        self.rt, self.engine, self.fake = rt, engine, fake

    def new(self, *, site_id: str = "site-1") -> tuple[str, str]:
        """A pending attempt authorized on the fake: ``(attempt_id, encrypted code)``."""
        import httpx

        from platforms.registry import get_adapter

        verifier, challenge = pkce_pair()
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            attempt_id = create_attempt(
                session,
                self.rt.ring,
                platform="twitter",
                site_id=site_id,
                user_id="user-1",
                expires_at=now + timedelta(minutes=10),
                now=now,
                code_verifier=verifier,
            )
        with httpx.Client() as browser:
            adapter = get_adapter("twitter", self.rt.settings, browser)
            url = adapter.authorization_url(
                state=attempt_id, redirect_uri=self.rt.settings.redirect_uri, code_challenge=challenge
            )
            location = browser.get(url, follow_redirects=False).headers["location"]
        code = dict(httpx.URL(location).params)["code"]
        return attempt_id, self.rt.ring.encrypt(code, table="message", column="code", row_id=attempt_id)

    def run(self, attempt_id: str, code_enc: str | None, message_id: str = "m-1", **kw: Any) -> str:
        kwargs: dict[str, Any] = {"error": None, "error_description": None, **kw}
        return connect.handle_code_received(
            self.rt,
            attempt_id=attempt_id,
            code_enc=code_enc,
            delivery=retrying.Delivery(message_id=message_id, retries=0),
            **kwargs,
        )

    def attempt(self, attempt_id: str) -> SocialOAuthState:
        with Session(self.engine, expire_on_commit=False) as session:
            row = load_attempt(session, attempt_id)
        assert row is not None
        return row

    def history(self, attempt_id: str) -> list[str]:
        return [entry["event"] for entry in self.attempt(attempt_id).history]

    def account(self, account_id: str) -> SocialAccount:
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(SocialAccount, account_id)
        assert row is not None
        return row


@pytest.fixture(params=["postgresql", "sqlite"])
def connects(
    request: pytest.FixtureRequest, tmp_path: Path, settings_factory: Any, fake: FakePlatformServer, redis_url: str
) -> Iterator[Connects]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'sa.db'}"
    upgrade(url)
    engine = make_engine(url)
    settings = settings_factory(database_url=url, broker_url=redis_url)  # in the test's own Redis namespace
    rt = runtime.configure(
        settings,
        engine=engine,
        ring=KeyRing.from_settings(settings),
        retry_policy=retrying.RetryPolicy(**FAST_POLICY_KW),
    )
    try:
        yield Connects(rt, engine, fake)
    finally:
        runtime.reset()


def test_a_fresh_callback_connects_with_a_complete_history(connects: Connects) -> None:
    attempt_id, code_enc = connects.new()

    assert connects.run(attempt_id, code_enc) == "connected"

    row = connects.attempt(attempt_id)
    assert (row.status, row.stage, row.error_code) == ("connected", "connected", None)
    assert connects.history(attempt_id) == ["created", "consumed", "exchanged", "connected"]
    assert row.history[1]["detail"] == "message m-1" and row.history[3]["detail"] == row.account_ids[0]
    assert row.token_bundle is None and row.code_verifier is None and row.consumed_by == "m-1"
    assert connects.fake.count(TOKEN) == 1
    account = connects.account(row.account_ids[0])
    assert account.status == "active" and account.next_sync_at is not None
    with Session(connects.engine) as session:
        (event,) = session.query(SocialAccountEvent).filter_by(kind="connected").all()
    assert (event.account_id, event.reason) == (row.account_ids[0], "connected")
    # the audit row is also the account.connected event's outbox row: it carries the new status
    assert event.data == {"attempt_id": attempt_id, "to": "active", "health_score": 100, "health_reason": "Healthy."}


def test_a_reconnect_keeps_the_sync_turn_and_records_reconnected(connects: Connects) -> None:
    first_id, first_code = connects.new()
    assert connects.run(first_id, first_code) == "connected"
    (account_id,) = connects.attempt(first_id).account_ids
    turn = connects.account(account_id).next_sync_at

    second_id, second_code = connects.new()
    assert connects.run(second_id, second_code, message_id="m-2") == "connected"

    assert connects.attempt(second_id).account_ids == [account_id]
    assert connects.account(account_id).next_sync_at == turn
    assert connects.account(account_id).token_version == 1
    with Session(connects.engine) as session:
        reasons = sorted(e.reason for e in session.query(SocialAccountEvent).filter_by(kind="connected"))
    assert reasons == ["connected", "reconnected"]


def test_a_replay_is_state_reused_and_a_finished_message_is_ignored(connects: Connects) -> None:
    attempt_id, code_enc = connects.new()
    assert connects.run(attempt_id, code_enc) == "connected"

    assert connects.run(attempt_id, code_enc, message_id="m-other") == "ignored"
    assert connects.run(attempt_id, code_enc) == "ignored"

    assert connects.history(attempt_id) == ["created", "consumed", "exchanged", "connected", "state_reused"]
    assert connects.attempt(attempt_id).status == "connected"
    assert connects.fake.count(TOKEN) == 1


def test_an_error_callback_fails_without_an_exchange(connects: Connects) -> None:
    attempt_id, _ = connects.new()

    assert connects.run(attempt_id, None, error="access_denied", error_description="no") == "failed"

    row = connects.attempt(attempt_id)
    assert (row.status, row.stage, row.error_code) == ("failed", "failed", "access_denied")
    assert connects.history(attempt_id) == ["created", "consumed", "failed"]
    assert row.code_verifier is None
    assert connects.fake.count(TOKEN) == 0


def test_a_failed_profile_fetch_retries_from_the_stored_tokens(connects: Connects) -> None:
    attempt_id, code_enc = connects.new()
    connects.fake.fail(ME, FakeResponse(503, {"error": "busy"}), times=1)

    with pytest.raises(Transient) as failed:  # the policy middleware decides (and records) the retry
        connects.run(attempt_id, code_enc)
    assert failed.value.step == "fetch_accounts"
    row = connects.attempt(attempt_id)
    assert (row.status, row.stage) == ("pending", "exchanged") and row.token_bundle

    assert connects.run(attempt_id, code_enc) == "connected"  # the same message, retried
    assert connects.history(attempt_id) == ["created", "consumed", "exchanged", "connected"]
    assert connects.fake.count(TOKEN) == 1


def test_a_refused_exchange_is_retried_and_a_died_exchange_is_uncertain(
    connects: Connects, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused_id, refused_code = connects.new()
    connects.fake.fail(TOKEN, FakeResponse(503, {"error": "busy"}), times=1)
    with pytest.raises(Transient) as refused:
        connects.run(refused_id, refused_code)
    assert refused.value.step == "exchange"
    assert connects.attempt(refused_id).stage == "consumed"  # the platform refused: the code is unspent
    assert connects.run(refused_id, refused_code) == "connected"

    died_id, died_code = connects.new(site_id="site-2")

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # the worker is killed while the code is on its way

    with monkeypatch.context() as patch:
        patch.setattr(type(adapter_for(connects.rt, "twitter")), "exchange_code", dies)
        with pytest.raises(KeyboardInterrupt):
            connects.run(died_id, died_code)
    assert connects.attempt(died_id).stage == "exchanging"
    assert connects.run(died_id, died_code) == "failed"  # the redelivery never replays the code
    row = connects.attempt(died_id)
    assert (row.status, row.error_code) == ("failed", "exchange_uncertain")


def test_a_cooldown_defers_before_the_state_is_consumed(connects: Connects) -> None:
    attempt_id, code_enc = connects.new()
    client = redis.Redis.from_url(connects.rt.settings.coordination_redis_url or "")
    set_cooldown(client, connects.rt.settings.redis_namespace, "twitter", 30.0, reason="rate_limited")
    try:
        with pytest.raises(NotNow):
            connects.run(attempt_id, code_enc)
        row = connects.attempt(attempt_id)
        assert (row.status, row.stage, row.consumed_by) == ("pending", "created", None)
        assert connects.fake.count(TOKEN) == 0
    finally:
        client.delete(cooldown_key(connects.rt.settings.redis_namespace, "twitter"))
        client.close()

    assert connects.run(attempt_id, code_enc) == "connected"
    assert connects.fake.count(TOKEN) == 1
