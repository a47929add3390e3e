"""Repository functions on real PostgreSQL (plus the upsert on SQLite, the embedded default).

The properties workers rely on: reconnecting updates the same row in place, an answer without
a refresh token never wipes the stored one, a refresh that lost a race learns it, and the
audit trail records what happened.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models import ids
from models.crypto import KeyRing
from models.public import PUBLIC_COLUMNS
from models.repository import (
    AccountSnapshot,
    ConnectedAccount,
    account_public_dict,
    append_history,
    attempt_secret,
    create_attempt,
    event_values,
    fetch_account,
    find_mastodon_app,
    health_reason,
    list_accounts,
    load_account,
    load_attempt,
    read_token_bundle,
    record_event,
    save_connected_accounts,
    save_mastodon_app,
    save_refresh_if_unchanged,
    save_refreshed_tokens,
    store_token_bundle,
    upsert_account,
)
from models.tables import SocialAccount, SocialAccountEvent
from social_accounts.values import AccountProfile, Stats, TokenSet

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def profile(
    access: str = "AT-1",
    refresh: str | None = "RT-1",
    *,
    pid: str = "acct-1",
    name: str = "Alice",
    scopes: tuple[str, ...] = ("read",),
    stats: Stats | None = None,
    refresh_expires: datetime | None = None,
) -> AccountProfile:
    tokens = TokenSet(
        access_token=access,
        refresh_token=refresh,
        expires_at=NOW + timedelta(hours=2),
        refresh_expires_at=refresh_expires,
        scopes=scopes,
        metadata={"user_id": "meta-1"},
    )
    return AccountProfile(
        platform_account_id=pid,
        name=name,
        handle="@alice",
        avatar_url="https://img/a.png",
        tokens=tokens,
        stats=stats or Stats(),
        refresh_model="rotate",
    )


def upsert(engine: Engine, ring: KeyRing, prof: AccountProfile, *, now: datetime = NOW) -> tuple[str, bool]:
    with Session(engine) as s, s.begin():
        return upsert_account(
            s, ring, site_id="site-1", platform="twitter", user_id="u1", profile=prof, next_refresh_at=None, now=now
        )


def count_accounts(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM social_accounts")).scalar_one()


# ---- upsert ----------------------------------------------------------------------------------


def test_upsert_inserts_then_updates_in_place(engine: Engine, ring: KeyRing) -> None:
    first_id, inserted = upsert(engine, ring, profile(stats=Stats(followers=10, posts=3)))
    assert inserted is True
    assert first_id == ids.account_id("site-1", "twitter", "acct-1")
    with engine.begin() as conn:  # the account went bad meanwhile
        conn.execute(sa.text("UPDATE social_accounts SET status='error', health_score=20, consecutive_failures=3"))

    later = NOW + timedelta(days=1)
    second_id, inserted = upsert(engine, ring, profile("AT-2", "RT-2", name="Alice B."), now=later)
    assert (second_id, inserted) == (first_id, False)
    assert count_accounts(engine) == 1
    with Session(engine) as s:
        loaded = load_account(s, ring, first_id)
        assert loaded is not None
        assert loaded.tokens.access_token == "AT-2" and loaded.tokens.refresh_token == "RT-2"
        assert loaded.token_version == 1 and loaded.status == "active" and loaded.health_score == 100
        assert loaded.consecutive_failures == 0
        row = loaded.row
        assert row.account_name == "Alice B." and row.created_at == NOW and row.updated_at == later
        assert row.followers_count == 10 and row.posts_count == 3  # not given this time: kept
        assert loaded.tokens.metadata == {"user_id": "meta-1"} and loaded.tokens.scopes == ("read",)


def test_empty_refresh_token_never_wipes_the_stored_one(engine: Engine, ring: KeyRing) -> None:
    rt_expiry = NOW + timedelta(days=30)
    acc, _ = upsert(engine, ring, profile("AT-1", "RT-keep", refresh_expires=rt_expiry))
    upsert(engine, ring, profile("AT-2", None, scopes=()))
    upsert(engine, ring, profile("", ""))  # nothing usable at all
    with Session(engine) as s:
        loaded = load_account(s, ring, acc)
        assert loaded is not None
        assert loaded.tokens.refresh_token == "RT-keep"
        assert loaded.tokens.refresh_expires_at == rt_expiry
        assert loaded.tokens.access_token == "AT-2"
        assert loaded.tokens.scopes == ("read",)
        assert loaded.token_version == 2


def test_concurrent_connects_of_one_account_make_one_row(engine: Engine, ring: KeyRing) -> None:
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def connect(n: int) -> None:
        try:
            barrier.wait(10)
            results.append(upsert(engine, ring, profile(f"AT-{n}", f"RT-{n}")))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=connect, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert count_accounts(engine) == 1
    assert len({acc for acc, _ in results}) == 1
    assert sorted(inserted for _, inserted in results) == [False] * 5 + [True]


def test_upsert_on_sqlite_embedded_default(sqlite_engine: Engine, ring: KeyRing) -> None:
    acc, inserted = upsert(sqlite_engine, ring, profile())
    again, inserted_again = upsert(sqlite_engine, ring, profile("AT-2", None))
    assert (inserted, inserted_again) == (True, False) and acc == again
    with Session(sqlite_engine) as s:
        loaded = load_account(s, ring, acc)
        assert loaded is not None
        assert (loaded.tokens.access_token, loaded.tokens.refresh_token) == ("AT-2", "RT-1")
        assert loaded.tokens.expires_at == NOW + timedelta(hours=2)


# ---- refresh compare-and-set -----------------------------------------------------------------


def test_save_refreshed_tokens_compare_and_set(engine: Engine, ring: KeyRing) -> None:
    acc, _ = upsert(engine, ring, profile())
    fresh = TokenSet(access_token="AT-new", refresh_token="RT-new", expires_at=NOW + timedelta(hours=5))
    nxt = NOW + timedelta(hours=4)
    with Session(engine) as s, s.begin():
        loaded = load_account(s, ring, acc)
        assert loaded is not None and loaded.token_version == 0
        assert save_refreshed_tokens(s, ring, acc, expected_version=0, tokens=fresh, next_refresh_at=nxt, now=NOW)
    # a second refresher that read version 0 before the first one committed loses
    stale = TokenSet(access_token="AT-stale", refresh_token="RT-stale")
    with Session(engine) as s, s.begin():
        assert not save_refreshed_tokens(s, ring, acc, expected_version=0, tokens=stale, next_refresh_at=None, now=NOW)
    with Session(engine) as s:
        loaded = load_account(s, ring, acc)
        assert loaded is not None
        assert (loaded.tokens.access_token, loaded.tokens.refresh_token) == ("AT-new", "RT-new")
        assert loaded.token_version == 1 and loaded.next_refresh_at == nxt
        assert loaded.tokens.expires_at == NOW + timedelta(hours=5)


def _refresh_write(engine: Engine, ring: KeyRing, seen: AccountSnapshot, access: str) -> bool:
    """One refresh outcome (status active, one ``refreshed`` event) fenced on ``seen``."""
    return save_refresh_if_unchanged(
        engine,
        ring,
        seen,
        tokens=TokenSet(access_token=access, refresh_token=f"RT-{access}", expires_at=NOW + timedelta(hours=3)),
        next_refresh_at=NOW + timedelta(hours=2),
        now=NOW,
        also={"status": "active", "health_score": 97},
        events=[event_values(kind="refreshed", account_id=seen.id, site_id=seen.site_id, reason="t", now=NOW)],
    )


def _refreshed_events(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM social_account_events WHERE account_id = :a AND kind = 'refreshed'"
        return int(conn.execute(sa.text(query), {"a": account_id}).scalar_one())


def _check_refresh_fence(engine: Engine, ring: KeyRing) -> None:
    acc, _ = upsert(engine, ring, profile())
    seen = fetch_account(engine, ring, acc)
    assert seen is not None and seen.token_version == 0 and seen.last_synced_at is None
    # a sync landed after the read: the outcome computed from the read is no longer exact
    with engine.begin() as conn:
        conn.execute(sa.update(SocialAccount).where(SocialAccount.id == acc).values(last_synced_at=NOW))
    assert not _refresh_write(engine, ring, seen, "AT-stale")
    assert _refreshed_events(engine, acc) == 0  # nothing written, not even the event
    current = fetch_account(engine, ring, acc)
    assert current is not None and current.token_version == 0 and current.tokens.access_token == "AT-1"
    # read again: the write lands, tokens, outcome and event together
    assert _refresh_write(engine, ring, current, "AT-2")
    after = fetch_account(engine, ring, acc)
    assert after is not None and after.token_version == 1
    assert (after.tokens.access_token, after.tokens.refresh_token) == ("AT-2", "RT-AT-2")
    assert after.last_synced_at == NOW and _refreshed_events(engine, acc) == 1
    # the version fence still holds: a writer that read version 0 loses
    assert not _refresh_write(engine, ring, current, "AT-late")
    assert _refreshed_events(engine, acc) == 1


def test_refresh_write_is_fenced_on_what_the_outcome_was_computed_from(engine: Engine, ring: KeyRing) -> None:
    """PostgreSQL: one ``UPDATE … RETURNING`` feeding the events' ``INSERT``."""
    _check_refresh_fence(engine, ring)


