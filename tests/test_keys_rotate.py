"""Key rotation (models/keys.py) on real PostgreSQL.

Secrets stored under k1 are rotated with the ring [k2, k1]; afterwards a ring holding ONLY k2
must read every one of them, a second run rotates nothing, and a run interrupted part-way is
finished by the next one.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.crypto import KeyRing
from models.keys import rotate_keys
from models.repository import (
    attempt_secret,
    create_attempt,
    find_mastodon_app,
    load_account,
    load_attempt,
    read_token_bundle,
    save_mastodon_app,
    store_token_bundle,
    upsert_account,
)
from models.tables import SocialAccountEvent
from social_accounts.errors import UnknownKeyError
from social_accounts.values import AccountProfile, TokenSet

NOW = datetime(2026, 4, 1, tzinfo=UTC)
N_ACCOUNTS = 7


@pytest.fixture
def keys() -> dict[str, bytes]:
    return {"k1": os.urandom(32), "k2": os.urandom(32)}


def seed(engine: Engine, ring: KeyRing) -> tuple[list[str], str]:
    """N accounts (one without a refresh token), one attempt with every secret, one Mastodon app."""
    account_ids = []
    with Session(engine) as s, s.begin():
        for n in range(N_ACCOUNTS):
            tokens = TokenSet(
                access_token=f"AT-{n}", refresh_token=f"RT-{n}" if n else None, dpop_key=f"JWK-{n}" if n else None
            )
            prof = AccountProfile(platform_account_id=f"p{n}", name=None, handle=None, avatar_url=None, tokens=tokens)
            acc, _ = upsert_account(
                s, ring, site_id="s", platform="x", user_id=None, profile=prof, next_refresh_at=None, now=NOW
            )
            account_ids.append(acc)
        attempt_id = create_attempt(
            s,
            ring,
            platform="bluesky",
            site_id="s",
            user_id="u",
            expires_at=NOW + timedelta(minutes=10),
            now=NOW,
            code_verifier="verifier",
            app_password="app-pw",
            dpop_key="dpop-session",
        )
        row = load_attempt(s, attempt_id)
        assert row is not None
        store_token_bundle(ring, row, TokenSet(access_token="bundle-AT"))
        save_mastodon_app(
            s, ring, instance="m.example", client_id="cid", client_secret="csecret", scopes="read", redirect_uri="r"
        )
    return account_ids, attempt_id


def assert_readable(engine: Engine, ring: KeyRing, account_ids: list[str], attempt_id: str) -> None:
    with Session(engine) as s:
        for n, acc in enumerate(account_ids):
            loaded = load_account(s, ring, acc)
            assert loaded is not None
            assert loaded.tokens.access_token == f"AT-{n}"
            assert loaded.tokens.refresh_token == (f"RT-{n}" if n else None)
            assert loaded.tokens.dpop_key == (f"JWK-{n}" if n else None)
            assert loaded.token_version == 0  # rotation never changes the plaintext's version
        row = load_attempt(s, attempt_id)
        assert row is not None
        assert attempt_secret(ring, row, "code_verifier") == "verifier"
        assert attempt_secret(ring, row, "app_password") == "app-pw"
        assert attempt_secret(ring, row, "dpop_key") == "dpop-session"
        bundle = read_token_bundle(ring, row)
        assert bundle is not None and bundle.access_token == "bundle-AT"
        app = find_mastodon_app(s, ring, "m.example")
        assert app is not None and app.client_secret == "csecret"


EXPECTED = {
    "social_accounts.access_token": N_ACCOUNTS,
    "social_accounts.refresh_token": N_ACCOUNTS - 1,
    "social_accounts.dpop_key": N_ACCOUNTS - 1,
    "social_oauth_states.code_verifier": 1,
    "social_oauth_states.app_password": 1,
    "social_oauth_states.token_bundle": 1,
    "social_oauth_states.dpop_key": 1,
    "social_mastodon_apps.client_secret": 1,
}


def test_rotate_then_only_the_new_key_reads_everything(engine: Engine, keys: dict[str, bytes]) -> None:
    old = KeyRing([("k1", keys["k1"])])
    account_ids, attempt_id = seed(engine, old)
    calls: list[tuple[str, int, int]] = []

    counts = rotate_keys(
        engine, KeyRing([("k2", keys["k2"]), ("k1", keys["k1"])]), batch_size=3, progress=lambda *a: calls.append(a)
    )

    assert counts == EXPECTED
    only_new = KeyRing([("k2", keys["k2"])])
    assert_readable(engine, only_new, account_ids, attempt_id)
    with pytest.raises(UnknownKeyError):  # the old key alone no longer reads anything
        assert_readable(engine, old, account_ids, attempt_id)
    # progress: starts at 0 and ends at the total, per table, in batches of at most 3 rows
    accounts = [c for c in calls if c[0] == "social_accounts"]
    assert accounts[0] == ("social_accounts", 0, N_ACCOUNTS) and accounts[-1] == ("social_accounts", 7, 7)
    assert [c[1] for c in accounts] == [0, 3, 6, 7]

    again = rotate_keys(engine, KeyRing([("k2", keys["k2"]), ("k1", keys["k1"])]))
    assert again == dict.fromkeys(EXPECTED, 0)

    with Session(engine) as s:
        events = (
            s.execute(sa.select(SocialAccountEvent).where(SocialAccountEvent.kind == "keys_rotated")).scalars().all()
        )  # type: ignore[arg-type]
    totals = sorted(e.data["total"] for e in events)
    assert totals == [0, sum(EXPECTED.values())]
    assert all(e.account_id is None and e.data["kid"] == "k2" for e in events)
    for e in events:  # counts only: no secret and no key in the audit trail
        text = repr(e.data) + e.reason
        assert "AT-1" not in text and "csecret" not in text and "v1:" not in text


def test_interrupted_rotation_is_resumed(engine: Engine, keys: dict[str, bytes]) -> None:
    account_ids, attempt_id = seed(engine, KeyRing([("k1", keys["k1"])]))
    both = KeyRing([("k2", keys["k2"]), ("k1", keys["k1"])])

    class Crash(Exception):
        pass

    def crash_after_first_batch(table: str, done: int, total: int) -> None:
        if done > 0:
            raise Crash

    with pytest.raises(Crash):
        rotate_keys(engine, both, batch_size=2, progress=crash_after_first_batch)
    with engine.connect() as conn:
        under_k2 = conn.execute(
            sa.text("SELECT count(*) FROM social_accounts WHERE access_token LIKE 'v1:k2:%'")
        ).scalar_one()
    assert under_k2 == 2  # the first batch was committed, the rest not touched

    resumed = rotate_keys(engine, both, batch_size=2)
    assert resumed["social_accounts.access_token"] == N_ACCOUNTS - 2
    assert resumed["social_mastodon_apps.client_secret"] == 1
    assert_readable(engine, KeyRing([("k2", keys["k2"])]), account_ids, attempt_id)


def test_unknown_key_stops_rotation_clearly(engine: Engine, keys: dict[str, bytes]) -> None:
    seed(engine, KeyRing([("k1", keys["k1"])]))
    with pytest.raises(UnknownKeyError, match="'k1'"):
        rotate_keys(engine, KeyRing([("k2", keys["k2"])]))  # k1 was dropped too early


def test_batch_size_must_be_positive(engine: Engine, keys: dict[str, bytes]) -> None:
    with pytest.raises(ValueError):
        rotate_keys(engine, KeyRing([("k2", keys["k2"])]), batch_size=0)
