"""The account lifecycle end to end: refresh, status policy, sync, health, disconnect, token API.

Real PostgreSQL, real Redis, a real Dramatiq worker (``tests.pipeline_support``), the fake
platforms and, for Bluesky, the reference PDS. Accounts are connected through the real pipeline
first, so the tokens the lifecycle works with are ones the fake platform issued and checks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from models.tables import SocialAccount
from social_accounts.errors import NotNow, Transient
from social_accounts.health import compute_health
from tests.fakeplatform import FakeResponse
from tests.lifecycle_support import (
    FAST_LIFECYCLE,
    LIFECYCLE_SETTINGS,
    ShiftedClock,
    bluesky_settings,
    calls,
    connect,
    connect_bluesky,
    connect_mastodon,
    events,
    load,
    login_bluesky,
    make_due,
    path_of,
    raw_row,
    refresh_calls,
)
from tests.pipeline_support import Pipeline
from tests.waiting import wait_until
from workers import refresh as refresh_mod
from workers import runtime
from workers.cooldowns import cooldown_key
from workers.disconnect import disconnect_now
from workers.publish import request_disconnect, request_refresh, request_sync
from workers.refresh import refresh_now
from workers.sync import sync_now
from workers.tokens import get_valid_token


def status_of(pipe: Pipeline, account_id: str) -> str:
    return load(pipe, account_id).status


def assert_health_matches(row: SocialAccount) -> None:
    """The stored score is the one the health policy gives for the row's own facts."""
    expected = compute_health(
        status=row.status,
        token_expires_at=row.token_expires_at,
        last_synced_at=row.last_synced_at,
        last_error_at=row.last_error_at,
        now=datetime.now(UTC),
    )
    assert row.health_score == expected.score


