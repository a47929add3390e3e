"""The scheduler's jobs, claims, bulk enqueue and leadership, on real PostgreSQL and real Redis.

Time is injected (a fixed ``NOW``), so "after the lease", "older than an hour" and "past
retention" are exact, not slept for. Messages are read back from Redis in Dramatiq's own wire
format and, once, consumed by a real ``dramatiq.Worker``: the proof that ``enqueue_many`` writes
what workers read.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
import redis
import sqlalchemy as sa
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.engine import Engine

from models.engine import make_engine
from models.migrate import upgrade
from models.tables import SocialAccount, SocialOAuthState, table_of
from scheduler import jobs
from scheduler.claims import claim_due
from scheduler.leader import LocalLeader, RedisLeader, leader_key
from scheduler.main import build_scheduler, leader_only, make_leader
from social_accounts.health import compute_health
from social_accounts.metrics import SCHEDULER_TICKS
from social_accounts.settings import Settings
from tests.waiting import wait_until
from workers import bulk
from workers.broker import build_broker
from workers.bulk import enqueue_many
from workers.messages import REFRESH_ACCOUNT, SYNC_ACCOUNT, build_message

ACCOUNTS = table_of(SocialAccount)
STATES = table_of(SocialOAuthState)
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
DAY = timedelta(hours=24)


# ---- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def settings(settings_factory: Any, pg_url: str, redis_url: str) -> Settings:
    return settings_factory(database_url=pg_url, broker_url=redis_url)  # in the test's own namespace


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    built = build_broker(settings)
    assert isinstance(built, RedisBroker)
    yield built
    built.close()


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def ctx(settings: Settings, engine: Engine, broker: RedisBroker) -> jobs.JobContext:
    return jobs.JobContext(settings=settings, engine=engine, broker=broker, clock=lambda: NOW, rng=random.Random(7))


_counter = itertools.count()


def account_row(**cols: Any) -> dict[str, Any]:
    n = next(_counter)
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "site_id": "site-1",
        "platform": "twitter",
        "platform_account_id": f"pa-{n}-{uuid.uuid4().hex[:6]}",
        "scopes": [],
        "token_metadata": {},
        "status": "active",
        "health_score": 100,
        "refresh_model": "rotate",
        "created_at": NOW - DAY * 10,
        "updated_at": NOW - DAY * 10,
    }
    row.update(cols)
    return row


def add_accounts(engine: Engine, rows: list[dict[str, Any]]) -> list[str]:
    with engine.begin() as conn:
        conn.execute(sa.insert(ACCOUNTS), rows)
    return [r["id"] for r in rows]


def add_account(engine: Engine, **cols: Any) -> str:
    return add_accounts(engine, [account_row(**cols)])[0]


def column_of(engine: Engine, account_id: str, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(ACCOUNTS.c[name]).where(ACCOUNTS.c.id == account_id)).scalar_one()


def add_attempt(
    engine: Engine,
    *,
    status: str,
    created_at: datetime,
    updated_at: datetime | None = None,
    secrets: dict[str, str] | None = None,
) -> str:
    row_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            sa.insert(STATES).values(
                id=row_id,
                platform="twitter",
                site_id="site-1",
                user_id="user-1",
                status=status,
                stage="created" if status == "pending" else status,
                account_ids=[],
                history=[{"at": created_at.isoformat(), "event": "created", "detail": ""}],
                expires_at=created_at + timedelta(minutes=10),
                created_at=created_at,
                updated_at=updated_at or created_at,
                **(secrets or {}),
            )
        )
    return row_id


def attempt(engine: Engine, attempt_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(STATES).where(STATES.c.id == attempt_id)).one_or_none()


def queued(client: redis.Redis, namespace: str, queue: str) -> list[dict[str, Any]]:
    """The messages waiting on ``queue``, decoded, in queue order (each id must have its payload)."""
    ids = client.lrange(f"{namespace}:{queue}", 0, -1)
    payloads = client.hmget(f"{namespace}:{queue}.msgs", ids) if ids else []
    out = []
    for redis_id, payload in zip(ids, payloads, strict=True):
        assert payload is not None, "queue entry without a stored message"
        message = json.loads(payload)
        assert message["options"]["redis_message_id"].encode() == redis_id
        out.append(message)
    return out


# ---- 1. claims ---------------------------------------------------------------------------------


def test_claim_takes_due_active_accounts_once_and_the_lease_brings_them_back(engine: Engine) -> None:
    due_old = add_account(engine, next_refresh_at=NOW - timedelta(hours=1))
    due_now = add_account(engine, next_refresh_at=NOW)
    not_due = add_account(engine, next_refresh_at=NOW + timedelta(seconds=1))
    add_account(engine, next_refresh_at=NOW + timedelta(hours=1))
    add_account(engine, next_refresh_at=None)  # nothing scheduled
    for status in ("error", "rate_limited", "expired", "disconnected"):
        add_account(engine, status=status, next_refresh_at=NOW - timedelta(hours=2))

    claimed = claim_due(engine, "next_refresh_at", now=NOW, lease_until=NOW + LEASE)
    assert sorted(claimed) == sorted([due_old, due_now])
    assert column_of(engine, due_old, "next_refresh_at") == NOW + LEASE
    assert column_of(engine, due_now, "next_refresh_at") == NOW + LEASE

    assert column_of(engine, not_due, "next_refresh_at") == NOW + timedelta(seconds=1)
    # the lease holds: only the account that has just become due, nothing leased
    soon = NOW + LEASE - timedelta(seconds=1)
    assert claim_due(engine, "next_refresh_at", now=soon, lease_until=soon + LEASE) == [not_due]
    # the worker never answered: once the lease runs out, they are due again
    later = NOW + LEASE
    assert sorted(claim_due(engine, "next_refresh_at", now=later, lease_until=later + LEASE)) == sorted(
        [due_old, due_now]
    )


def test_claim_respects_batch_order_and_the_sync_column(engine: Engine) -> None:
    oldest = add_account(engine, next_sync_at=NOW - timedelta(hours=3))
    middle = add_account(engine, next_sync_at=NOW - timedelta(hours=2))
    newest = add_account(engine, next_sync_at=NOW - timedelta(hours=1))
    refresh_only = add_account(engine, next_refresh_at=NOW - timedelta(hours=5), next_sync_at=None)

    assert claim_due(engine, "next_sync_at", now=NOW, lease_until=NOW + LEASE, batch=1) == [oldest]
    assert claim_due(engine, "next_sync_at", now=NOW, lease_until=NOW + LEASE, batch=1) == [middle]
    assert claim_due(engine, "next_sync_at", now=NOW, lease_until=NOW + LEASE, batch=10) == [newest]
    # claiming the sync column never touched the refresh column
    assert column_of(engine, refresh_only, "next_refresh_at") == NOW - timedelta(hours=5)
    assert column_of(engine, oldest, "next_refresh_at") is None


@pytest.mark.unit
def test_claim_works_on_sqlite_for_the_embedded_run(tmp_path: Any) -> None:
    """``social-accounts run`` runs the same scheduler on SQLite: the claim must work there too."""
    url = f"sqlite:///{tmp_path}/embedded.db"
    upgrade(url)
    eng = make_engine(url)
    try:
        due = add_accounts(eng, [account_row(next_refresh_at=NOW - timedelta(seconds=i)) for i in range(3)])
        add_account(eng, next_refresh_at=NOW + timedelta(hours=1))
        add_account(eng, status="error", next_refresh_at=NOW - timedelta(hours=1))
        assert sorted(claim_due(eng, "next_refresh_at", now=NOW, lease_until=NOW + LEASE)) == sorted(due)
        assert claim_due(eng, "next_refresh_at", now=NOW, lease_until=NOW + LEASE) == []
        assert column_of(eng, due[0], "next_refresh_at") == NOW + LEASE
    finally:
        eng.dispose()


def test_two_concurrent_claimers_get_disjoint_sets_covering_everything(pg_url: str, engine: Engine) -> None:
    due = set(add_accounts(engine, [account_row(next_refresh_at=NOW - timedelta(seconds=i)) for i in range(3000)]))
    add_accounts(engine, [account_row(next_refresh_at=NOW + timedelta(hours=1)) for _ in range(200)])
    engines = [make_engine(pg_url, pool_size=1, max_overflow=0) for _ in range(2)]
    results: list[list[str]] = [[], []]
    calls = [0, 0]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def claimer(i: int) -> None:
        try:
            start.wait()
            while True:
                ids = claim_due(engines[i], "next_refresh_at", now=NOW, lease_until=NOW + LEASE, batch=250)
                calls[i] += 1
                if not ids:
                    return
                results[i].extend(ids)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for e in engines:
        e.dispose()
    assert not errors
    a, b = set(results[0]), set(results[1])
    assert len(a) == len(results[0]) and len(b) == len(results[1]), "a claimer got the same account twice"
    assert a.isdisjoint(b)
    assert a | b == due
    assert calls[0] >= 1 and calls[1] >= 1


# ---- 2. refresh_ahead / sync_due and the wire format ------------------------------------------


def test_refresh_ahead_enqueues_one_documented_message_per_due_account(
    ctx: jobs.JobContext, engine: Engine, rclient: redis.Redis
) -> None:
    ns = ctx.settings.redis_namespace
    due = add_accounts(engine, [account_row(next_refresh_at=NOW - timedelta(minutes=i)) for i in range(3)])
    add_account(engine, next_refresh_at=NOW + timedelta(minutes=1))
    add_account(engine, status="error", next_refresh_at=NOW - timedelta(minutes=1))

    assert jobs.refresh_ahead(ctx) == 3
    messages = queued(rclient, ns, "refresh")
    assert sorted(m["kwargs"]["account_id"] for m in messages) == sorted(due)
    for m in messages:
        assert m["queue_name"] == "refresh"
        assert m["actor_name"] == REFRESH_ACCOUNT
        assert m["args"] == []
        assert m["kwargs"] == {"account_id": m["kwargs"]["account_id"], "reason": "scheduled"}
        uuid.UUID(m["message_id"])
        assert isinstance(m["message_timestamp"], int)
    assert len({m["message_id"] for m in messages}) == 3
    assert queued(rclient, ns, "sync") == []

    # the lease: a second tick at the same moment emits nothing more
    assert jobs.refresh_ahead(ctx) == 0
    assert len(queued(rclient, ns, "refresh")) == 3


def test_refresh_ahead_loops_over_batches_and_stops_at_the_tick_limit(
    ctx: jobs.JobContext, engine: Engine, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = ctx.settings.redis_namespace
    due = add_accounts(engine, [account_row(next_refresh_at=NOW - timedelta(seconds=i)) for i in range(5)])
    monkeypatch.setattr(jobs, "CLAIM_BATCH", 2)
    monkeypatch.setattr(jobs, "MAX_PER_TICK", 4)

    assert jobs.refresh_ahead(ctx) == 4  # two full batches, then the limit
    assert jobs.refresh_ahead(ctx) == 1  # the rest, next tick
    assert jobs.refresh_ahead(ctx) == 0
    ids = [m["kwargs"]["account_id"] for m in queued(rclient, ns, "refresh")]
    assert sorted(ids) == sorted(due)


def claim_threads() -> list[threading.Thread]:
    """The tick's claim threads still alive (``_claim_and_emit`` names them)."""
    return [t for t in threading.enumerate() if t.name.startswith("scheduler-claim")]


