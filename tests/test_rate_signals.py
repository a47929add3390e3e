"""Proactive rate limits shared by every worker: a platform's "slow down" on a *successful*
answer pauses the next calls everywhere, and published budgets keep us under the limits.

The pipeline tests run the real worker (Dramatiq on real Redis, PostgreSQL, the fake platform):
the signal comes from the fake's headers, the cooldown lands in Redis, and the next message for
that account is put back on the delay queue without a single request to the platform.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from dramatiq.common import dq_name

from platforms.base import RateHint
from platforms.bluesky import BlueskyAdapter
from platforms.mastodon import MastodonAdapter
from platforms.meta import NEAR_LIMIT_WAIT_SECONDS
from platforms.registry import get_adapter
from social_accounts.settings import Settings
from tests.lifecycle_support import FAST_LIFECYCLE, LIFECYCLE_SETTINGS, connect, connect_mastodon, raw_row
from tests.pipeline_support import Pipeline, events
from tests.waiting import wait_until
from workers import lifecycle_actors, messages, runtime
from workers.cooldowns import active_cooldowns, cooldown_key, remaining, set_cooldown
from workers.publish import enqueue_bluesky_login
from workers.ratelimits import BLUESKY_LOGIN_BUDGET, CALL_BUDGETS, login_budget_wait, wait_before_call

# ---- reading the headers (no network) -----------------------------------------------------------


def _response(headers: dict[str, str]) -> httpx.Response:
    return httpx.Response(200, headers=headers, request=httpx.Request("GET", "https://example.test/"))


def _settings(settings_factory: Any) -> Settings:
    settings: Settings = settings_factory()
    return settings


@pytest.mark.unit
def test_x_remaining_zero_is_an_account_pause_until_the_reset(settings_factory: Any) -> None:
    adapter = get_adapter("twitter", _settings(settings_factory), httpx.Client())
    reset = str(int(time.time()) + 30)
    hint = adapter.rate_hint(_response({"x-rate-limit-remaining": "0", "x-rate-limit-reset": reset}))
    assert hint is not None and hint.scope == "account"
    assert 28 <= hint.seconds <= 31
    assert adapter.rate_hint(_response({"x-rate-limit-remaining": "1", "x-rate-limit-reset": reset})) is None
    assert adapter.rate_hint(_response({})) is None


@pytest.mark.unit
def test_meta_app_usage_pauses_the_app_but_buc_usage_only_its_account(settings_factory: Any) -> None:
    settings = _settings(settings_factory)
    for platform in ("facebook", "instagram", "threads"):
        adapter = get_adapter(platform, settings, httpx.Client())
        hint = adapter.rate_hint(_response({"x-app-usage": json.dumps({"call_count": 97, "total_time": 3})}))
        assert hint == RateHint(NEAR_LIMIT_WAIT_SECONDS, "app"), platform
        assert adapter.rate_hint(_response({"x-app-usage": json.dumps({"call_count": 60})})) is None
    buc = {"1234": [{"type": "pages", "call_count": 99, "estimated_time_to_regain_access": 7}]}
    hint = get_adapter("facebook", settings, httpx.Client()).rate_hint(
        _response({"x-business-use-case-usage": json.dumps(buc)})
    )
    assert hint == RateHint(7 * 60.0, "account")  # one business object: that account only; Meta's estimate wins
    near = {"201": [{"type": "pages", "call_count": 96, "total_cputime": 2, "total_time": 3}]}
    for platform in ("facebook", "instagram"):
        adapter = get_adapter(platform, settings, httpx.Client())
        headers = {"x-business-use-case-usage": json.dumps(near)}
        assert adapter.rate_hint(_response(headers)) == RateHint(NEAR_LIMIT_WAIT_SECONDS, "account"), platform
        headers["x-app-usage"] = json.dumps({"call_count": 95})
        assert adapter.rate_hint(_response(headers)) == RateHint(NEAR_LIMIT_WAIT_SECONDS, "app"), platform


@pytest.mark.unit
def test_bluesky_and_mastodon_remaining_zero(settings_factory: Any) -> None:
    settings = _settings(settings_factory)
    bsky = BlueskyAdapter(settings, httpx.Client())
    reset = str(int(time.time()) + 120)
    hint = bsky.rate_hint(_response({"ratelimit-remaining": "0", "ratelimit-reset": reset}))
    assert hint is not None and hint.scope == "account" and 118 <= hint.seconds <= 121
    assert bsky.rate_hint(_response({"ratelimit-remaining": "12", "ratelimit-reset": reset})) is None

    masto = MastodonAdapter(settings, httpx.Client())
    at = (datetime.now(UTC) + timedelta(seconds=90)).isoformat()
    hint = masto.rate_hint(_response({"x-ratelimit-remaining": "0", "x-ratelimit-reset": at}))
    assert hint is not None and hint.scope == "account" and 88 <= hint.seconds <= 91
    assert masto.rate_hint(_response({"x-ratelimit-remaining": "299", "x-ratelimit-reset": at})) is None


@pytest.mark.unit
def test_success_observers_see_2xx_only_and_a_broken_one_never_fails_the_call() -> None:
    from platforms.http import observe_success, send
    from social_accounts.errors import Transient

    statuses = iter([200, 503])
    transport = httpx.MockTransport(lambda request: httpx.Response(next(statuses)))
    seen: list[tuple[str, int]] = []
    with httpx.Client(transport=transport) as client:
        with observe_success(lambda platform, response: seen.append((platform, response.status_code))):
            send(client, "GET", "https://example.test/a", platform="twitter")
            with pytest.raises(Transient):
                send(client, "GET", "https://example.test/b", platform="twitter")
        assert seen == [("twitter", 200)]

        def boom(platform: str, response: httpx.Response) -> None:
            raise RuntimeError("observer bug")

        ok = httpx.MockTransport(lambda request: httpx.Response(200))
        with httpx.Client(transport=ok) as other, observe_success(boom):
            assert send(other, "GET", "https://example.test/c", platform="twitter").status_code == 200
    # outside the block nobody is watching any more
    with httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200))) as client:
        send(client, "GET", "https://example.test/d", platform="twitter")
    assert seen == [("twitter", 200)]


# ---- the real worker ------------------------------------------------------------------------------


@pytest.fixture
def life(pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    monkeypatch.setattr(lifecycle_actors, "LIFECYCLE_POLICY", FAST_LIFECYCLE)
    return pipeline_factory(**LIFECYCLE_SETTINGS)


def _redis(pipe: Pipeline) -> redis.Redis:
    return redis.Redis.from_url(pipe.settings.effective_broker_url)


def _delayed(pipe: Pipeline, queue: str) -> list[dict[str, Any]]:
    """Messages waiting on ``queue``'s delay queue (deferrals and retries)."""
    client = _redis(pipe)
    try:
        raw = client.hvals(f"{pipe.settings.redis_namespace}:{dq_name(queue)}.msgs")
    finally:
        client.close()
    return [json.loads(item) for item in raw]


