"""Erasure: a purged account leaves nothing in any table, after its grant is revoked.

``DELETE /v1/accounts/{id}?purge=true`` and ``accounts purge ID`` revoke through the disconnect
path, then erase; the scheduler's cleanup erases accounts disconnected for longer than
``DISCONNECTED_RETENTION_DAYS``. "Nothing left" is checked against every table of the schema
(``SQLModel.metadata``), every column, by the account's id, platform account id, handle and name.
Mastodon app rows are per instance, not per account: they stay.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from starlette.testclient import TestClient

from models.engine import make_engine
from models.migrate import upgrade
from models.purge import ERASED, purge_disconnected
from models.repository import event_values, record_events
from models.tables import SocialAccount, SocialAccountEvent, SocialOAuthState, table_of
from scheduler import jobs
from service import cli
from social_accounts.settings import Settings
from tests.fakeplatform import FakeResponse
from tests.lifecycle_support import (
    FAST_LIFECYCLE,
    calls,
    connect,
    connect_mastodon,
    events,
    load,
    raw_row,
)
from tests.pipeline_support import Pipeline
from tests.waiting import wait_until
from workers.publish import request_disconnect

ACCOUNTS = table_of(SocialAccount)
STATES = table_of(SocialOAuthState)
REVOKE = "/twitter/2/oauth2/revoke"


# ---- what is left of an account -------------------------------------------------------------------


def marks_of(engine: Engine, account_id: str) -> list[str]:
    """What identifies the account: its id, platform account id, handle and name."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(ACCOUNTS).where(ACCOUNTS.c.id == account_id)).mappings().one()
    marks = [row["id"], row["platform_account_id"], row["account_handle"], row["account_name"]]
    return [str(m) for m in marks if m]