def test_refresh_write_fence_on_sqlite(sqlite_engine: Engine, ring: KeyRing) -> None:
    _check_refresh_fence(sqlite_engine, ring)


def test_refresh_without_refresh_token_keeps_it(engine: Engine, ring: KeyRing) -> None:
    acc, _ = upsert(engine, ring, profile())
    with Session(engine) as s, s.begin():
        ok = save_refreshed_tokens(
            s, ring, acc, expected_version=0, tokens=TokenSet(access_token="AT-2"), next_refresh_at=None, now=NOW
        )
        assert ok
        loaded = load_account(s, ring, acc)  # same session: no stale cached copy
        assert loaded is not None
        assert (loaded.tokens.access_token, loaded.tokens.refresh_token) == ("AT-2", "RT-1")


def test_save_refreshed_tokens_unknown_account_is_false(engine: Engine, ring: KeyRing) -> None:
    with Session(engine) as s, s.begin():
        assert not save_refreshed_tokens(
            s, ring, "missing", expected_version=0, tokens=TokenSet(access_token="x"), next_refresh_at=None, now=NOW
        )
        assert load_account(s, ring, "missing") is None


# ---- events ----------------------------------------------------------------------------------


def test_events_are_recorded(engine: Engine, ring: KeyRing) -> None:
    acc, _ = upsert(engine, ring, profile())
    with Session(engine) as s, s.begin():
        record_event(s, kind="connected", account_id=acc, site_id="site-1", platform="twitter", now=NOW)
        record_event(s, kind="refresh_failed", account_id=acc, reason="HTTP 503", data={"attempt": 2})
    with Session(engine) as s:
        events = s.execute(sa.select(SocialAccountEvent).order_by(SocialAccountEvent.created_at)).scalars().all()  # type: ignore[arg-type]
        assert [(e.kind, e.reason, e.data) for e in events] == [
            ("connected", "", {}),
            ("refresh_failed", "HTTP 503", {"attempt": 2}),
        ]
        assert events[0].created_at == NOW and events[1].created_at.tzinfo is not None
        assert all(e.account_id == acc for e in events)


