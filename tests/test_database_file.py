"""The SQLite file holds names, handles and encrypted tokens: it and its WAL files are 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from models.engine import make_engine


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets files be world-readable, as on most systems: 0600 must not depend on it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_database_file_and_its_wal_files_are_owner_only(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "social_accounts.db"
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:  # held open, so the -wal and -shm files stay on disk
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
            conn.execute(sa.text("CREATE TABLE t (x TEXT)"))
            conn.execute(sa.text("INSERT INTO t VALUES ('account handle')"))
            conn.commit()
            files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert all(f.exists() for f in files), [f.name for f in files if not f.exists()]
            assert {f.name: oct(_mode(f)) for f in files} == {f.name: "0o600" for f in files}
    finally:
        engine.dispose()


def test_an_existing_database_file_keeps_its_mode(tmp_path: Path, open_umask: None) -> None:
    """The operator's choice (a group-readable file for a backup user, say) is not overridden."""
    db = tmp_path / "existing.db"
    db.touch(mode=0o640)
    os.chmod(db, 0o640)
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TABLE t (x TEXT)"))
            conn.commit()
        assert oct(_mode(db)) == "0o640"
    finally:
        engine.dispose()


def test_a_database_in_a_missing_directory_fails_in_sqlites_words(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}")
    try:
        with pytest.raises(sa.exc.OperationalError, match="unable to open database file"):
            engine.connect().close()
    finally:
        engine.dispose()


def test_migrate_creates_the_database_owner_only(tmp_path: Path, open_umask: None) -> None:
    """``social-accounts migrate`` (and ``run``, which migrates first) is what creates the file."""
    from models.migrate import upgrade

    db = tmp_path / "migrated.db"
    upgrade(f"sqlite:///{db}")
    assert oct(_mode(db)) == "0o600"