def five_due_in_batches_of_two(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Five due accounts, claimed two at a time: a tick of three claims (2, 2, 1)."""
    monkeypatch.setattr(jobs, "CLAIM_BATCH", 2)
    return add_accounts(engine, [account_row(next_refresh_at=NOW - timedelta(seconds=i)) for i in range(5)])


def failing_on_call(n: int, real: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    """``real``, except that its ``n``-th call raises ``error``."""
    calls = 0

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            raise error
        return real(*args, **kwargs)

    return call


def test_refresh_ahead_claims_the_next_batch_while_this_one_is_enqueued(
    ctx: jobs.JobContext, engine: Engine, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch's enqueue waits for the second claim to have returned: a tick that claimed
    and enqueued in turn would wait here until the timeout and fail."""
    due = five_due_in_batches_of_two(engine, monkeypatch)
    real_claim, real_enqueue = jobs.claim_due, jobs.enqueue_calls
    claimed: list[int] = []
    second_claimed = threading.Event()

    def claim(*args: Any, **kwargs: Any) -> list[str]:
        ids = real_claim(*args, **kwargs)
        claimed.append(len(ids))
        if len(claimed) == 2:
            second_claimed.set()
        return ids

    def enqueue(*args: Any) -> int:
        if not second_claimed.is_set():
            assert second_claimed.wait(10), "the next batch was not claimed during this enqueue"
        return real_enqueue(*args)

    monkeypatch.setattr(jobs, "claim_due", claim)
    monkeypatch.setattr(jobs, "enqueue_calls", enqueue)
    assert jobs.refresh_ahead(ctx) == 5
    assert claimed == [2, 2, 1]
    ids = [m["kwargs"]["account_id"] for m in queued(rclient, ctx.settings.redis_namespace, "refresh")]
    assert sorted(ids) == sorted(due)
    assert not claim_threads()


@pytest.mark.timeout(60)
def test_an_enqueue_failing_mid_tick_propagates_and_the_lease_brings_every_claimed_account_back(
    ctx: jobs.JobContext, engine: Engine, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = ctx.settings.redis_namespace
    due = five_due_in_batches_of_two(engine, monkeypatch)
    real_enqueue = jobs.enqueue_calls
    refused = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    # the second batch: Redis goes away
    monkeypatch.setattr(jobs, "enqueue_calls", failing_on_call(2, real_enqueue, refused))
    with pytest.raises(redis.ConnectionError):
        jobs.refresh_ahead(ctx)
    assert not claim_threads()  # the claim running ahead was waited for
    sent = [m["kwargs"]["account_id"] for m in queued(rclient, ns, "refresh")]
    assert len(sent) == 2  # the first batch only
    # every account is leased: the batch that failed and the one claimed ahead meanwhile ...
    lease_until = NOW + timedelta(seconds=ctx.settings.refresh_lease_seconds)
    assert {column_of(engine, a, "next_refresh_at") for a in due} == {lease_until}
    monkeypatch.setattr(jobs, "enqueue_calls", real_enqueue)
    assert jobs.refresh_ahead(ctx) == 0  # ... so nothing is sent twice before the lease runs out,
    after = dataclasses.replace(ctx, clock=lambda: lease_until + timedelta(seconds=1))
    assert jobs.refresh_ahead(after) == 5  # ... and then every one is due again: none was lost
    again = [m["kwargs"]["account_id"] for m in queued(rclient, ns, "refresh")][2:]
    assert sorted(again) == sorted(due)
    assert set(due) - set(sent) <= set(again)


@pytest.mark.timeout(60)
def test_a_claim_failing_mid_tick_propagates_after_the_batch_already_claimed_is_sent(
    ctx: jobs.JobContext, engine: Engine, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = ctx.settings.redis_namespace
    due = five_due_in_batches_of_two(engine, monkeypatch)
    real_claim = jobs.claim_due
    closed = sa.exc.OperationalError("UPDATE social_accounts", {}, Exception("server closed the connection"))
    # the claim running ahead: the database goes away
    monkeypatch.setattr(jobs, "claim_due", failing_on_call(2, real_claim, closed))
    with pytest.raises(sa.exc.OperationalError):
        jobs.refresh_ahead(ctx)
    assert not claim_threads()
    sent = [m["kwargs"]["account_id"] for m in queued(rclient, ns, "refresh")]
    assert len(sent) == 2  # the batch claimed before the failure was still enqueued
    monkeypatch.setattr(jobs, "claim_due", real_claim)
    assert jobs.refresh_ahead(ctx) == 3  # the rest were never claimed: due at once, next tick
    ids = [m["kwargs"]["account_id"] for m in queued(rclient, ns, "refresh")]
    assert sorted(ids) == sorted(due)


@pytest.mark.timeout(60)
def test_a_tick_without_its_database_raises_and_sends_nothing(ctx: jobs.JobContext, rclient: redis.Redis) -> None:
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")  # nothing listens on port 1
    try:
        with pytest.raises(sa.exc.OperationalError):
            jobs.refresh_ahead(dataclasses.replace(ctx, engine=dead))
    finally:
        dead.dispose()
    assert not claim_threads()
    assert queued(rclient, ctx.settings.redis_namespace, "refresh") == []


def test_sync_due_spreads_the_next_turn_and_sends_account_id_only(
    ctx: jobs.JobContext, engine: Engine, rclient: redis.Redis
) -> None:
    ns = ctx.settings.redis_namespace
    due = add_accounts(engine, [account_row(next_sync_at=NOW - timedelta(minutes=i)) for i in range(4)])
    add_account(engine, next_sync_at=NOW + timedelta(minutes=1))
    add_account(engine, status="disconnected", next_sync_at=NOW - timedelta(minutes=1))

    assert jobs.sync_due(ctx) == 4
    messages = queued(rclient, ns, "sync")
    assert sorted(m["kwargs"]["account_id"] for m in messages) == sorted(due)
    assert all(m["actor_name"] == SYNC_ACCOUNT and set(m["kwargs"]) == {"account_id"} for m in messages)
    period = timedelta(seconds=ctx.settings.sync_every_seconds)
    for account_id in due:
        nxt = column_of(engine, account_id, "next_sync_at")
        assert NOW + period * 0.9 <= nxt <= NOW + period * 1.1
    assert jobs.sync_due(ctx) == 0
    assert queued(rclient, ns, "refresh") == []


def test_enqueue_many_messages_are_consumed_by_a_real_dramatiq_worker(
    ctx: jobs.JobContext, engine: Engine, broker: RedisBroker, rclient: redis.Redis
) -> None:
    ns = ctx.settings.redis_namespace
    due = set(add_accounts(engine, [account_row(next_refresh_at=NOW - timedelta(seconds=i)) for i in range(25)]))
    received: list[dict[str, Any]] = []
    done = threading.Event()
    lock = threading.Lock()

    def refresh_probe(account_id: str, reason: str = "requested") -> None:
        with lock:
            received.append({"account_id": account_id, "reason": reason})
            if len(received) >= len(due):
                done.set()

    # a stand-in actor with the real name and queue, on the same Redis broker
    dramatiq.actor(actor_name=REFRESH_ACCOUNT, queue_name="refresh", broker=broker, max_retries=0)(refresh_probe)
    assert jobs.refresh_ahead(ctx) == 25

    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        wait_until(done.is_set, what=f"the worker consuming {len(due)} messages")
        # every message acked (out of the store): none is left that could be delivered twice
        wait_until(lambda: rclient.hlen(f"{ns}:refresh.msgs") == 0, what="acked messages leaving the store")
    finally:
        worker.stop()
    assert sorted(r["account_id"] for r in received) == sorted(due)
    assert {r["reason"] for r in received} == {"scheduled"}
    assert rclient.llen(f"{ns}:refresh") == 0


def test_enqueue_many_chunks_pipelines_and_handles_empty_input(
    broker: RedisBroker, rclient: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "WRITE_CHUNK", 3)
    ns = settings.redis_namespace
    assert enqueue_many(broker, []) == 0
    ids = [str(uuid.uuid4()) for _ in range(7)]
    assert enqueue_many(broker, (build_message(SYNC_ACCOUNT, account_id=i) for i in ids)) == 7
    assert [m["kwargs"]["account_id"] for m in queued(rclient, ns, "sync")] == ids
    # the caller's message objects are not changed (a copy carries the Redis id)
    message = build_message(SYNC_ACCOUNT, account_id="x")
    enqueue_many(broker, [message])
    assert "redis_message_id" not in message.options


@pytest.mark.unit
def test_enqueue_many_falls_back_to_enqueue_on_other_brokers(settings_factory: Any) -> None:
    stub = build_broker(settings_factory(broker_url="memory://"))
    stub.declare_queue("refresh")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    assert enqueue_many(stub, (build_message(REFRESH_ACCOUNT, account_id=i, reason="r") for i in ids)) == 3
    got = [dramatiq.Message.decode(m).kwargs["account_id"] for m in stub.queues["refresh"].queue]
    assert got == ids
    stub.close()


# ---- 3. recompute_health ------------------------------------------------------------------------


def test_recompute_health_equals_compute_health_for_every_combination(ctx: jobs.JobContext, engine: Engine) -> None:
    statuses = ("active", "error", "rate_limited", "expired", "disconnected")
    expiries = (None, NOW - timedelta(seconds=1), NOW, NOW + timedelta(hours=1))
    errors = (None, NOW - timedelta(hours=1), NOW - DAY, NOW - DAY - timedelta(seconds=1), NOW + timedelta(minutes=1))
    syncs = (None, NOW - timedelta(hours=1), NOW - DAY, NOW - DAY - timedelta(seconds=1))
    rows = [
        account_row(status=s, token_expires_at=t, last_error_at=e, last_synced_at=y, health_score=100)
        for s, t, e, y in itertools.product(statuses, expiries, errors, syncs)
    ]
    add_accounts(engine, rows)

    def expected(row: dict[str, Any]) -> int:
        return compute_health(
            status=row["status"],
            token_expires_at=row["token_expires_at"],
            last_synced_at=row["last_synced_at"],
            last_error_at=row["last_error_at"],
            now=NOW,
        ).score

    want = {r["id"]: expected(r) for r in rows}
    assert len(set(want.values())) >= 6, "the combinations must cover many different scores"
    changed = jobs.recompute_health(ctx)
    assert changed == sum(1 for score in want.values() if score != 100)
    with engine.connect() as conn:
        got = {row[0]: row[1] for row in conn.execute(sa.select(ACCOUNTS.c.id, ACCOUNTS.c.health_score))}
    mismatches = {i: (got[i], want[i]) for i in want if got[i] != want[i]}
    assert not mismatches

    # only changed rows are written
    assert jobs.recompute_health(ctx) == 0
    some = rows[0]["id"]
    with engine.begin() as conn:
        conn.execute(sa.update(ACCOUNTS).where(ACCOUNTS.c.id == some).values(health_score=want[some] + 1))
    assert jobs.recompute_health(ctx) == 1
    assert column_of(engine, some, "health_score") == want[some]


def test_recompute_health_pages_through_the_table(
    ctx: jobs.JobContext, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "HEALTH_PAGE", 3)
    # ten accounts that all score 90 (never synced), two already right, one disconnected
    stale = add_accounts(engine, [account_row(health_score=100) for _ in range(10)])
    right = add_accounts(engine, [account_row(health_score=90) for _ in range(2)])
    gone = add_account(engine, status="disconnected", health_score=100)
    assert jobs.recompute_health(ctx) == 11
    assert {column_of(engine, i, "health_score") for i in stale + right} == {90}
    assert column_of(engine, gone, "health_score") == 0
    assert jobs.recompute_health(ctx) == 0


# ---- 4. reconcile -------------------------------------------------------------------------------


def test_reconcile_times_out_stuck_attempts_only(ctx: jobs.JobContext, engine: Engine) -> None:
    timeout = timedelta(seconds=ctx.settings.attempt_timeout_seconds)
    # stuck mid-connect: the verifier, an app password and the exchanged tokens all still stored
    secrets = {"code_verifier": "enc-verifier", "app_password": "enc-password", "token_bundle": "enc-bundle"}
    stuck = add_attempt(engine, status="pending", created_at=NOW - timeout - timedelta(seconds=1), secrets=secrets)
    recent = add_attempt(engine, status="pending", created_at=NOW - timeout + timedelta(minutes=1), secrets=secrets)
    finished = add_attempt(engine, status="connected", created_at=NOW - timeout * 3)

    result = jobs.reconcile(ctx)
    assert result["timed_out"] == 1
    row = attempt(engine, stuck)
    assert (row.status, row.stage, row.error_code) == ("failed", "failed", "timeout")
    assert row.error_message and "try connecting again" in row.error_message
    assert row.history[-1] == {"at": NOW.isoformat(), "event": "timeout", "detail": "reconciler"}
    assert len(row.history) == 2
    assert row.updated_at == NOW
    assert (row.code_verifier, row.app_password, row.token_bundle) == (None, None, None)
    untouched = attempt(engine, recent)
    assert (untouched.status, untouched.stage, len(untouched.history)) == ("pending", "created", 1)
    assert untouched.token_bundle == "enc-bundle"  # still in flight: its secrets are still needed
    assert attempt(engine, finished).status == "connected"
    assert jobs.reconcile(ctx)["timed_out"] == 0


def test_reconcile_reschedules_accounts_that_lost_their_refresh(ctx: jobs.JobContext, engine: Engine) -> None:
    expires = NOW + timedelta(hours=2)
    lost = add_account(engine, token_expires_at=expires, next_refresh_at=None)
    scheduled = add_account(engine, token_expires_at=expires, next_refresh_at=NOW + timedelta(hours=1))
    no_refresh = add_account(engine, refresh_model="none", token_expires_at=expires, next_refresh_at=None)
    no_expiry = add_account(engine, token_expires_at=None, next_refresh_at=None)
    inactive = add_account(engine, status="expired", token_expires_at=expires, next_refresh_at=None)

    assert jobs.reconcile(ctx)["rescheduled"] == 1
    assert column_of(engine, lost, "next_refresh_at") == NOW
    assert column_of(engine, scheduled, "next_refresh_at") == NOW + timedelta(hours=1)
    for other in (no_refresh, no_expiry, inactive):
        assert column_of(engine, other, "next_refresh_at") is None


def test_reconcile_re_emits_stale_error_accounts_at_most_hourly(
    ctx: jobs.JobContext, engine: Engine, rclient: redis.Redis
) -> None:
    ns = ctx.settings.redis_namespace
    old = NOW - timedelta(hours=2)
    errored = add_account(engine, status="error", updated_at=old)
    limited = add_account(engine, status="rate_limited", updated_at=old)
    recent = add_account(engine, status="error", updated_at=NOW - timedelta(minutes=30))  # not yet
    add_account(engine, status="error", refresh_model="none", updated_at=old)  # nothing to refresh
    add_account(engine, status="expired", updated_at=old)  # the user must act
    add_account(engine, status="active", updated_at=old)  # the claim handles active ones

    assert jobs.reconcile(ctx)["retried"] == 2
    messages = queued(rclient, ns, "refresh")
    assert sorted(m["kwargs"]["account_id"] for m in messages) == sorted([errored, limited])
    assert {m["kwargs"]["reason"] for m in messages} == {"reconcile"}

    # each account again only once its last try is an hour old
    for minutes, expected in ((10, []), (31, [recent]), (59, []), (61, [errored, limited])):
        before = len(queued(rclient, ns, "refresh"))
        ctx.clock = lambda minutes=minutes: NOW + timedelta(minutes=minutes)  # type: ignore[misc]
        assert jobs.reconcile(ctx)["retried"] == len(expected), minutes
        new = [m["kwargs"]["account_id"] for m in queued(rclient, ns, "refresh")[before:]]
        assert sorted(new) == sorted(expected), minutes


# ---- 5. cleanup ---------------------------------------------------------------------------------


def test_cleanup_deletes_finished_attempts_past_retention_only(ctx: jobs.JobContext, engine: Engine) -> None:
    retention = timedelta(days=ctx.settings.attempt_retention_days)
    past = NOW - retention - timedelta(seconds=1)
    gone = [add_attempt(engine, status=s, created_at=past) for s in ("connected", "failed")]
    kept = [
        add_attempt(engine, status="pending", created_at=past),
        add_attempt(engine, status="connected", created_at=past, updated_at=NOW - retention + timedelta(hours=1)),
        add_attempt(engine, status="failed", created_at=NOW - timedelta(days=1)),
    ]
    assert jobs.cleanup(ctx) == 2
    assert all(attempt(engine, i) is None for i in gone)
    assert all(attempt(engine, i) is not None for i in kept)
    assert jobs.cleanup(ctx) == 0


# ---- 6. leadership ------------------------------------------------------------------------------


def test_exactly_one_leads_and_resign_hands_over(rclient: redis.Redis, redis_namespace: str) -> None:
    ns = f"{redis_namespace}-lead"
    a, b = RedisLeader(rclient, ns, ttl=5), RedisLeader(rclient, ns, ttl=5)
    assert a.identity != b.identity
    assert a.try_lead() is True
    assert b.try_lead() is False
    assert (a.is_leader(), b.is_leader()) == (True, False)
    assert a.try_lead() is True  # extends
    assert rclient.get(leader_key(ns)) == a.identity.encode()
    ttl = rclient.pttl(leader_key(ns))
    assert 0 < ttl <= 5000

    a.resign()
    assert a.is_leader() is False
    assert b.try_lead() is True
    assert (a.is_leader(), b.is_leader()) == (False, True)
    assert a.try_lead() is False
    b.resign()
    assert rclient.exists(leader_key(ns)) == 0


def test_an_expired_leader_is_replaced_and_knows_it(rclient: redis.Redis, redis_namespace: str) -> None:
    ns = f"{redis_namespace}-lead"
    a, b = RedisLeader(rclient, ns, ttl=30), RedisLeader(rclient, ns, ttl=30)
    assert a.try_lead()
    assert b.try_lead() is False  # a's lock has not expired
    rclient.pexpire(leader_key(ns), 50)  # a stopped extending (paused, dead): its lock runs out
    wait_until(b.try_lead, what="the standby taking over")
    assert a.is_leader() is False  # the lock is b's now
    assert a.try_lead() is False  # its extension fails and b holds the lock
    assert b.is_leader() is True
    a.resign()  # must not release b's lock
    assert rclient.get(leader_key(ns)) == b.identity.encode()


def test_an_expired_lock_nobody_took_is_retaken_in_one_call(rclient: redis.Redis, redis_namespace: str) -> None:
    ns = f"{redis_namespace}-lead"
    a = RedisLeader(rclient, ns, ttl=1.0)
    assert a.try_lead()
    rclient.delete(leader_key(ns))  # as if it expired
    assert a.is_leader() is False
    assert a.try_lead() is True
    assert a.is_leader() is True


def test_leadership_without_redis_is_false_not_an_exception() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    leader = RedisLeader(dead, "ns", ttl=2)
    assert leader.try_lead() is False
    assert leader.is_leader() is False
    leader.resign()
    dead.close()


def ticks(job: str, outcome: str) -> float:
    return float(SCHEDULER_TICKS.labels(job, outcome)._value.get())


def test_leader_only_runs_the_job_on_the_leader(rclient: redis.Redis, redis_namespace: str) -> None:
    ns = f"{redis_namespace}-lead"
    a, b = RedisLeader(rclient, ns, ttl=5), RedisLeader(rclient, ns, ttl=5)
    assert a.try_lead() and not b.try_lead()
    runs: list[str] = []
    name = f"probe_{uuid.uuid4().hex[:6]}"
    on_a = leader_only(name, a, lambda: runs.append("a"))
    on_b = leader_only(name, b, lambda: runs.append("b"))
    on_a()
    on_b()
    assert runs == ["a"]
    assert (ticks(name, "ok"), ticks(name, "standby")) == (1, 1)

    def boom() -> None:
        raise RuntimeError("job failed")

    leader_only(name, a, boom)()  # logged and counted, never raised into the scheduler
    assert ticks(name, "error") == 1
    a.resign()
    assert b.try_lead()
    on_a()
    on_b()
    assert runs == ["a", "b"]


def test_build_scheduler_registers_every_job_and_make_leader_picks_by_broker(
    ctx: jobs.JobContext, settings_factory: Any, settings: Settings
) -> None:
    scheduler = build_scheduler(ctx, LocalLeader(), blocking=False)
    ids = {job.id for job in scheduler.get_jobs()}
    assert ids == {"leadership", "refresh_ahead", "sync", "health", "reconcile", "cleanup", "events"}
    leader = make_leader(settings)
    assert isinstance(leader, RedisLeader)
    leader._lock.redis.close()
    assert isinstance(make_leader(settings_factory(broker_url="memory://")), LocalLeader)


def test_a_running_scheduler_emits_due_refreshes(
    settings_factory: Any, pg_url: str, redis_url: str, engine: Engine, rclient: redis.Redis
) -> None:
    settings = settings_factory(database_url=pg_url, broker_url=redis_url, refresh_scan_seconds=1)
    ns = settings.redis_namespace
    broker = build_broker(settings)
    now = datetime.now(UTC)
    due = add_accounts(engine, [account_row(next_refresh_at=now - timedelta(seconds=i)) for i in range(3)])
    ctx = jobs.JobContext(settings=settings, engine=engine, broker=broker)
    scheduler = build_scheduler(ctx, LocalLeader(), blocking=False)
    scheduler.start()
    try:
        wait_until(lambda: len(queued(rclient, ns, "refresh")) >= 3, what="three refreshes queued")
    finally:
        scheduler.shutdown(wait=True)
        broker.close()
    assert sorted(m["kwargs"]["account_id"] for m in queued(rclient, ns, "refresh")) == sorted(due)
