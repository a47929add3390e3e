"""``models.direct``: the refresh path's statements straight on psycopg, on real PostgreSQL.

What must hold for it to stand in for SQLAlchemy: connections go back to the pool as they came
(not in autocommit, so ORM transactions after them still roll back), a connection the server
dropped is replaced and reported the way callers already handle (``OperationalError`` with
``connection_invalidated``), and SQLite never takes this path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models import migrate
from models.crypto import KeyRing
from models.direct import for_engine
from models.engine import make_engine
from models.repository import fetch_account, upsert_account
from models.tables import SocialAccount
from platforms.base import AccountProfile, TokenSet
from tests.test_repository import NOW


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([("k1", os.urandom(32))])


def _account(engine: Engine, ring: KeyRing) -> str:
    prof = AccountProfile(
        platform_account_id="p-1",
        name="A",
        handle="a",
        avatar_url=None,
        tokens=TokenSet(access_token="AT", refresh_token="RT"),
    )
    with Session(engine) as s, s.begin():
        account_id, _ = upsert_account(
            s, ring, site_id="s", platform="twitter", user_id="u", profile=prof, next_refresh_at=None, now=NOW
        )
    return account_id


def _one_connection(migrated: Engine) -> Engine:
    """An engine on the migrated test database whose pool holds one connection, the same one every
    time, configured as workers are (no ping before a connection used moments ago)."""
    url = migrated.url.render_as_string(hide_password=False)
    return make_engine(url, pool_size=1, max_overflow=0, ping_after_idle=60)


def test_pooled_connections_come_back_out_of_autocommit(engine: Engine, ring: KeyRing) -> None:
    engine = _one_connection(engine)  # one connection: the same one every time
    try:
        account_id = _account(engine, ring)
        snapshot = fetch_account(engine, ring, account_id)
        assert snapshot is not None and snapshot.tokens.refresh_token == "RT"
        with Session(engine) as s:
            row = s.get(SocialAccount, account_id)
            assert row is not None
            row.account_name = "changed"
            s.flush()
            s.rollback()  # would be a no-op on a connection left in autocommit
        with engine.connect() as conn:
            name = conn.execute(sa.text("SELECT account_name FROM social_accounts WHERE id = :a"), {"a": account_id})
            assert name.scalar_one() == "A"
    finally:
        engine.dispose()


def test_a_dropped_connection_is_reported_and_replaced(engine: Engine, pg_url: str, ring: KeyRing) -> None:
    engine = _one_connection(engine)
    try:
        account_id = _account(engine, ring)
        direct = for_engine(engine)
        assert direct is not None
        with direct.connection() as conn:
            pid = conn.info.backend_pid
        killer = make_engine(pg_url)
        with killer.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})  # as a restart would
        killer.dispose()
        with pytest.raises(sa.exc.OperationalError) as lost:
            fetch_account(engine, ring, account_id)
        assert lost.value.connection_invalidated
        again = fetch_account(engine, ring, account_id)  # a fresh connection from the pool
        assert again is not None and again.id == account_id
    finally:
        engine.dispose()


def test_sqlite_never_takes_the_direct_path(tmp_path: Path, ring: KeyRing) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        assert for_engine(engine) is None
        account_id = _account(engine, ring)
        snapshot = fetch_account(engine, ring, account_id)
        assert snapshot is not None and snapshot.tokens.access_token == "AT"
    finally:
        engine.dispose()
