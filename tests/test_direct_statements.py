"""``models.direct``: the refresh path's statements straight on psycopg, on real PostgreSQL.

What must hold for it to stand in for SQLAlchemy: its autocommit connections never reach the
engine's pool (so ORM transactions still roll back), a connection the server dropped is replaced
and reported the way callers already handle (``OperationalError`` with ``connection_invalidated``)
or, when it died while idle, replaced before use; idle connections are bounded and closed with
the engine; and SQLite never takes this path.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models import migrate
from models.crypto import KeyRing
from models.direct import MAX_IDLE, DirectSession, for_engine
from models.engine import make_engine
from models.repository import fetch_account, upsert_account
from models.tables import SocialAccount
from social_accounts.values import AccountProfile, TokenSet
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


def test_direct_connections_never_reach_the_engines_pool(engine: Engine, ring: KeyRing) -> None:
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


def _terminate(pg_url: str, pid: int) -> None:
    killer = make_engine(pg_url)
    with killer.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})  # as a restart would
    killer.dispose()


def test_one_connection_serves_statement_after_statement(engine: Engine) -> None:
    direct = for_engine(engine)
    assert direct is not None
    with direct.connection() as conn:
        first = conn.info.backend_pid
        assert conn.autocommit
    with direct.connection() as conn:
        assert conn.info.backend_pid == first
    # a statement error leaves it usable and idle (autocommit: no transaction to abort)
    with pytest.raises(sa.exc.IntegrityError), direct.connection() as conn:
        conn.execute("CREATE TEMP TABLE t (k int primary key)")
        conn.execute("INSERT INTO t VALUES (1), (1)")
    with direct.connection() as conn:
        assert conn.info.backend_pid == first and conn.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_that_died_while_idle_is_replaced_before_use(engine: Engine, pg_url: str) -> None:
    direct = DirectSession(engine, ping_after_idle=0.0)  # ping every time it was idle at all
    with direct.connection() as conn:
        pid = conn.info.backend_pid
    _terminate(pg_url, pid)
    with direct.connection() as conn:  # the ping found it dead: a new one, and no error
        assert conn.info.backend_pid != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_idle_connections_are_bounded_and_closed_with_the_engine(engine: Engine, pg_url: str) -> None:
    mine = make_engine(pg_url, ping_after_idle=60)
    direct = for_engine(mine)
    assert direct is not None
    with ExitStack() as stack:
        opened = [stack.enter_context(direct.connection()) for _ in range(MAX_IDLE + 4)]
    assert sum(not c.closed for c in opened) == MAX_IDLE  # the ones past the bound were closed
    mine.dispose()
    assert all(c.closed for c in opened)


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