# ---- attempts --------------------------------------------------------------------------------


def test_attempt_round_trip(engine: Engine, ring: KeyRing) -> None:
    with Session(engine) as s, s.begin():
        attempt_id = create_attempt(
            s,
            ring,
            platform="bluesky",
            site_id="site-1",
            user_id="u1",
            expires_at=NOW + timedelta(minutes=10),
            now=NOW,
            instance="alice.example",
            code_verifier="verifier-1",
            app_password="pw-1",
        )
    with Session(engine) as s, s.begin():
        row = load_attempt(s, attempt_id, for_update=True)
        assert row is not None and row.status == "pending" and row.stage == "created"
        assert row.code_verifier != "verifier-1" and row.code_verifier is not None
        assert attempt_secret(ring, row, "code_verifier") == "verifier-1"
        assert attempt_secret(ring, row, "app_password") == "pw-1"
        assert read_token_bundle(ring, row) is None
        store_token_bundle(
            ring, row, TokenSet(access_token="AT-b", refresh_token="RT-b", expires_at=NOW, scopes=("a",))
        )
        append_history(row, "exchanged", "1 account", now=NOW)
    with Session(engine) as s:
        row = load_attempt(s, attempt_id)
        assert row is not None
        bundle = read_token_bundle(ring, row)
        assert bundle is not None
        assert (bundle.access_token, bundle.refresh_token, bundle.expires_at, bundle.scopes) == (
            "AT-b",
            "RT-b",
            NOW,
            ("a",),
        )
        assert [h["event"] for h in row.history] == ["created", "exchanged"]
        assert load_attempt(s, "nope") is None
    with pytest.raises(ValueError):
        attempt_secret(ring, row, "token_bundle")


# ---- Mastodon apps ---------------------------------------------------------------------------


def test_mastodon_app_saved_once_first_writer_wins(engine: Engine, ring: KeyRing) -> None:
    with Session(engine) as s, s.begin():
        assert find_mastodon_app(s, ring, "mastodon.example") is None
        first = save_mastodon_app(
            s, ring, instance="Mastodon.Example", client_id="c1", client_secret="sec-1", scopes="read", redirect_uri="r"
        )
    with Session(engine) as s, s.begin():
        second = save_mastodon_app(
            s, ring, instance="mastodon.example", client_id="c2", client_secret="sec-2", scopes="read", redirect_uri="r"
        )
        found = find_mastodon_app(s, ring, "MASTODON.example ")
    assert first == second == found == ("c1", "sec-1", "read", "r")
    assert "sec-1" not in repr(found)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM social_mastodon_apps")).scalar_one() == 1