def public(client: TestClient, account_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/accounts/{account_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert not {"access_token", "refresh_token", "token_metadata"} & set(body)
    return body


# ---- the status policy --------------------------------------------------------------------------


def test_one_transient_failure_keeps_the_account_active_and_persisting_ones_mark_error(
    life: Pipeline, api: TestClient
) -> None:
    [account_id] = connect(life, "twitter")
    make_due(life, account_id)
    rt = runtime.current()
    token_path = path_of(life, "twitter", "token_url")
    life.fake.fail(token_path, FakeResponse(503, {"error": "over capacity"}), times=2)

    with pytest.raises(Transient):
        refresh_now(rt, account_id)
    once = raw_row(life, account_id)
    assert (once.status, once.consecutive_failures) == ("active", 1)
    assert once.last_error and "503" in once.last_error
    assert_health_matches(once)
    assert once.health_score < 100
    view = public(api, account_id)
    assert (view["status"], view["health_score"]) == ("active", once.health_score)
    assert "503" in view["health_reason"]

    with pytest.raises(Transient):
        refresh_now(rt, account_id)
    twice = raw_row(life, account_id)
    assert (twice.status, twice.consecutive_failures) == ("error", 2)
    assert_health_matches(twice)
    view = public(api, account_id)
    assert view["status"] == "error"
    assert "2 failed attempts in a row" in view["health_reason"]
    assert [e.data["to"] for e in events(life, account_id, "status_changed")] == ["error"]

    result = refresh_now(rt, account_id)  # the platform is back
    assert result.outcome == "refreshed"
    healed = raw_row(life, account_id)
    assert (healed.status, healed.consecutive_failures, healed.first_failure_at) == ("active", 0, None)
    assert_health_matches(healed)
    assert [e.data["to"] for e in events(life, account_id, "status_changed")] == ["error", "active"]
    assert public(api, account_id)["status"] == "active"
    assert refresh_calls(life, "twitter") == 3

    # left in `error` with a token that is not due (the scheduler's reconcile asks again): a
    # refresh with nothing to renew verifies the account with one sync instead of leaving it red
    with Session(life.engine) as session, session.begin():
        stuck = session.get(SocialAccount, account_id)
        assert stuck is not None
        stuck.status, stuck.last_synced_at = "error", None
    request_refresh(account_id, "reconcile", broker=life.broker)
    wait_until(lambda: status_of(life, account_id) == "active", what="verified active")
    assert raw_row(life, account_id).last_synced_at is not None
    assert refresh_calls(life, "twitter") == 3


def test_transient_failures_turn_error_only_once_they_span_error_after_seconds(
    pipeline_factory: Callable[..., Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time half of the rule: failures in a row are not enough while they fit in the hour."""
    from workers import lifecycle_actors

    monkeypatch.setattr(lifecycle_actors, "LIFECYCLE_POLICY", FAST_LIFECYCLE)
    pipe = pipeline_factory(**{**LIFECYCLE_SETTINGS, "error_after_seconds": 3600})
    [account_id] = connect(pipe, "twitter")
    make_due(pipe, account_id)
    rt = runtime.current()
    clock = ShiftedClock()
    monkeypatch.setattr(rt, "clock", clock)
    token_path = path_of(pipe, "twitter", "token_url")
    pipe.fake.fail(token_path, FakeResponse(503, {"error": "over capacity"}), times=4)

    started = clock()
    # three failures in a row (error_after_failures is 2), but all within the hour of the first
    for failures, minutes in enumerate((0, 20, 59), start=1):
        clock.offset = timedelta(minutes=minutes)
        with pytest.raises(Transient):
            refresh_now(rt, account_id)
        row = raw_row(pipe, account_id)
        assert (row.status, row.consecutive_failures) == ("active", failures), minutes
    assert row.first_failure_at is not None
    assert started <= row.first_failure_at <= started + timedelta(minutes=1)
    assert not events(pipe, account_id, "status_changed")

    clock.offset = timedelta(minutes=61)  # the same failure once the hour has passed
    with pytest.raises(Transient):
        refresh_now(rt, account_id)
    row = raw_row(pipe, account_id)
    assert (row.status, row.consecutive_failures) == ("error", 4)
    assert row.first_failure_at is not None and row.first_failure_at <= started + timedelta(minutes=1)
    [changed] = events(pipe, account_id, "status_changed")
    assert (changed.data["from"], changed.data["to"]) == ("active", "error")
    assert "503" in changed.reason
    assert changed.created_at >= started + timedelta(minutes=61)  # written at the runtime clock's time
    assert refresh_calls(pipe, "twitter") == 4


def test_invalid_grant_expires_the_account_at_once_and_is_never_retried(life: Pipeline, api: TestClient) -> None:
    [account_id] = connect(life, "youtube")
    account = load(life, account_id)
    assert account.tokens.refresh_token
    life.fake.grants.revoke_token(account.tokens.refresh_token)  # the user removed our app at Google
    make_due(life, account_id)

    request_refresh(account_id, "scheduled", broker=life.broker)
    wait_until(lambda: status_of(life, account_id) == "expired", what="expired")
    wait_until(lambda: life.broker.client.llen(f"{life.settings.redis_namespace}:refresh") == 0, what="queue drained")

    row = raw_row(life, account_id)
    assert row.health_score == 0
    assert row.next_refresh_at is None  # the scheduler will not pick it up again
    [failed] = events(life, account_id, "refresh_failed")
    assert "invalid_grant" in failed.reason and failed.data["error"] == "needs_reconnect"
    [changed] = events(life, account_id, "status_changed")
    assert (changed.data["from"], changed.data["to"], changed.data["error_code"]) == (
        "active",
        "expired",
        "invalid_grant",
    )
    assert "invalid_grant" in changed.reason
    view = public(api, account_id)
    assert (view["status"], view["health_score"]) == ("expired", 0)
    assert "reconnect" in view["health_reason"]
    assert api.post(f"/v1/accounts/{account_id}/token").status_code == 409

    request_refresh(account_id, "requested", broker=life.broker)  # another module asks again
    wait_until(lambda: life.broker.client.llen(f"{life.settings.redis_namespace}:refresh") == 0, what="drained")
    threading.Event().wait(1.0)  # room for any (wrong) retry to happen
    assert refresh_calls(life, "youtube") == 1


def test_429_with_retry_after_cools_the_account_down_without_calling_the_platform(
    life: Pipeline, api: TestClient
) -> None:
    [account_id] = connect(life, "twitter")
    make_due(life, account_id, seconds_left=300)
    old = load(life, account_id).tokens.access_token
    ns = life.settings.redis_namespace
    token_path = path_of(life, "twitter", "token_url")
    life.fake.fail(token_path, FakeResponse(429, {"title": "Too Many Requests"}, {"Retry-After": "30"}), times=1)

    request_refresh(account_id, "scheduled", broker=life.broker)
    wait_until(lambda: status_of(life, account_id) == "rate_limited", what="rate_limited")

    client = redis.Redis.from_url(life.settings.effective_broker_url)
    ttl_ms = client.pttl(cooldown_key(ns, "twitter", account_id))
    assert 25_000 < ttl_ms <= 30_000
    delayed = f"{ns}:refresh.DQ.msgs"
    wait_until(lambda: client.hlen(delayed) == 1, what="the retry waiting for Retry-After")

    request_refresh(account_id, "requested", broker=life.broker)
    wait_until(lambda: client.hlen(delayed) == 2, what="the second request deferred")
    with pytest.raises(NotNow) as cooled:
        refresh_now(runtime.current(), account_id)
    assert 20 < cooled.value.seconds <= 30
    # the token API hands out the still-valid token instead of calling the platform
    answer = api.post(f"/v1/accounts/{account_id}/token")
    assert answer.status_code == 200 and answer.json()["access_token"] == old
    view = public(api, account_id)
    assert view["status"] == "rate_limited" and "rate limiting" in view["health_reason"]
    [changed] = events(life, account_id, "status_changed")
    assert (changed.data["from"], changed.data["to"]) == ("active", "rate_limited") and "429" in changed.reason
    assert refresh_calls(life, "twitter") == 1
    client.close()


# ---- a refresh the platform answered but nobody committed ---------------------------------------


class _KilledOnce:
    """Stands in for ``save_refresh_if_unchanged`` (the refresh's write when nobody touched the
    row, as here) and dies once, as a worker killed before COMMIT."""

    def __init__(self) -> None:
        self.real = refresh_mod.save_refresh_if_unchanged
        self.killed = 0

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        if not self.killed:
            self.killed += 1
            raise sa.exc.OperationalError("UPDATE social_accounts", {}, Exception("server closed the connection"))
        return bool(self.real(*args, **kwargs))


def test_x_refresh_lost_before_commit_ends_expired_not_in_a_loop(
    life: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    [account_id] = connect(life, "twitter")
    tokens = load(life, account_id).tokens
    make_due(life, account_id)
    monkeypatch.setattr(refresh_mod, "save_refresh_if_unchanged", _KilledOnce())
    rt = runtime.current()

    with pytest.raises(sa.exc.OperationalError):
        refresh_now(rt, account_id)
    assert refresh_calls(life, "twitter") == 1  # X rotated the token; we never stored the new one

    result = refresh_now(rt, account_id)  # the next attempt replays the spent refresh token
    assert (result.outcome, result.status) == ("failed", "expired")
    [failed] = events(life, account_id, "refresh_failed")
    assert "HTTP 400" in failed.reason and failed.data == {"error": "needs_reconnect", "code": "invalid_request"}
    row = raw_row(life, account_id)
    assert (row.health_score, row.next_refresh_at) == (0, None)

    assert refresh_now(rt, account_id).outcome == "skipped"  # no loop: nothing more is sent
    assert refresh_calls(life, "twitter") == 2
    trail = " ".join(f"{e.reason} {e.data}" for e in events(life, account_id))
    assert tokens.access_token not in trail and str(tokens.refresh_token) not in trail
    assert str(tokens.refresh_token) not in str(row.last_error)


@pytest.fixture
def bsky(pipeline_factory: Any, pds: Any, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    from workers import lifecycle_actors

    monkeypatch.setattr(lifecycle_actors, "LIFECYCLE_POLICY", FAST_LIFECYCLE)
    return pipeline_factory(**LIFECYCLE_SETTINGS, **bluesky_settings(pds))


def test_a_deactivated_bluesky_account_becomes_expired_with_its_status(bsky: Pipeline, pds: Any) -> None:
    account_id, person = connect_bluesky(bsky, pds)
    with httpx.Client(base_url=pds.service_url + "/xrpc") as http:
        main = http.post(
            "/com.atproto.server.createSession", json={"identifier": person.did, "password": person.password}
        ).json()
        http.post(
            "/com.atproto.server.deactivateAccount", json={}, headers={"Authorization": f"Bearer {main['accessJwt']}"}
        ).raise_for_status()

    result = refresh_now(runtime.current(), account_id, force=True)

    assert (result.outcome, result.status) == ("failed", "expired")
    [failed] = events(bsky, account_id, "refresh_failed")
    assert "deactivated" in f"{failed.reason} {failed.data}"
    view = raw_row(bsky, account_id)
    assert view.health_score == 0 and "deactivated" in str(view.last_error)


def test_bluesky_against_the_reference_pds(bsky: Pipeline, pds: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refresh (also one whose commit was lost: the 2-hour grace recovers it), sync without an
    AppView, an access token the PDS calls expired, a session the user deleted, and a disconnect
    through the worker that deletes the session at the PDS."""
    account_id, person = connect_bluesky(bsky, pds)
    rt = runtime.current()
    before = load(bsky, account_id).tokens
    make_due(bsky, account_id)
    monkeypatch.setattr(refresh_mod, "save_refresh_if_unchanged", _KilledOnce())

    with pytest.raises(sa.exc.OperationalError):
        refresh_now(rt, account_id)
    assert load(bsky, account_id).tokens.refresh_token == before.refresh_token  # nothing stored

    result = refresh_now(rt, account_id)  # the old refresh JWT still works: the same new pair
    assert (result.outcome, result.status) == ("refreshed", "active")
    after = load(bsky, account_id)
    assert after.tokens.refresh_token != before.refresh_token
    assert after.tokens.expires_at and before.expires_at and after.tokens.expires_at >= before.expires_at
    assert sync_now(rt, account_id) == "synced"  # the stored session really works
    row = raw_row(bsky, account_id)
    assert (row.followers_count, row.following_count, row.posts_count) == (None, None, None)  # no AppView
    assert row.last_synced_at is not None and row.status == "active"

    # an access token the PDS calls expired although we thought it fresh: one refresh, one retry
    expired = pds.mint_access_token(after.tokens.metadata["did"], expires_in=-60)
    with Session(bsky.engine) as session, session.begin():
        stored = session.get(SocialAccount, account_id)
        assert stored is not None
        stored.access_token = bsky.ring.encrypt(
            expired, table="social_accounts", column="access_token", row_id=account_id
        )
    assert sync_now(rt, account_id) == "synced"
    assert load(bsky, account_id).tokens.access_token != expired
    assert [e.reason for e in events(bsky, account_id, "refreshed")] == ["requested", "sync got 401"]

    # the user deleted the session: the refresh says so and the account needs reconnecting
    with httpx.Client() as http:
        gone = http.post(
            f"{pds.service_url}/xrpc/com.atproto.server.deleteSession",
            headers={"Authorization": f"Bearer {load(bsky, account_id).tokens.refresh_token}"},
        )
    assert gone.status_code == 200
    result = refresh_now(rt, account_id, force=True)
    assert (result.outcome, result.status) == ("failed", "expired")
    assert raw_row(bsky, account_id).health_score == 0
    assert events(bsky, account_id, "refresh_failed")

    # connected again, then disconnected through the worker: the PDS session goes with it
    assert login_bluesky(bsky, person) == account_id
    live = load(bsky, account_id)
    assert live.status == "active" and live.tokens.refresh_token
    request_disconnect(account_id, broker=bsky.broker)
    wait_until(lambda: events(bsky, account_id, "disconnected"), what="bluesky disconnected")
    with httpx.Client() as http:
        again = http.post(
            f"{pds.service_url}/xrpc/com.atproto.server.refreshSession",
            headers={"Authorization": f"Bearer {live.tokens.refresh_token}"},
        )
    assert again.status_code in (400, 401) and again.json()["error"] == "ExpiredToken", again.text
    row = raw_row(bsky, account_id)
    assert (row.status, row.access_token, row.refresh_token, row.token_expires_at) == ("disconnected", None, None, None)
    assert [e.kind for e in events(bsky, account_id) if e.kind in ("revoked", "disconnected")] == [
        "revoked",
        "disconnected",
    ]
    [done] = events(bsky, account_id, "disconnected")
    assert done.data == {"revocation": "revoked"}
    last = events(bsky, account_id, "status_changed")[-1].data
    assert (last["from"], last["to"]) == ("active", "disconnected")


# ---- every platform's refresh, sync and revoke ---------------------------------------------------

#: platform, fake params, refresh outcome, what happens to the refresh token, revocation path
CASES: list[tuple[str, dict[str, str], str, str, str | None]] = [
    ("twitter", {}, "refreshed", "rotates", "/twitter/2/oauth2/revoke"),
    ("linkedin", {"fake_user": "partner"}, "refreshed", "kept", None),
    ("linkedin", {}, "nothing_to_do", "none", None),
    ("tiktok", {}, "refreshed", "rotates", "/tiktok/v2/oauth/revoke/"),
    ("youtube", {}, "refreshed", "kept", "/youtube/revoke"),
    ("pinterest", {}, "refreshed", "rotates", None),
    ("facebook", {}, "nothing_to_do", "none", "/meta/graph/*"),
    ("instagram", {}, "nothing_to_do", "none", "/meta/graph/*"),
    ("threads", {}, "refreshed", "none", None),
]


def _one_platform(
    life: Pipeline, platform: str, fake_params: dict[str, str], refreshed: str, refresh_token: str, revoke: str | None
) -> None:
    ids = connect(life, platform, **fake_params)
    rt = runtime.current()
    account_id = ids[0]
    before = load(life, account_id)
    make_due(life, account_id)
    if platform == "threads":  # Threads refreshes only tokens at least a day old
        from tests.fakeplatform.threads import THREADS

        THREADS.age(before.tokens.access_token, 2 * 86400)

    result = refresh_now(rt, account_id)
    after = load(life, account_id)
    assert (result.outcome, after.status) == (refreshed, "active"), platform
    if refreshed == "refreshed":
        assert after.tokens.access_token != before.tokens.access_token, platform
        assert after.token_version == before.token_version + 1
        assert after.tokens.expires_at and after.tokens.expires_at > datetime.now(UTC)
        assert after.next_refresh_at and after.next_refresh_at < after.tokens.expires_at
        assert [e.reason for e in events(life, account_id, "refreshed")] == ["requested"]
    else:
        assert after.tokens.access_token == before.tokens.access_token, platform
        assert not events(life, account_id, "refreshed")
    if refresh_token == "rotates":
        assert after.tokens.refresh_token and after.tokens.refresh_token != before.tokens.refresh_token, platform
    elif refresh_token == "kept":  # the answer had none (or the same): the stored one stays
        assert after.tokens.refresh_token == before.tokens.refresh_token, platform
    else:
        assert after.tokens.refresh_token is None, platform

    assert sync_now(rt, account_id) == "synced", platform  # the (new) token works at the fake
    synced = raw_row(life, account_id)
    assert synced.last_synced_at is not None and (synced.status, synced.health_score) == ("active", 100)
    [event] = events(life, account_id, "synced")
    assert event.data["followers"] == synced.followers_count
    if platform in ("linkedin", "facebook"):  # counts these platforms do not give stay unknown
        assert synced.posts_count is None, platform

    method = "DELETE" if platform in ("facebook", "instagram") else "POST"
    revocations = calls(life.fake, revoke, method=method) if revoke else 0
    outcomes = [disconnect_now(rt, i) for i in ids]  # a Meta grant goes with the last
    assert outcomes[-1] == ("revoked" if revoke else "no_endpoint"), platform
    assert all(o == "grant_shared" for o in outcomes[:-1]), (platform, outcomes)
    if revoke:
        per_grant = 2 if platform == "twitter" else 1  # X: the refresh token, then the access token
        assert calls(life.fake, revoke, method=method) == revocations + per_grant, platform
    for i in ids:
        row = raw_row(life, i)
        assert (row.status, row.access_token, row.refresh_token, row.health_score) == ("disconnected", None, None, 0)
        kinds = [e.kind for e in events(life, i) if e.kind in ("revoked", "disconnected")]
        assert kinds == (["revoked", "disconnected"] if i == ids[-1] and revoke else ["disconnected"]), platform


def test_each_platform_refreshes_syncs_and_revokes_through_the_fake(life: Pipeline) -> None:
    for case in CASES:
        _one_platform(life, *case)

    # Mastodon: nothing to refresh, ever; sync and revocation at the instance
    account_id = connect_mastodon(life)
    rt = runtime.current()
    before = load(life, account_id)
    assert before.tokens.expires_at is None and before.next_refresh_at is None
    assert refresh_now(rt, account_id, force=True).outcome == "nothing_to_do"
    assert sync_now(rt, account_id) == "synced"
    assert raw_row(life, account_id).followers_count is not None
    assert disconnect_now(rt, account_id) == "revoked"
    assert calls(life.fake, "/oauth/revoke", method="POST") == 1
    with httpx.Client() as http:  # the instance no longer accepts the token
        me = http.get(
            f"{life.fake.base_url}/api/v1/accounts/verify_credentials",
            headers={"Authorization": f"Bearer {before.tokens.access_token}"},
        )
    assert me.status_code == 401
    assert raw_row(life, account_id).access_token is None


# ---- sync ----------------------------------------------------------------------------------------


def test_sync_counts_and_the_401_path(life: Pipeline, api: TestClient) -> None:
    from tests.fakeplatform.twitter import USERS

    [account_id] = connect(life, "twitter")
    with Session(life.engine) as session, session.begin():  # forget what the connect stored
        row = session.get(SocialAccount, account_id)
        assert row is not None
        row.followers_count = row.following_count = row.posts_count = None
        row.last_synced_at = None
        row.health_score = 90

    assert api.post(f"/v1/accounts/{account_id}/sync").status_code == 202
    wait_until(lambda: raw_row(life, account_id).last_synced_at is not None, what="synced")
    row = raw_row(life, account_id)
    metrics = USERS["alice"]["public_metrics"]
    assert (row.followers_count, row.following_count, row.posts_count) == (
        metrics["followers_count"],
        metrics["following_count"],
        metrics["tweet_count"],
    )
    view = public(api, account_id)
    assert (view["status"], view["health_score"], view["followers_count"]) == ("active", 100, row.followers_count)
    assert view["health_reason"] == "Connected and working."

    # X says the access token expired although our clock says it is fresh: one refresh, one retry
    token = load(life, account_id).tokens.access_token
    life.fake.grants.expire_access(token)
    life.fake.reset_log()
    assert sync_now(runtime.current(), account_id) == "synced"
    assert calls(life.fake, "/twitter/2/users/me") == 2
    assert refresh_calls(life, "twitter") == 1
    assert load(life, account_id).tokens.access_token != token
    assert [e.reason for e in events(life, account_id, "refreshed")] == ["sync got 401"]

    # refused again after the refresh: the needs-reconnect path, once (through the worker)
    life.fake.reset_log()
    unauthorized = FakeResponse(401, {"title": "Unauthorized", "status": 401, "detail": "Unauthorized"})
    life.fake.fail("/twitter/2/users/me", unauthorized, times=5)
    request_sync(account_id, broker=life.broker)
    wait_until(lambda: status_of(life, account_id) == "expired", what="expired")
    threading.Event().wait(0.5)  # room for a (wrong) retry
    assert calls(life.fake, "/twitter/2/users/me") == 2
    assert refresh_calls(life, "twitter") == 1
    view = public(api, account_id)
    assert (view["status"], view["health_score"]) == ("expired", 0)
    assert "reconnect" in view["health_reason"]


# ---- disconnect ----------------------------------------------------------------------------------


def test_disconnect_revokes_erases_and_survives_a_failing_revocation(life: Pipeline, api: TestClient) -> None:
    revoke = "/twitter/2/oauth2/revoke"
    [alice] = connect(life, "twitter")
    [bob] = connect(life, "twitter", fake_user="bob")
    pages = connect(life, "facebook")
    tokens = load(life, alice).tokens

    assert api.delete(f"/v1/accounts/{alice}").status_code == 202
    wait_until(lambda: events(life, alice, "disconnected"), what="alice disconnected")
    row = raw_row(life, alice)
    assert (row.status, row.access_token, row.refresh_token, row.token_expires_at) == ("disconnected", None, None, None)
    assert row.health_score == 0
    assert calls(life.fake, revoke) == 2  # X: the refresh token, then the access token
    assert [e.kind for e in events(life, alice) if e.kind in ("revoked", "disconnected")] == ["revoked", "disconnected"]
    [changed] = events(life, alice, "status_changed")
    assert (changed.data["from"], changed.data["to"]) == ("active", "disconnected")
    assert life.fake.grants.check_access(tokens.access_token) == (None, "revoked")
    view = public(api, alice)
    assert (view["status"], view["health_score"]) == ("disconnected", 0)
    assert api.post(f"/v1/accounts/{alice}/token").status_code == 409

    # the platform keeps failing: retried within the budget, recorded, disconnected locally anyway
    life.fake.fail(revoke, FakeResponse(503, {"error": "unavailable"}), times=50)
    request_disconnect(bob, broker=life.broker)
    wait_until(lambda: events(life, bob, "disconnected"), what="bob disconnected", timeout=30)
    tries = 1 + FAST_LIFECYCLE.max_transient
    assert calls(life.fake, revoke) == 2 + tries
    assert len(events(life, bob, "revoke_failed")) == tries
    [done] = events(life, bob, "disconnected")
    assert done.data["revocation"] == "revoke_failed"
    row = raw_row(life, bob)
    assert (row.status, row.access_token, row.refresh_token) == ("disconnected", None, None)
    assert not events(life, bob, "revoked")
    assert [(e.data["from"], e.data["to"]) for e in events(life, bob, "status_changed")] == [("active", "disconnected")]
    life.fake.clear_faults()

    # a Page whose Meta grant still serves the person's other Pages: tokens erased, grant kept
    assert len(pages) >= 2
    assert api.delete(f"/v1/accounts/{pages[0]}").status_code == 202
    wait_until(lambda: events(life, pages[0], "disconnected"), what="page disconnected")
    assert calls(life.fake, "/meta/graph/*", method="DELETE") == 0
    assert events(life, pages[0], "revoke_skipped")
    assert raw_row(life, pages[0]).access_token is None
    for other in pages[1:]:
        assert status_of(life, other) == "active"
        assert sync_now(runtime.current(), other) == "synced"  # their grant still works


# ---- the token API -------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_short_lived_token_is_refreshed_at_half_its_lifetime_not_in_a_loop() -> None:
    from social_accounts.values import TokenSet
    from workers.refresh import is_due

    issued = datetime(2026, 1, 1, tzinfo=UTC)
    tokens = TokenSet("at", "rt", expires_at=issued + timedelta(seconds=60), metadata={"issued_at": issued.isoformat()})
    margin = timedelta(minutes=10)
    assert not is_due(tokens, margin, issued + timedelta(seconds=29))
    assert is_due(tokens, margin, issued + timedelta(seconds=31))
    long_lived = tokens.replace(expires_at=issued + timedelta(hours=2))
    assert not is_due(long_lived, margin, issued + timedelta(minutes=109))
    assert is_due(long_lived, margin, issued + timedelta(minutes=111))


def test_token_api(life: Pipeline, api: TestClient) -> None:
    [account_id] = connect(life, "twitter")
    stored = load(life, account_id)
    # the connect stamped the token's issue time and gave the account a first sync turn
    connected_at = datetime.fromisoformat(stored.tokens.metadata["issued_at"])
    first_sync = raw_row(life, account_id).next_sync_at
    assert first_sync is not None
    assert connected_at <= first_sync <= connected_at + timedelta(seconds=life.settings.sync_every_seconds)

    # not due: the stored token, no platform call, nothing rewritten
    answer = api.post(f"/v1/accounts/{account_id}/token")
    assert answer.status_code == 200
    assert answer.json()["access_token"] == stored.tokens.access_token
    assert answer.headers["cache-control"] == "no-store"
    assert refresh_calls(life, "twitter") == 0
    assert load(life, account_id).next_refresh_at == stored.next_refresh_at
    assert api.post("/v1/accounts/00000000-0000-0000-0000-000000000000/token").status_code == 404

    # due: refreshed first, and the platform accepts what we hand out
    make_due(life, account_id)
    answer = api.post(f"/v1/accounts/{account_id}/token")
    assert answer.status_code == 200
    fresh = answer.json()["access_token"]
    assert fresh != stored.tokens.access_token and fresh == load(life, account_id).tokens.access_token
    assert refresh_calls(life, "twitter") == 1
    with httpx.Client() as http:
        me = http.get(f"{life.fake.base_url}/twitter/2/users/me", headers={"Authorization": f"Bearer {fresh}"})
    assert me.status_code == 200

    # due again, ten callers at once behind a slow platform: one refresh, one token for all
    make_due(life, account_id)
    life.fake.delay = 0.2
    barrier = threading.Barrier(10)
    got: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait()
            got.append(get_valid_token(account_id).access_token)
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    life.fake.delay = 0.0
    assert not errors
    assert len(got) == 10 and len(set(got)) == 1 and fresh not in got
    assert refresh_calls(life, "twitter") == 2
    assert status_of(life, account_id) == "active"
