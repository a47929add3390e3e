"""Helpers the CLI tests share: run ``service.cli.main`` in-process, read its error lines, and seed
an account straight into a database."""

from __future__ import annotations

import pytest

from models.crypto import KeyRing
from service import cli

__all__ = ["error_lines", "run_cli", "seed_account"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process: its exit code, stdout and stderr."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of the CLI's stderr."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def seed_account(url: str, ring: KeyRing, *, site_id: str = "site-1", handle: str = "alice") -> str:
    """A Mastodon account with encrypted tokens written to ``url``; its id."""
    from sqlmodel import Session

    from models.engine import make_engine
    from models.ids import account_id
    from models.tables import SocialAccount

    row_id = account_id(site_id, "mastodon", handle)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            session.add(
                SocialAccount(
                    id=row_id,
                    site_id=site_id,
                    platform="mastodon",
                    platform_account_id=handle,
                    account_handle=f"@{handle}",
                    access_token=ring.encrypt(
                        "plain-access", table="social_accounts", column="access_token", row_id=row_id
                    ),
                    refresh_token=ring.encrypt(
                        "plain-refresh", table="social_accounts", column="refresh_token", row_id=row_id
                    ),
                )
            )
            session.commit()
    finally:
        engine.dispose()
    return row_id