def _sync(pipe: Pipeline, account_id: str) -> None:
    pipe.broker.enqueue(messages.build_message(messages.SYNC_ACCOUNT, account_id=account_id))


def _refresh(pipe: Pipeline, account_id: str, reason: str = "manual") -> None:
    pipe.broker.enqueue(messages.build_message(messages.REFRESH_ACCOUNT, account_id=account_id, reason=reason))


def test_x_remaining_zero_defers_the_next_refresh_and_sync_without_a_request(life: Pipeline) -> None:
    (account_id,) = connect(life, "twitter")
    ns = life.settings.redis_namespace
    reset = int(time.time()) + 30
    life.fake.add_headers("/twitter/2/users/me", {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(reset)})

    _sync(life, account_id)  # succeeds, and learns that the window is spent
    client = _redis(life)
    wait_until(lambda: client.pttl(cooldown_key(ns, "twitter", account_id)) > 0, what="the account's cooldown")
    assert 25 <= remaining(client, ns, "twitter", account_id) <= 31
    assert client.exists(cooldown_key(ns, "twitter")) == 0  # X's user limit pauses this account only

    life.fake.reset_log()
    _sync(life, account_id)
    _refresh(life, account_id)  # forced: it would call the token endpoint right away
    wait_until(lambda: len(_delayed(life, "sync")) == 1 and len(_delayed(life, "refresh")) == 1, what="deferrals")
    # a message is deferred by its actor, which would have made its request before: none was made
    assert life.fake.count("/twitter/*") == 0
    for queue in ("sync", "refresh"):
        (message,) = _delayed(life, queue)
        assert message["options"].get("retries", 0) == 0  # a deferral spends no retry
        assert message["options"]["eta"] / 1000 >= reset - 1  # not before the platform's reset
    client.close()


def test_meta_usage_at_97_percent_pauses_the_whole_app(life: Pipeline) -> None:
    account_ids = connect(life, "facebook")
    usage = json.dumps({"call_count": 97, "total_cputime": 10, "total_time": 12})
    life.fake.add_headers("/meta/graph/", {"x-app-usage": usage})
    _sync(life, account_ids[0])
    client = _redis(life)
    ns = life.settings.redis_namespace
    wait_until(lambda: client.pttl(cooldown_key(ns, "facebook")) > 0, what="an app-wide cooldown")
    assert NEAR_LIMIT_WAIT_SECONDS - 5 <= remaining(client, ns, "facebook") <= NEAR_LIMIT_WAIT_SECONDS
    # every account of the app waits, not only the one whose call saw the header
    rt = runtime.current()
    assert wait_before_call(rt, "facebook", "some-other-account") > 0
    found = active_cooldowns(client, ns)
    assert [(c.platform, c.scope, c.reason) for c in found] == [("facebook", "app", "near_limit")]
    client.close()


