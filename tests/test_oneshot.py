"""``models.oneshot`` and the statements the hot paths run through it, through the engine.

What must hold now that every statement goes through SQLAlchemy: an autocommit checkout goes
back to the pool with its isolation level reset (so ORM transactions still roll back), a
connection the server dropped is reported the way ``models.patience`` retries it
(``OperationalError`` with ``connection_invalidated``) or, when it died while idle, replaced
before use, a database that cannot be reached counts as lost too, and the same statements give
the same outcome on PostgreSQL and on SQLite (the embedded default).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models import attempts, oneshot
from models.crypto import KeyRing
from models.engine import make_engine
from models.repository import (
    ConnectedAccount,
    event_values,
    fetch_account,
    save_connected_accounts,
    save_refresh_if_unchanged,
    upsert_account,
)
from models.tables import SocialAccount, SocialOAuthState
from social_accounts.values import AccountProfile, TokenSet

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
def any_engine(request: pytest.FixtureRequest) -> Engine:
    """Each test that takes it runs on real PostgreSQL and on the embedded SQLite file."""
    name = "engine" if request.param == "postgresql" else "sqlite_engine"
    engine: Engine = request.getfixturevalue(name)
    return engine


def _profile(pid: str = "p-1", access: str = "AT", refresh: str | None = "RT") -> AccountProfile:
    return AccountProfile(
        platform_account_id=pid,
        name="A",
        handle="a",
        avatar_url=None,
        tokens=TokenSet(access_token=access, refresh_token=refresh),
    )


def _account(engine: Engine, ring: KeyRing) -> str:
    with Session(engine) as s, s.begin():
        account_id, _ = upsert_account(
            s, ring, site_id="s", platform="twitter", user_id="u", profile=_profile(), next_refresh_at=None, now=NOW
        )
    return account_id


def _one_connection(migrated: Engine, *, ping_after_idle: float = 60) -> Engine:
    """An engine on the migrated test database whose pool holds one connection, the same one every
    time, configured as workers are (no ping before a connection used moments ago)."""
    url = migrated.url.render_as_string(hide_password=False)
    return make_engine(url, pool_size=1, max_overflow=0, ping_after_idle=ping_after_idle)


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pg_url: str, pid: int) -> None:
    killer = make_engine(pg_url)
    with killer.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})  # as a restart would
    killer.dispose()


class Statements:
    """Counts the statements an engine sends (``before_cursor_execute``)."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.sent.append(statement)


# ---- the autocommit checkout ---------------------------------------------------------------------


def test_an_autocommit_read_leaves_the_pooled_connection_transactional(any_engine: Engine, ring: KeyRing) -> None:
    account_id = _account(any_engine, ring)
    snapshot = fetch_account(any_engine, ring, account_id)
    assert snapshot is not None and snapshot.tokens.refresh_token == "RT"
    with Session(any_engine) as s:
        row = s.get(SocialAccount, account_id)
        assert row is not None
        row.account_name = "changed"
        s.flush()
        s.rollback()  # would be a no-op on a connection left in autocommit
    with any_engine.connect() as conn:
        name = conn.execute(sa.text("SELECT account_name FROM social_accounts WHERE id = :a"), {"a": account_id})
        assert name.scalar_one() == "A"


def test_one_pooled_connection_serves_autocommit_and_transactions_in_turn(engine: Engine, ring: KeyRing) -> None:
    engine = _one_connection(engine)
    try:
        account_id = _account(engine, ring)
        first = _backend_pid(engine)
        assert fetch_account(engine, ring, account_id) is not None
        with Session(engine) as s, s.begin():  # the same connection, back in a transaction
            s.execute(sa.update(SocialAccount).where(SocialAccount.id == account_id).values(account_name="B"))
            s.rollback()
        assert _backend_pid(engine) == first
        with engine.connect() as conn:
            name = conn.execute(sa.text("SELECT account_name FROM social_accounts WHERE id = :a"), {"a": account_id})
            assert name.scalar_one() == "A"
    finally:
        engine.dispose()


def test_a_statement_error_in_autocommit_leaves_the_connection_usable(engine: Engine) -> None:
    engine = _one_connection(engine)
    try:
        first = _backend_pid(engine)
        oneshot.execute(engine, sa.text("CREATE TABLE t (k int primary key)"), {})
        with pytest.raises(sa.exc.IntegrityError):
            oneshot.execute(engine, sa.text("INSERT INTO t VALUES (1), (1)"), {})
        assert oneshot.execute(engine, sa.text("INSERT INTO t VALUES (2)"), {}) == 1  # no aborted transaction
        assert _backend_pid(engine) == first
    finally:
        engine.dispose()


