"""Connect messages too old to run, on a real worker and broker (``tests.pipeline_support``).

An authorization code lives minutes: a ``code_received`` message older than
``workers.messages.CODE_MAX_AGE_MS`` is dropped unrun by Dramatiq's ``AgeLimit`` (it compares the
message's ``message_timestamp``), so the code is never sent to the token endpoint. The actor
never runs for such a message, so ``workers.broker.ExpiredConnectMessages`` ends its attempt at
once as ``timeout``; before it, the attempt stayed pending until the reconciler's
``attempt_timeout_seconds`` (30 minutes).
"""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
from sqlalchemy.orm import Session

from models.tables import SocialOAuthState
from tests.pipeline_support import Pipeline, account_rows, bluesky_attempt, code_exchanges, token_path
from tests.waiting import wait_until
from workers import messages

MAIN = "twitter"


def aged(pipe: Pipeline, message: dramatiq.Message[Any], age_ms: int) -> str:
    """Enqueue ``message`` as if it had been sent ``age_ms`` ago; returns its Redis message id."""
    sent = pipe.broker.enqueue(message.copy(message_timestamp=message.message_timestamp - age_ms))
    return str(sent.options["redis_message_id"])


def code_received(pipe: Pipeline, attempt_id: str, query: dict[str, str]) -> dramatiq.Message[Any]:
    """The message the callback would have enqueued (``workers.publish.enqueue_code_received``)."""
    return messages.build_message(
        messages.CODE_RECEIVED,
        attempt_id=attempt_id,
        code_enc=pipe.encrypt_code(attempt_id, query["code"]),
        error=None,
        error_description=None,
    )


def dead_lettered(pipe: Pipeline, redis_url: str, redis_message_id: str) -> bool:
    """Whether the message was failed (Dramatiq's dead-letter set of the connect queue)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return client.zscore(f"{pipe.settings.redis_namespace}:connect.XQ", redis_message_id) is not None
    finally:
        client.close()


def test_code_received_older_than_its_max_age_never_exchanges_and_fails_the_attempt_at_once(
    pipeline: Pipeline, redis_url: str
) -> None:
    attempt_id, challenge = pipeline.new_attempt(MAIN)
    query = pipeline.authorize(MAIN, attempt_id, challenge)
    stale = aged(pipeline, code_received(pipeline, attempt_id, query), messages.CODE_MAX_AGE_MS + 1_000)

    row = pipeline.wait_for(attempt_id, timeout=15)

    assert pipeline.fake.count(token_path(pipeline, MAIN)) == 0
    assert dead_lettered(pipeline, redis_url, stale)  # skipped by the age limit, not run
    assert (row.status, row.stage, row.error_code) == ("failed", "failed", "timeout"), row.history
    assert row.error_message == "the authorization code expired before it could be used; please connect again"
    assert row.consumed_by is None and row.code_verifier is None  # never claimed; no secret left
    assert account_rows(pipeline) == []

    # the same message a minute younger than the limit is run as usual
    fresh_id, fresh_challenge = pipeline.new_attempt(MAIN)
    fresh_query = pipeline.authorize(MAIN, fresh_id, fresh_challenge)
    aged(pipeline, code_received(pipeline, fresh_id, fresh_query), messages.CODE_MAX_AGE_MS - 60_000)
    assert pipeline.wait_for(fresh_id).status == "connected"
    assert code_exchanges(pipeline, MAIN) == 1


def test_an_expired_replay_leaves_an_attempt_another_message_owns_alone(pipeline: Pipeline, redis_url: str) -> None:
    """A stale copy of a callback whose first message claimed the attempt must not end it."""
    attempt_id, query = pipeline.connect(MAIN)
    assert pipeline.wait_for(attempt_id).status == "connected"
    with Session(pipeline.engine) as session, session.begin():  # as if the first one were still at work
        owned = session.get(SocialOAuthState, attempt_id)
        assert owned is not None
        owned.status, owned.stage = "pending", "exchanged"
    stale = aged(pipeline, code_received(pipeline, attempt_id, query), messages.CODE_MAX_AGE_MS + 1_000)
    # Dramatiq runs the skip hook (``after_skip_message``) before it rejects the message into the
    # dead-letter set: once there, the hook has had its say
    wait_until(lambda: dead_lettered(pipeline, redis_url, stale), what="the stale message dead-lettered")

    row = pipeline.attempt(attempt_id)
    assert (row.status, row.stage, row.error_code) == ("pending", "exchanged", None), row.history
    assert code_exchanges(pipeline, MAIN) == 1


def test_a_retry_that_outlived_the_max_age_ends_its_own_attempt(pipeline: Pipeline) -> None:
    """Dramatiq's retries keep the message's id and timestamp: the retry of the message that
    claimed the attempt and spent the code is skipped once too old, and ends the attempt."""
    attempt_id, query = pipeline.connect(MAIN)
    assert pipeline.wait_for(attempt_id).status == "connected"
    with Session(pipeline.engine) as session, session.begin():  # back to "between two tries"
        owned = session.get(SocialOAuthState, attempt_id)
        assert owned is not None and owned.consumed_by
        owned.status, owned.stage, owned.account_ids = "pending", "exchanged", []
        claimed_by = owned.consumed_by
    retry = code_received(pipeline, attempt_id, query).copy(message_id=claimed_by)
    aged(pipeline, retry, messages.CODE_MAX_AGE_MS + 1_000)

    row = pipeline.wait_for(attempt_id, timeout=15)

    assert (row.status, row.error_code) == ("failed", "timeout"), row.history
    assert row.error_message == (
        "the connection waited too long between two tries and was stopped; please connect again"
    )
    assert code_exchanges(pipeline, MAIN) == 1


def test_bluesky_login_too_old_to_run_fails_with_timeout_and_clears_the_password(pipeline: Pipeline) -> None:
    """``bluesky_login`` has no age limit of its own; a message that carries one is handled alike
    (no PDS is needed: the message never runs)."""
    attempt_id = bluesky_attempt(pipeline, "alice.example.com", "aaaa-bbbb-cccc-dddd")
    message = messages.build_message(messages.BLUESKY_LOGIN, attempt_id=attempt_id)
    aged(pipeline, message.copy(options={"max_age": 60_000}), 120_000)

    row = pipeline.wait_for(attempt_id, timeout=15)

    assert (row.status, row.error_code) == ("failed", "timeout"), row.history
    assert row.error_message == "the login waited too long before it could be tried; please connect again"
    assert row.app_password is None and row.token_bundle is None
    assert account_rows(pipeline) == []