def test_meta_buc_usage_at_97_percent_pauses_that_page_only(life: Pipeline) -> None:
    from tests.fakeplatform.facebook import buc_header

    account_ids = connect(life, "facebook")
    rt = runtime.current()
    by_page = {raw_row(life, i).platform_account_id: i for i in account_ids}
    life.fake.add_headers("/meta/graph/", buc_header("201", 97))
    _sync(life, by_page["201"])
    client = _redis(life)
    ns = life.settings.redis_namespace
    wait_until(lambda: client.pttl(cooldown_key(ns, "facebook", by_page["201"])) > 0, what="the Page's cooldown")
    assert client.exists(cooldown_key(ns, "facebook")) == 0  # the app goes on
    assert wait_before_call(rt, "facebook", by_page["202"]) == 0  # and so does another Page
    found = active_cooldowns(client, ns)
    assert [(c.platform, c.scope, c.reason) for c in found] == [("facebook", f"account:{by_page['201']}", "near_limit")]
    client.close()


def test_a_connect_waits_for_an_app_cooldown_without_spending_the_code(life: Pipeline) -> None:
    client = _redis(life)
    set_cooldown(client, life.settings.redis_namespace, "twitter", 2.0, reason="rate_limited")
    started = time.monotonic()
    attempt_id, _ = life.connect("twitter")
    row = life.wait_for(attempt_id, timeout=30)
    assert row.status == "connected", row.history
    assert events(row, "deferred") and not events(row, "retry")
    token_calls = life.sent_to("/twitter/2/oauth2/token")
    assert len(token_calls) == 1 and token_calls[0] - started >= 1.5  # exchanged once, after the pause
    client.close()


def test_a_cooldown_longer_than_the_code_lives_fails_the_attempt_at_once(life: Pipeline) -> None:
    client = _redis(life)
    set_cooldown(client, life.settings.redis_namespace, "twitter", 3600.0, reason="rate_limited")
    attempt_id, _ = life.connect("twitter")
    row = life.wait_for(attempt_id, timeout=20)
    assert (row.status, row.error_code) == ("failed", "token_exchange_failed")
    assert life.sent_to("/twitter/2/oauth2/token") == []
    client.close()


def test_mastodon_budget_defers_a_sync_once_300_calls_are_spent(life: Pipeline) -> None:
    account_id = connect_mastodon(life)
    rt = runtime.current()
    limit, _window = CALL_BUDGETS["mastodon"]
    for _ in range(limit):
        assert wait_before_call(rt, "mastodon", account_id) == 0
    life.fake.reset_log()
    _sync(life, account_id)
    wait_until(lambda: len(_delayed(life, "sync")) == 1, what="the deferred sync")
    assert life.fake.count("/api/v1/*") == 0
    # another account's budget is its own
    assert wait_before_call(rt, "mastodon", "another-account") == 0


@pytest.fixture
def bsky_life(pipeline_factory: Any, fake: Any) -> Pipeline:
    # the service is the fake server: every request the login makes shows in its log
    return pipeline_factory(
        bluesky_service_url=f"{fake.base_url}/bsky", bluesky_plc_url=f"{fake.base_url}/plc", **LIFECYCLE_SETTINGS
    )


def test_the_31st_bluesky_login_in_five_minutes_is_deferred_not_sent(bsky_life: Pipeline) -> None:
    handle = "alice.example.test"
    rt = runtime.current()
    limit, _window = BLUESKY_LOGIN_BUDGET
    for _ in range(limit - 1):  # 29 logins for this identifier already
        assert login_budget_wait(rt, handle) == 0

    thirtieth, _ = bsky_life.new_attempt("bluesky", instance=handle, app_password="abcd-efgh-ijkl-mnop")
    enqueue_bluesky_login(thirtieth, broker=bsky_life.broker)
    bsky_life.wait_for(thirtieth, timeout=20)  # the fake has no PDS: it fails, but it was sent
    assert bsky_life.fake.count("/bsky/*") >= 1

    bsky_life.fake.reset_log()
    thirty_first, _ = bsky_life.new_attempt("bluesky", instance=handle, app_password="abcd-efgh-ijkl-mnop")
    enqueue_bluesky_login(thirty_first, broker=bsky_life.broker)
    row = bsky_life.wait_for(thirty_first, lambda r: bool(events(r, "deferred")), timeout=20)
    assert row.status == "pending" and not events(row, "retry")
    assert bsky_life.fake.count("/bsky/*") == 0 and bsky_life.fake.count("/plc/*") == 0
    (message,) = _delayed(bsky_life, "connect")
    assert message["kwargs"] == {"attempt_id": thirty_first}
    # another identifier is not held back
    assert login_budget_wait(rt, "bob.example.test") == 0