def test_a_dropped_connection_is_reported_as_lost_and_replaced(engine: Engine, pg_url: str, ring: KeyRing) -> None:
    engine = _one_connection(engine)
    try:
        account_id = _account(engine, ring)
        pid = _backend_pid(engine)
        _terminate(pg_url, pid)
        with pytest.raises(sa.exc.OperationalError) as lost:
            fetch_account(engine, ring, account_id)
        assert lost.value.connection_invalidated  # what models.patience retries
        again = fetch_account(engine, ring, account_id)  # a fresh connection from the pool
        assert again is not None and again.id == account_id
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()


def test_a_connection_that_died_while_idle_is_replaced_before_use(engine: Engine, pg_url: str, ring: KeyRing) -> None:
    engine = _one_connection(engine, ping_after_idle=0.0)  # ping every time it was idle at all
    try:
        account_id = _account(engine, ring)
        pid = _backend_pid(engine)
        _terminate(pg_url, pid)
        snapshot = fetch_account(engine, ring, account_id)  # the ping found it dead: no error
        assert snapshot is not None and snapshot.id == account_id
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()


def test_a_database_that_cannot_be_reached_counts_as_lost() -> None:
    unreachable = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    try:
        with pytest.raises(sa.exc.OperationalError) as refused:
            oneshot.execute(unreachable, sa.text("SELECT 1"), {})
        assert refused.value.connection_invalidated
    finally:
        unreachable.dispose()


def test_a_forked_worker_builds_its_own_pool_and_leaves_the_parents_alone(
    engine: Engine, pg_url: str, ring: KeyRing
) -> None:
    """Dramatiq forks worker processes: the child must never use or close the parent's sockets
    (``Runtime.forget_inherited``: ``engine.dispose(close=False)``, as
    https://docs.sqlalchemy.org/en/20/core/pooling.html#using-connection-pools-with-multiprocessing-or-os-fork
    shows)."""
    from social_accounts.settings import Settings
    from workers import runtime

    account_id = _account(engine, ring)
    parent_pid = _backend_pid(engine)  # pooled, idle: what the child inherits
    settings = Settings(_env_file=None, database_url=pg_url)  # type: ignore[call-arg]
    runtime.configure(settings, engine=engine, ring=ring)
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's outcome is its exit status)
            code = 1
            try:
                rt = runtime.current()
                ok = rt.engine is not engine and _backend_pid(rt.engine) != parent_pid
                ok = ok and fetch_account(rt.engine, rt.ring, account_id) is not None
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _backend_pid(engine) == parent_pid  # the parent's connection is still open and its own
    finally:
        runtime.configure(settings)  # the injected engine belongs to the fixture, which disposes it
        runtime.reset()


# ---- the statements, on both backends -----------------------------------------------------------


def _refresh(engine: Engine, ring: KeyRing, account_id: str, access: str) -> bool:
    seen = fetch_account(engine, ring, account_id)
    assert seen is not None
    return save_refresh_if_unchanged(
        engine,
        ring,
        seen,
        tokens=TokenSet(access_token=access, refresh_token=f"RT-{access}"),
        next_refresh_at=NOW + timedelta(hours=1),
        now=NOW,
        also={"status": "active"},
        events=[event_values(kind="refreshed", account_id=seen.id, reason="t", now=NOW)],
    )


def test_a_refresh_write_is_one_statement_on_postgresql(engine: Engine, ring: KeyRing) -> None:
    account_id = _account(engine, ring)
    sent = Statements(engine)
    assert _refresh(engine, ring, account_id, "AT-2")
    assert len(sent.sent) == 2  # the read, then the fenced UPDATE with its event INSERT
    assert sent.sent[1].lstrip().startswith("WITH")
    stored = fetch_account(engine, ring, account_id)
    assert stored is not None and stored.token_version == 1 and stored.tokens.access_token == "AT-2"


def test_tokens_are_stored_encrypted_on_either_backend(any_engine: Engine, ring: KeyRing) -> None:
    account_id = _account(any_engine, ring)
    assert _refresh(any_engine, ring, account_id, "AT-secret")
    with any_engine.connect() as conn:
        access, refresh = conn.execute(
            sa.text("SELECT access_token, refresh_token FROM social_accounts WHERE id = :a"), {"a": account_id}
        ).one()
    assert "AT-secret" not in access and "RT-AT-secret" not in refresh
    stored = fetch_account(any_engine, ring, account_id)
    assert stored is not None and (stored.tokens.access_token, stored.tokens.refresh_token) == (
        "AT-secret",
        "RT-AT-secret",
    )


def test_a_connect_save_is_one_statement_on_postgresql(engine: Engine, ring: KeyRing) -> None:
    attempt_id = _attempt(engine, ring)
    sent = Statements(engine)
    pages = [ConnectedAccount(_profile(f"page-{n}"), None, None) for n in range(2)]
    saved, finished = save_connected_accounts(
        engine, ring, attempt_id=attempt_id, site_id="s", platform="facebook", user_id="u", accounts=pages, now=NOW
    )
    assert finished and [inserted for _, inserted in saved] == [True, True]
    assert len(sent.sent) == 1


