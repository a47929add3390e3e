"""The outbox on both backends (PostgreSQL and the embedded SQLite file): publishing in order,
deliveries per matching endpoint, replay pages, attempts recorded, 410, redelivery and the
sweep's lost deliveries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models import migrate, outbox
from models.engine import make_engine
from models.repository import record_event

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["postgres", pytest.param("sqlite", marks=pytest.mark.unit)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    request.addfinalizer(engine.dispose)
    return engine


def _change(engine: Engine, account: str, frm: str, to: str, at: datetime, site: str = "site-1") -> None:
    with Session(engine) as session, session.begin():
        record_event(
            session,
            kind="status_changed",
            account_id=account,
            site_id=site,
            platform="twitter",
            data={"from": frm, "to": to},
            now=at,
        )
        record_event(session, kind="synced", account_id=account, site_id=site, platform="twitter", now=at)


def test_publish_in_order_with_deliveries_per_matching_endpoint(db: Engine) -> None:
    outbox.add_endpoint(db, "https://a.example/hook", event_types=["account.recovered"], now=T0)
    outbox.add_endpoint(db, "https://b.example/hook", site_ids=["site-2"], now=T0)
    _change(db, "acc-1", "active", "error", T0)
    _change(db, "acc-1", "error", "active", T0 + timedelta(seconds=1))
    _change(db, "acc-2", "active", "rate_limited", T0 + timedelta(seconds=2), site="site-2")

    published = outbox.dispatch(db, urls=["https://env.example/hook"], now=T0)
    assert [p.body["type"] for p in published] == [
        "account.status_changed",
        "account.recovered",
        "account.status_changed",
    ]
    assert [p.seq for p in published] == [1, 2, 3]
    # env endpoint: all three; a: only the recovery; b: only site-2's
    assert [len(p.delivery_ids) for p in published] == [1, 2, 2]
    assert outbox.dispatch(db, now=T0) == []  # nothing twice
    assert outbox.unpublished_count(db) == 0

    page = outbox.list_events(db, after=0, limit=2)
    assert [e["cursor"] for e in page] == ["1", "2"]
    assert [e["cursor"] for e in outbox.list_events(db, after=2)] == ["3"]
    assert outbox.list_events(db, after=3) == []
    recent = outbox.recent_events(db, ["acc-1", "acc-2"], per_account=1)
    assert [e["type"] for e in recent["acc-1"]] == ["account.recovered"]  # newest first, audit rows left out


def test_attempts_410_redelivery_and_lost_deliveries(db: Engine) -> None:
    outbox.add_endpoint(db, "https://a.example/hook", now=T0)
    _change(db, "acc-1", "active", "error", T0)
    _change(db, "acc-1", "error", "active", T0 + timedelta(seconds=1))
    first, second = outbox.dispatch(db, now=T0)
    job = outbox.load_delivery(db, first.delivery_ids[0])
    assert job is not None and job.body == first.body and not job.earlier_pending
    later = outbox.load_delivery(db, second.delivery_ids[0])
    assert later is not None and later.earlier_pending  # the first one goes first

    outbox.finish_delivery(db, job, status_code=500, latency_ms=12, error=None, outcome="retry", now=T0)
    [endpoint] = outbox.list_endpoints(db)
    assert endpoint.failing_since == T0 and not endpoint.failing(T0 + timedelta(hours=23), timedelta(days=1))
    assert endpoint.failing(T0 + timedelta(days=1), timedelta(days=1))
    outbox.finish_delivery(db, job, status_code=200, latency_ms=8, error=None, outcome="delivered", now=T0)
    [endpoint] = outbox.list_endpoints(db)
    assert (endpoint.failing_since, endpoint.last_success_at) == (None, T0)
    again = outbox.load_delivery(db, job.id)
    assert again is not None and (again.status, again.attempts) == ("delivered", 2)
    later = outbox.load_delivery(db, second.delivery_ids[0])
    assert later is not None and not later.earlier_pending

    # nothing was sent for the second: overdue, the sweep hands it out again (once per lease)
    assert outbox.lost_deliveries(db, now=T0 + timedelta(minutes=1)) == []
    assert outbox.lost_deliveries(db, now=T0 + timedelta(minutes=3)) == [later.id]
    assert outbox.lost_deliveries(db, now=T0 + timedelta(minutes=3)) == []

    outbox.finish_delivery(db, later, status_code=410, latency_ms=5, error=None, outcome="gone", now=T0)
    [endpoint] = outbox.list_endpoints(db)
    assert endpoint.disabled_at == T0 and "410" in (endpoint.disabled_reason or "")
    assert outbox.redeliver(db, since=T0 - timedelta(hours=1), now=T0) == []  # disabled: nobody to send to

    outbox.add_endpoint(db, "https://a.example/hook", now=T0)  # enabled again
    ids = outbox.redeliver(db, since=T0 - timedelta(hours=1), now=T0)
    assert sorted(ids) == sorted([job.id, later.id])  # the same rows: same event, same webhook-id
    with db.connect() as conn:
        rows = conn.execute(sa.select(outbox.DELIVERIES.c.status)).scalars().all()
    assert rows == ["pending", "pending"]
    assert outbox.remove_endpoint(db, "https://a.example/hook")
    with db.connect() as conn:
        assert set(conn.execute(sa.select(outbox.DELIVERIES.c.status)).scalars()) == {"dropped"}
