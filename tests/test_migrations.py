"""Schema, migrations and engine: what a fresh database looks like on PostgreSQL and SQLite.

The migration is hand-written; these tests hold it to models/tables.py (no autogenerate diff),
check the pieces autogenerate would miss (partial index, named unique constraint), and run
upgrade → downgrade → upgrade the way an operator would, from any working directory.
"""

from __future__ import annotations

import fnmatch
import threading
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from models import migrate
from models.engine import check_database, make_engine, normalize_url
from models.tables import SocialAccountEvent, SocialOAuthState
from social_accounts.errors import ConfigError

TABLES = {
    "social_accounts",
    "social_oauth_states",
    "social_mastodon_apps",
    "social_account_events",
    "social_webhook_endpoints",
    "social_webhook_deliveries",
    "social_webhook_attempts",
}
ROOT = Path(__file__).resolve().parents[1]


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, SQLModel.metadata))


def _assert_schema(engine: Engine) -> None:
    insp = sa.inspect(engine)
    assert set(insp.get_table_names()) >= TABLES
    uniques = {u["name"]: u["column_names"] for u in insp.get_unique_constraints("social_accounts")}
    assert uniques["uq_social_accounts_site_platform_account"] == ["site_id", "platform", "platform_account_id"]
    cols = {c["name"]: c for c in insp.get_columns("social_accounts")}
    assert cols["token_version"]["nullable"] is False and "next_refresh_at" in cols
    assert "access_token" in cols and "token_metadata" in cols
    indexes = {i["name"]: i for i in insp.get_indexes("social_accounts")}
    assert indexes["ix_social_accounts_next_refresh_active"]["column_names"] == ["next_refresh_at"]
    assert indexes["ix_social_accounts_next_sync_active"]["column_names"] == ["next_sync_at"]
    events = {i["name"]: i["column_names"] for i in insp.get_indexes("social_account_events")}
    assert events["ix_social_account_events_account_created"] == ["account_id", "created_at"]
    assert _diff(engine) == []
    assert migrate.current_revision(engine) == migrate.head_revision() == "0004_events"


def test_postgres_upgrade_downgrade_upgrade(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        migrate.upgrade(pg_url)
        _assert_schema(engine)
        for index in sa.inspect(engine).get_indexes("social_accounts"):
            if index["name"].endswith("_active"):
                where = index["dialect_options"]["postgresql_where"]
                assert "status" in where and "'active'" in where
        migrate.downgrade(pg_url, "base")
        assert TABLES.isdisjoint(sa.inspect(engine).get_table_names())
        assert migrate.current_revision(engine) is None
        migrate.upgrade(pg_url)
        _assert_schema(engine)
    finally:
        engine.dispose()


def test_postgres_concurrent_upgrades_do_not_race(pg_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate.upgrade(pg_url)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = make_engine(pg_url)
    try:
        _assert_schema(engine)
    finally:
        engine.dispose()


@pytest.mark.unit
def test_sqlite_upgrade_from_another_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may depend on the working directory
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate.upgrade(url)
    migrate.upgrade(url)  # already at head: a no-op
    engine = make_engine(url)
    try:
        _assert_schema(engine)
        with engine.connect() as conn:
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'ix_social_accounts_next_refresh_active'")
            ).scalar_one()
            assert "WHERE status = 'active'" in sql
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
        migrate.downgrade(url, "base")
        assert TABLES.isdisjoint(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.unit
def test_migrations_are_package_data() -> None:
    """Every file Alembic needs at run time is matched by pyproject's package-data patterns."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["models"]
    models_dir = ROOT / "models"
    needed = [p for p in (models_dir / "migrations").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.name == "0001_initial.py" for p in needed)
    for path in needed:
        rel = path.relative_to(models_dir).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), f"{rel} would be missing from the wheel"


# ---- engine --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_postgresql_url_uses_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    engine = make_engine("postgresql://postgres@127.0.0.1:1/x")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres:hunter2pw@127.0.0.1:1/x",  # a connection refused: the full tier
        pytest.param("sqlite:////nonexistent-dir/sub/db.sqlite", marks=pytest.mark.unit),
    ],
)
def test_database_that_does_not_answer_is_one_clear_line(url: str) -> None:
    engine = make_engine(url)
    with pytest.raises(ConfigError) as info:
        check_database(engine)
    message = str(info.value)
    assert "does not answer" in message and "\n" not in message and "Traceback" not in message
    assert "hunter2pw" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    engine.dispose()


@pytest.mark.unit
@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        make_engine(url)


@pytest.fixture(params=["postgres", pytest.param("sqlite", marks=pytest.mark.unit)])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    request.addfinalizer(engine.dispose)
    return engine


def test_timestamps_come_back_aware_utc(any_engine: Engine) -> None:
    paris = timezone(timedelta(hours=2))
    local = datetime(2026, 5, 1, 14, 0, tzinfo=paris)
    with Session(any_engine) as s, s.begin():
        s.add(SocialAccountEvent(id="e1", kind="synced", created_at=local))
    with Session(any_engine) as s:
        row = s.get(SocialAccountEvent, "e1")
        assert row is not None
        assert row.created_at == local and row.created_at.tzinfo is not None
        assert row.created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(any_engine: Engine) -> None:
    with Session(any_engine) as s, pytest.raises(StatementError, match="naive datetime"):
        s.add(SocialAccountEvent(id="e1", kind="synced", created_at=datetime(2026, 1, 1)))
        s.flush()


def test_json_edits_in_place_persist(any_engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(any_engine) as s, s.begin():
        s.add(SocialAccountEvent(id="e1", kind="synced", data={"a": 1}))
        s.add(SocialOAuthState(id="a1", platform="x", site_id="s", user_id="u", expires_at=now, history=[]))
    with Session(any_engine) as s, s.begin():
        event = s.get(SocialAccountEvent, "e1")
        attempt = s.get(SocialOAuthState, "a1")
        assert event is not None and attempt is not None
        event.data["b"] = 2
        attempt.history.append({"event": "retry"})
        attempt.account_ids.append("acc-1")
    with Session(any_engine) as s:
        event = s.get(SocialAccountEvent, "e1")
        attempt = s.get(SocialOAuthState, "a1")
        assert event is not None and attempt is not None
        assert event.data == {"a": 1, "b": 2}
        assert attempt.history == [{"event": "retry"}] and attempt.account_ids == ["acc-1"]