def _attempt(engine: Engine, ring: KeyRing) -> str:
    with Session(engine) as s, s.begin():
        return attempts.create_attempt(
            s,
            ring,
            platform="bluesky",
            site_id="s",
            user_id="u",
            expires_at=NOW + timedelta(minutes=10),
            now=NOW,
            code_verifier="verifier",
            app_password="app-pw",
        )


def _secrets(engine: Engine, attempt_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(*(SocialOAuthState.__table__.c[c] for c in attempts.SECRET_COLUMNS)).where(  # type: ignore[attr-defined]
                SocialOAuthState.__table__.c.id == attempt_id  # type: ignore[attr-defined]
            )
        ).one()
    return dict(row._mapping)


def _history(engine: Engine, attempt_id: str) -> list[str]:
    with engine.connect() as conn:
        raw = conn.execute(
            sa.text("SELECT history FROM social_oauth_states WHERE id = :a"), {"a": attempt_id}
        ).scalar_one()
    entries = json.loads(raw) if isinstance(raw, str) else raw
    return [entry["event"] for entry in entries]


def test_attempt_statements_claim_once_store_tokens_and_clear_every_secret(any_engine: Engine, ring: KeyRing) -> None:
    attempt_id = _attempt(any_engine, ring)
    assert attempts.claim_state(any_engine, attempt_id, "m-1", stage="exchanging", now=NOW)
    assert not attempts.claim_state(any_engine, attempt_id, "m-2", stage="exchanging", now=NOW)  # taken
    attempts.store_tokens(any_engine, ring, attempt_id, TokenSet(access_token="AT-x"), "exchanged", NOW)
    stored = _secrets(any_engine, attempt_id)
    assert stored["app_password"] is None  # spent once the tokens are in
    assert stored["token_bundle"] is not None and "AT-x" not in stored["token_bundle"]
    snapshot = attempts.read_attempt(any_engine, attempt_id)
    assert snapshot is not None and snapshot.stage == "exchanged" and snapshot.consumed_by == "m-1"
    bundle = attempts.read_token_bundle(ring, snapshot)
    assert bundle is not None and bundle.access_token == "AT-x"

    assert attempts.finish_connected(any_engine, attempt_id, ["acc-1"], NOW)
    assert not attempts.fail_pending(any_engine, attempt_id, "timeout", "late", NOW)  # ended already
    assert _secrets(any_engine, attempt_id) == dict.fromkeys(attempts.SECRET_COLUMNS)
    assert _history(any_engine, attempt_id) == ["created", "consumed", "exchanged", "connected"]


def test_a_failed_attempt_keeps_no_secret_either(any_engine: Engine, ring: KeyRing) -> None:
    attempt_id = _attempt(any_engine, ring)
    assert attempts.fail_pending(any_engine, attempt_id, "login_failed", "bad password", NOW)
    assert _secrets(any_engine, attempt_id) == dict.fromkeys(attempts.SECRET_COLUMNS)
    snapshot = attempts.read_attempt(any_engine, attempt_id)
    assert snapshot is not None and snapshot.status == "failed"


# ---- DATABASE_PREPARE_THRESHOLD (PgBouncer in transaction mode) -------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("raw", "expected"), [("off", None), ("None", None), ("", None), ("0", 0), ("12", 12)])
def test_the_prepare_threshold_setting_reads_off_and_numbers(raw: str, expected: int | None) -> None:
    from social_accounts.settings import Settings

    settings = Settings(_env_file=None, database_prepare_threshold=raw)  # type: ignore[call-arg]
    assert settings.database_prepare_threshold == expected


@pytest.mark.unit
def test_a_negative_prepare_threshold_is_refused() -> None:
    from pydantic import ValidationError

    from social_accounts.settings import Settings

    with pytest.raises(ValidationError, match="database_prepare_threshold"):
        Settings(_env_file=None, database_prepare_threshold="-1")  # type: ignore[call-arg]


@pytest.mark.parametrize(("threshold", "prepared"), [(None, 0), (2, 1)])
def test_the_prepare_threshold_reaches_psycopg(pg_url: str, threshold: int | None, prepared: int) -> None:
    """With ``off`` the server never holds a prepared statement (what PgBouncer < 1.21 needs in
    transaction mode), however often a statement runs; with a threshold it does once passed."""
    engine = make_engine(pg_url, prepare_threshold=threshold)
    probe = sa.text("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")
    statement = sa.text("SELECT :x + 1")
    try:
        with engine.connect() as conn:
            assert conn.connection.driver_connection.prepare_threshold == threshold  # type: ignore[union-attr]
            for i in range(6):
                assert conn.execute(statement, {"x": i}).scalar_one() == i + 1
            assert conn.execute(probe).scalar_one() == prepared
    finally:
        engine.dispose()
