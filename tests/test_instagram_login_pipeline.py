"""Instagram by Instagram Login end to end: connect, refresh, sync and disconnect through the real
pipeline (Dramatiq worker on Redis, PostgreSQL) against the fake Instagram platform."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from platforms.instagram_login import InstagramLoginAdapter
from social_accounts.errors import NotNow
from tests.fakeplatform.instagram_login import IGLOGIN
from tests.lifecycle_support import calls, connect, events, load, make_due, raw_row
from tests.pipeline_support import Pipeline, code_exchanges
from workers import runtime
from workers.disconnect import disconnect_now
from workers.refresh import refresh_now
from workers.sync import sync_now

REFRESH_PATH = "/iglogin/graph/refresh_access_token"

pytestmark = pytest.mark.fake_world.with_args(IGLOGIN)


def test_connect_refresh_sync_and_disconnect(life: Pipeline) -> None:
    [account_id] = connect(life, "instagram_login")
    rt = runtime.current()
    row = raw_row(life, account_id)
    assert (row.platform, row.platform_account_id, row.account_handle) == (
        "instagram_login",
        "17841405822304914",
        "alice.creates",
    )
    assert (row.status, row.followers_count, row.following_count, row.posts_count) == ("active", 2718, 314, 42)
    assert code_exchanges(life, "instagram_login") == 1
    connected = load(life, account_id)
    assert connected.tokens.access_token.startswith("IGl") and connected.refresh_model == "extend"
    expires = connected.tokens.expires_at
    assert expires is not None and expires - datetime.now(UTC) > timedelta(days=59)
    margin = InstagramLoginAdapter.refresh_margin
    assert connected.next_refresh_at is not None
    assert expires - margin - timedelta(minutes=6) <= connected.next_refresh_at <= expires - margin

    # "refresh now" on a token younger than a day: Meta would refuse, so nothing is sent
    with pytest.raises(NotNow):
        refresh_now(rt, account_id, force=True)
    assert calls(life.fake, REFRESH_PATH) == 0
    unchanged = load(life, account_id)
    assert (unchanged.status, unchanged.tokens.access_token) == ("active", connected.tokens.access_token)

    # due, and more than a day old (here and at the fake): extended with ig_refresh_token
    make_due(life, account_id)
    IGLOGIN.age(connected.tokens.access_token, 2 * 86400)
    result = refresh_now(rt, account_id)
    after = load(life, account_id)
    assert (result.outcome, after.status) == ("refreshed", "active")
    assert calls(life.fake, REFRESH_PATH, method="GET", grant_type="ig_refresh_token") == 1
    assert after.tokens.access_token != connected.tokens.access_token
    assert after.tokens.expires_at is not None and after.tokens.expires_at - datetime.now(UTC) > timedelta(days=59)
    assert after.next_refresh_at is not None and after.next_refresh_at < after.tokens.expires_at
    assert [e.reason for e in events(life, account_id, "refreshed")] == ["requested"]

    # the new token works: counts synced with it
    IGLOGIN.followers = 3000
    assert sync_now(rt, account_id) == "synced"
    synced = raw_row(life, account_id)
    assert (synced.followers_count, synced.status, synced.health_score) == (3000, "active", 100)

    # no revocation endpoint: disconnected here, nothing sent there
    life.fake.reset_log()
    assert disconnect_now(rt, account_id) == "no_endpoint"
    assert life.fake.count("/iglogin/*") == 0
    gone = raw_row(life, account_id)
    assert (gone.status, gone.access_token, gone.refresh_token) == ("disconnected", None, None)
