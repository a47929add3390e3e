"""The token API's common case, a token that is not due: one ``SELECT``, no write, no platform call.

Why it matters: other modules ask for a token before every post, so this read is the token API's
whole cost (``bench/latency.py`` holds it to twice a bare one-row read). The read that finds the
token not due is the one handed out; a refresh time that no longer fits is still put back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from models.engine import make_engine
from tests.lifecycle_support import connect, load, raw_row, refresh_calls
from tests.pipeline_support import Pipeline
from web_callback.app import create_app


@pytest.fixture
def api_engine(life: Pipeline) -> Iterator[sa.Engine]:
    """The API's own engine: the statements recorded on it are the token call's alone, never
    those the pipeline's worker threads run at the same time on theirs."""
    engine = make_engine(life.settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def api(life: Pipeline, api_engine: sa.Engine) -> Iterator[TestClient]:
    app = create_app(life.settings, broker=life.broker, engine=api_engine)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {life.settings.api_token}"
        yield client


class Statements:
    """Every SQL statement the engine sends while recording."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.seen: list[str] = []

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement.lstrip().split(None, 1)[0].upper())

    def __enter__(self) -> Statements:
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)


def test_a_token_that_is_not_due_costs_one_select(life: Pipeline, api: TestClient, api_engine: sa.Engine) -> None:
    [account_id] = connect(life, "twitter")
    stored = load(life, account_id)
    api.post(f"/v1/accounts/{account_id}/token")  # the first call may put a misplaced time back
    before = raw_row(life, account_id).next_refresh_at

    with Statements(api_engine) as statements:
        answer = api.post(f"/v1/accounts/{account_id}/token")

    assert answer.status_code == 200
    assert answer.json()["access_token"] == stored.tokens.access_token
    assert statements.seen == ["SELECT"]
    assert refresh_calls(life, "twitter") == 0
    assert raw_row(life, account_id).next_refresh_at == before


def test_a_refresh_time_that_no_longer_fits_is_put_back(life: Pipeline, api: TestClient, api_engine: sa.Engine) -> None:
    [account_id] = connect(life, "twitter")
    fitting = raw_row(life, account_id).next_refresh_at
    assert fitting is not None
    pushed = fitting + (fitting - load(life, account_id).tokens.expires_at) * -2  # past the expiry: a lease
    with life.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE social_accounts SET next_refresh_at = :t WHERE id = :id"), {"t": pushed, "id": account_id}
        )

    with Statements(api_engine) as statements:
        answer = api.post(f"/v1/accounts/{account_id}/token")

    assert answer.status_code == 200
    assert "UPDATE" in statements.seen
    moved = raw_row(life, account_id).next_refresh_at
    assert moved is not None and moved != pushed and moved < load(life, account_id).tokens.expires_at
    assert refresh_calls(life, "twitter") == 0
