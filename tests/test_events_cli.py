"""The events and webhooks commands: ``events tail``, ``webhooks add/list/remove/redeliver``,
on real PostgreSQL and Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy.orm import Session

from models import outbox
from models.engine import make_engine
from models.repository import record_event
from tests.cli_support import error_lines, run_cli
from tests.support import new_key


@pytest.fixture
def cli_db(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str, redis_url: str) -> str:
    env.setenv("DATABASE_URL", pg_url)
    env.setenv("TOKEN_KEYS", f"k1:{new_key()}")
    env.setenv("BROKER_URL", redis_url)
    assert run_cli(capsys, "migrate")[0] == 0
    return pg_url


def _status_change(url: str, frm: str, to: str) -> None:
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            record_event(
                session,
                kind="status_changed",
                account_id="acc-1",
                site_id="site-1",
                platform="twitter",
                reason="test",
                data={"from": frm, "to": to},
                now=datetime.now(UTC),
            )
        outbox.dispatch(engine, now=datetime.now(UTC))
    finally:
        engine.dispose()


def test_webhooks_add_list_remove(cli_db: str, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "webhooks", "add", "http://127.0.0.1:9/hooks")
    assert code == 1 and "https" in error_lines(err)[0]  # the SSRF guard: https and public only
    code, _, err = run_cli(capsys, "webhooks", "add", "https://10.1.2.3/hooks")
    assert code == 1 and "public internet" in error_lines(err)[0]
    env.setenv("ALLOW_PRIVATE_NETWORK", "1")
    code, _, err = run_cli(capsys, "webhooks", "add", "http://127.0.0.1:9/hooks", "--type", "account.nope")
    assert code == 1 and "unknown event type account.nope" in error_lines(err)[0]

    code, out, _ = run_cli(
        capsys, "webhooks", "add", "http://127.0.0.1:9/hooks", "--type", "account.recovered", "--site", "site-1"
    )
    assert code == 0 and "added" in out
    env.setenv("WEBHOOK_URLS", "http://127.0.0.1:10/env")
    code, out, _ = run_cli(capsys, "webhooks", "list", "--json")
    listed = {row["url"]: row for row in json.loads(out)}
    assert code == 0 and set(listed) == {"http://127.0.0.1:9/hooks", "http://127.0.0.1:10/env"}
    added = listed["http://127.0.0.1:9/hooks"]
    assert (added["state"], added["event_types"], added["site_ids"]) == ("ok", ["account.recovered"], ["site-1"])
    assert listed["http://127.0.0.1:10/env"]["source"] == "env"

    assert run_cli(capsys, "webhooks", "remove", added["id"])[0] == 0
    code, _, err = run_cli(capsys, "webhooks", "remove", added["id"])
    assert code == 1 and error_lines(err) == [f"error: no webhook endpoint {added['id']}"]


def test_events_tail_prints_in_order_and_redeliver_enqueues(
    cli_db: str, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, redis_namespace: str
) -> None:
    code, out, _ = run_cli(capsys, "events", "tail", "--no-follow")
    assert (code, out) == (0, "")
    _status_change(cli_db, "active", "error")
    _status_change(cli_db, "error", "active")
    code, out, _ = run_cli(capsys, "events", "tail", "--no-follow", "--json")
    printed = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in printed] == ["account.status_changed", "account.recovered"]
    assert [int(e["cursor"]) for e in printed] == sorted(int(e["cursor"]) for e in printed)
    code, out, _ = run_cli(capsys, "events", "tail", "--no-follow", "--after", printed[0]["cursor"])
    assert len(out.splitlines()) == 1 and "account.recovered" in out and "error → active" in out

    env.setenv("ALLOW_PRIVATE_NETWORK", "1")
    env.setenv("WEBHOOK_URLS", "http://127.0.0.1:9/hooks")
    code, _, err = run_cli(capsys, "webhooks", "redeliver", "--since", "yesterday")
    assert code == 1 and "--since" in error_lines(err)[0]
    code, out, _ = run_cli(capsys, "webhooks", "redeliver", "--since", "1h")
    assert code == 0 and "2 deliveries enqueued" in out
    client = redis.Redis.from_url(redis_url)
    try:
        queued = [json.loads(p) for p in client.hvals(f"{redis_namespace}:webhooks.msgs")]
    finally:
        client.close()
    assert sorted(m["actor_name"] for m in queued) == ["deliver_webhook", "deliver_webhook"]