def traces(engine: Engine, marks: list[str], *, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(table, row) of every row, in every table of the schema, whose any column holds any mark."""
    found = []
    with engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            if table.name in skip:
                continue
            for row in conn.execute(sa.select(table)).mappings():
                text = json.dumps(dict(row), default=str)
                if any(mark in text for mark in marks):
                    found.append((table.name, text[:300]))
    return found


def gone(pipe: Pipeline, account_id: str) -> bool:
    with pipe.engine.connect() as conn:
        return conn.execute(sa.select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == account_id)).first() is None


# ---- DELETE ?purge=true -----------------------------------------------------------------------------


def test_api_purge_revokes_then_leaves_nothing_of_the_account_in_any_table(life: Pipeline, api: TestClient) -> None:
    [alice] = connect(life, "twitter")
    [bob] = connect(life, "twitter", fake_user="bob")
    marks, tokens = marks_of(life.engine, alice), load(life, alice).tokens
    before = {table for table, _ in traces(life.engine, marks)}
    assert before == {"social_accounts", "social_account_events", "social_oauth_states"}

    response = api.delete(f"/v1/accounts/{alice}", params={"purge": "true"})
    assert response.status_code == 202, response.text
    assert response.json() == {"account_id": alice, "enqueued": "purge"}
    wait_until(lambda: gone(life, alice), what="alice erased")

    assert calls(life.fake, REVOKE) == 2  # revoked first, at the platform (refresh and access token)
    assert life.fake.grants.check_access(tokens.access_token) == (None, "revoked")
    assert traces(life.engine, marks) == []
    assert api.get(f"/v1/accounts/{alice}").status_code == 404
    # the other account of the same site and platform is untouched
    assert raw_row(life, bob).status == "active" and events(life, bob, "connected")
    assert traces(life.engine, marks_of(life.engine, bob))


def test_a_purge_whose_revocation_keeps_failing_erases_once_the_policy_gives_up(life: Pipeline) -> None:
    [alice] = connect(life, "twitter")
    marks = marks_of(life.engine, alice)
    life.fake.fail(REVOKE, FakeResponse(503, {"error": "unavailable"}), times=50)
    request_disconnect(alice, purge=True, broker=life.broker)
    wait_until(lambda: gone(life, alice), what="alice erased", timeout=30)
    assert calls(life.fake, REVOKE) == 1 + FAST_LIFECYCLE.max_transient  # tried within the budget first
    assert traces(life.engine, marks) == []


def test_purging_one_page_keeps_the_attempt_of_the_others_without_its_id(life: Pipeline, api: TestClient) -> None:
    pages = connect(life, "facebook")
    assert len(pages) >= 2
    first, others = pages[0], pages[1:]
    marks = marks_of(life.engine, first)
    assert api.delete(f"/v1/accounts/{first}?purge=1").status_code == 202
    wait_until(lambda: gone(life, first), what="page erased")
    assert traces(life.engine, marks) == []
    with life.engine.connect() as conn:
        [(account_ids, history)] = conn.execute(sa.select(STATES.c.account_ids, STATES.c.history)).all()
    assert account_ids == others
    [connected] = [entry for entry in history if entry["event"] == "connected"]
    assert connected["detail"] == ", ".join([ERASED, *others])
    for other in others:
        assert raw_row(life, other).status == "active"


def test_a_purged_mastodon_account_leaves_its_instances_app(life: Pipeline, api: TestClient) -> None:
    account_id = connect_mastodon(life)
    apps = SQLModel.metadata.tables["social_mastodon_apps"]
    marks = marks_of(life.engine, account_id)
    assert api.delete(f"/v1/accounts/{account_id}?purge=true").status_code == 202
    wait_until(lambda: gone(life, account_id), what="mastodon account erased")
    assert traces(life.engine, marks, skip=("social_mastodon_apps",)) == []
    with life.engine.connect() as conn:  # per instance, shared by its accounts: kept
        assert conn.execute(sa.select(sa.func.count()).select_from(apps)).scalar_one() == 1


@pytest.mark.parametrize("value", ["maybe", "", "yes please", "tru"])
def test_an_odd_purge_value_is_a_400_and_nothing_happens(life: Pipeline, api: TestClient, value: str) -> None:
    [alice] = connect(life, "twitter")
    response = api.delete(f"/v1/accounts/{alice}", params={"purge": value})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_query"
    assert raw_row(life, alice).status == "active"


def test_without_purge_delete_keeps_the_disconnected_row(life: Pipeline, api: TestClient) -> None:
    [alice] = connect(life, "twitter")
    assert api.delete(f"/v1/accounts/{alice}?purge=false").status_code == 202
    wait_until(lambda: events(life, alice, "disconnected"), what="alice disconnected")
    row = raw_row(life, alice)
    assert (row.status, row.access_token, row.account_handle is not None) == ("disconnected", None, True)
    assert api.delete(f"/v1/accounts/{uuid.uuid4()}?purge=true").status_code == 404


# ---- accounts purge ID ------------------------------------------------------------------------------


def test_cli_purge_revokes_and_erases_at_once(
    life: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [alice] = connect(life, "twitter")
    marks, tokens = marks_of(life.engine, alice), load(life, alice).tokens
    monkeypatch.setattr(cli, "_settings", lambda: life.settings)
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    assert cli.main(["accounts", "purge", alice]) == 0
    out = capsys.readouterr().out
    assert f"{alice} erased (revoked)" in out
    assert calls(life.fake, REVOKE) == 2  # the refresh and the access token
    assert life.fake.grants.check_access(tokens.access_token) == (None, "revoked")
    assert traces(life.engine, marks) == []
    # nothing left to purge: one clear line, non-zero exit
    assert cli.main(["accounts", "purge", alice]) != 0
    assert "no account with id" in capsys.readouterr().err


def test_cli_purge_hands_a_revocation_that_must_wait_to_the_workers(
    life: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [alice] = connect(life, "twitter")
    marks = marks_of(life.engine, alice)
    life.fake.fail(REVOKE, FakeResponse(503, {"error": "unavailable"}), times=1)
    monkeypatch.setattr(cli, "_settings", lambda: life.settings)
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    assert cli.main(["accounts", "purge", alice]) == 0
    assert "a worker revokes, then erases it" in capsys.readouterr().out
    wait_until(lambda: gone(life, alice), what="alice erased by the worker")
    assert calls(life.fake, REVOKE) == 3  # the failed try here, the successful one (two calls) in the worker
    assert traces(life.engine, marks) == []


# ---- retention: the scheduler's cleanup --------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _account(engine: Engine, *, status: str, updated_at: datetime, site: str = "site-1") -> str:
    account_id = str(uuid.uuid4())
    row = {
        "id": account_id,
        "site_id": site,
        "platform": "twitter",
        "platform_account_id": f"pa-{uuid.uuid4().hex}",
        "account_handle": f"handle-{uuid.uuid4().hex}",
        "account_name": f"name-{uuid.uuid4().hex}",
        "scopes": [],
        "token_metadata": {},
        "status": status,
        "created_at": updated_at - DAY * 100,
        "updated_at": updated_at,
    }
    with engine.begin() as conn:
        conn.execute(sa.insert(ACCOUNTS), [row])
        record_events(
            conn,
            [
                event_values(kind=kind, account_id=account_id, site_id=site, platform="twitter", now=updated_at)
                for kind in ("connected", "synced", "disconnected")
            ],
        )
    return account_id


def _attempt(engine: Engine, account_ids: list[str]) -> str:
    attempt_id = str(uuid.uuid4())
    entry = {"at": NOW.isoformat(), "event": "connected", "detail": ", ".join(account_ids)}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(STATES),
            [
                {
                    "id": attempt_id,
                    "platform": "twitter",
                    "site_id": "site-1",
                    "user_id": "user-1",
                    "status": "connected",
                    "stage": "connected",
                    "account_ids": account_ids,
                    "history": [entry],
                    "expires_at": NOW,
                    "created_at": NOW - DAY,
                    "updated_at": NOW - DAY,
                }
            ],
        )
    return attempt_id


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'e.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_cleanup_erases_accounts_disconnected_past_retention_only(db: Engine) -> None:
    settings = Settings(_env_file=None, disconnected_retention_days=30)  # type: ignore[call-arg]
    assert Settings(_env_file=None).disconnected_retention_days == 30  # type: ignore[call-arg]
    old = _account(db, status="disconnected", updated_at=NOW - DAY * 30 - timedelta(seconds=1))
    recent = _account(db, status="disconnected", updated_at=NOW - DAY * 29)
    active = _account(db, status="active", updated_at=NOW - DAY * 400)
    expired = _account(db, status="expired", updated_at=NOW - DAY * 400)
    alone = _attempt(db, [old])
    shared = _attempt(db, [old, active])
    marks = marks_of(db, old)

    ctx = jobs.JobContext(settings=settings, engine=db, broker=StubBroker(), clock=lambda: NOW)
    assert jobs.cleanup(ctx) == 1
    assert traces(db, marks) == []
    with db.connect() as conn:
        left = set(conn.execute(sa.select(ACCOUNTS.c.id)).scalars())
        states = {r.id: r for r in conn.execute(sa.select(STATES))}
        kinds = conn.execute(sa.select(sa.func.count()).select_from(table_of(SocialAccountEvent))).scalar_one()
    assert left == {recent, active, expired}  # a reconnect within 30 days finds its history
    assert alone not in states  # it named the erased account only
    assert states[shared].account_ids == [active]
    assert states[shared].history[0]["detail"] == f"{ERASED}, {active}"
    assert kinds == 9  # the three events of each account kept
    assert jobs.cleanup(ctx) == 0
    # two days on, the recent one's 30 days are over too
    ctx.clock = lambda: NOW + 2 * DAY  # type: ignore[misc]
    assert jobs.cleanup(ctx) == 1 and traces(db, [recent]) == []


def test_purge_disconnected_works_in_batches(db: Engine) -> None:
    ids = {_account(db, status="disconnected", updated_at=NOW - DAY * 40) for _ in range(7)}
    assert purge_disconnected(db, before=NOW - DAY * 30, batch=3) == 7
    assert traces(db, sorted(ids)) == []


def test_cli_purge_after_a_final_refusal_erases_and_says_to_revoke_by_hand(
    life: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [alice] = connect(life, "twitter")
    marks = marks_of(life.engine, alice)
    life.fake.fail(REVOKE, FakeResponse(400, {"error": "invalid_request"}), times=1)
    monkeypatch.setattr(cli, "_settings", lambda: life.settings)
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    assert cli.main(["accounts", "purge", alice]) == 0
    out = capsys.readouterr().out
    assert f"{alice} erased; the revocation failed (revoke_failed): revoke it at the platform" in out
    assert calls(life.fake, REVOKE) == 1  # a final refusal is not repeated
    assert traces(life.engine, marks) == []