# ---- public view -----------------------------------------------------------------------------


def test_public_dict_never_carries_tokens(engine: Engine, ring: KeyRing) -> None:
    acc, _ = upsert(engine, ring, profile("AT-secret-xyz", "RT-secret-xyz", stats=Stats(followers=5)))
    with Session(engine) as s:
        (row,) = list_accounts(s, site_id="site-1")
        assert list_accounts(s, site_id="other") == []
        data = account_public_dict(row)
    assert set(data) == {*PUBLIC_COLUMNS, "health_reason"}
    assert data["id"] == acc and data["followers_count"] == 5 and data["following_count"] is None
    assert data["created_at"] == NOW.isoformat() and data["health_reason"] == "Connected and working."
    text = json.dumps(data)
    assert "secret-xyz" not in text and "v1:k1:" not in text and "meta-1" not in text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "expired", "last_error": "invalid_grant"}, "must reconnect"),
        (
            {"status": "error", "consecutive_failures": 2, "last_error": "HTTP 503"},
            "2 failed attempts in a row: HTTP 503",
        ),
        ({"status": "rate_limited", "rate_limited_until": NOW}, NOW.isoformat()),
        ({"status": "disconnected"}, "Disconnected"),
        ({"status": "active", "last_error": "timeout"}, "last problem was: timeout"),
    ],
)
def test_health_reason_in_words(fields: dict[str, object], expected: str) -> None:
    row = SocialAccount(id="a", site_id="s", platform="x", platform_account_id="p", **fields)  # type: ignore[arg-type]
    assert expected in health_reason(row)


# ---- a connect's save: accounts, events and the attempt in one transaction ---------------------


def _new_attempt(engine: Engine, ring: KeyRing) -> str:
    with Session(engine) as s, s.begin():
        return create_attempt(
            s,
            ring,
            platform="facebook",
            site_id="site-1",
            user_id="u1",
            expires_at=NOW + timedelta(minutes=10),
            now=NOW,
        )


def _check_connect_save(engine: Engine, ring: KeyRing) -> None:
    pages = [
        ConnectedAccount(profile(f"AT-{n}", f"RT-{n}", pid=f"page-{n}"), NOW + timedelta(hours=1), NOW)
        for n in range(3)
    ]
    first = _new_attempt(engine, ring)
    saved, finished = save_connected_accounts(
        engine, ring, attempt_id=first, site_id="site-1", platform="facebook", user_id="u1", accounts=pages, now=NOW
    )
    assert finished and [inserted for _, inserted in saved] == [True, True, True]
    ids = [account_id for account_id, _ in saved]
    with Session(engine) as s:
        attempt = load_attempt(s, first)
        assert attempt is not None and attempt.status == "connected" and list(attempt.account_ids) == ids
        assert attempt.history[-1]["event"] == "connected"
        reasons = (
            s.execute(
                sa.select(SocialAccountEvent.reason)
                .where(SocialAccountEvent.kind == "connected")
                .order_by(SocialAccountEvent.account_id)
            )
            .scalars()
            .all()
        )
        assert sorted(reasons) == ["connected"] * 3
        loaded = load_account(s, ring, ids[1])
        assert loaded is not None and loaded.tokens.access_token == "AT-1" and loaded.token_version == 0

    # the same pages again, on an attempt that already ended: updated in place, reason
    # "reconnected", and the attempt is left as it is
    again, finished_again = save_connected_accounts(
        engine, ring, attempt_id=first, site_id="site-1", platform="facebook", user_id="u1", accounts=pages, now=NOW
    )
    assert not finished_again and again == [(account_id, False) for account_id in ids]
    with Session(engine) as s:
        assert count_accounts(engine) == 3
        reasons = (
            s.execute(sa.select(SocialAccountEvent.reason).where(SocialAccountEvent.kind == "connected"))
            .scalars()
            .all()
        )
        assert sorted(reasons) == ["connected"] * 3 + ["reconnected"] * 3
        loaded = load_account(s, ring, ids[1])
        assert loaded is not None and loaded.token_version == 1


def test_connect_save_is_one_statement_on_postgres(engine: Engine, ring: KeyRing) -> None:
    _check_connect_save(engine, ring)


def test_connect_save_on_sqlite(sqlite_engine: Engine, ring: KeyRing) -> None:
    _check_connect_save(sqlite_engine, ring)
