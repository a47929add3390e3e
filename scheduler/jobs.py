"""The periodic jobs. Each one is short, emits messages, and is safe to run twice.

* ``refresh_ahead``: claim due accounts (lease) and enqueue one ``refresh_account`` each, the
  next batch claimed while this one is enqueued (``_claim_and_emit``).
* ``sync_due``: the same for stats sync; each account's next sync is spread with jitter.
* ``recompute_health``: one set-wise UPDATE, only rows whose score changes are written.
* ``reconcile``: attempts stuck in ``pending`` (a lost message, a Redis restart) end as
  ``failed/timeout``; accounts waiting on a retry that no longer exists are re-emitted.
* ``cleanup``: expired, finished attempts past their retention are removed, and accounts
  disconnected for longer than ``DISCONNECTED_RETENTION_DAYS`` are erased with every trace
  (``models.purge``), like the attempts: one short write of the scheduler's own.
* ``events_sweep``: publish what the outbox still holds and re-send lost webhook deliveries.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.attempts import SECRET_COLUMNS, append_history, failed_event_values
from models.purge import purge_disconnected
from models.tables import SocialAccount, SocialAccountEvent, SocialOAuthState
from scheduler.claims import claim_due
from social_accounts.clock import Clock, utcnow
from social_accounts.settings import Settings
from workers import events
from workers.bulk import enqueue_calls
from workers.messages import ACTOR_QUEUES, REFRESH_ACCOUNT, SYNC_ACCOUNT

__all__ = ["JobContext", "cleanup", "events_sweep", "recompute_health", "reconcile", "refresh_ahead", "sync_due"]

log = logging.getLogger("social_accounts.scheduler")

ACCOUNTS = SocialAccount.__table__  # type: ignore[attr-defined]
STATES = SocialOAuthState.__table__  # type: ignore[attr-defined]

#: claimed and enqueued per round trip
CLAIM_BATCH = 5000
#: at most this many per tick; the rest stay due for the next tick
MAX_PER_TICK = 100_000
#: accounts in error / rate_limited whose last change is older than this get a fresh refresh
STALE_RETRY = timedelta(hours=1)
DAY = timedelta(hours=24)
#: accounts per health-recompute transaction
HEALTH_PAGE = 5000


@dataclass
class JobContext:
    settings: Settings
    engine: Engine
    broker: dramatiq.Broker
    clock: Clock = utcnow
    rng: random.Random = field(default_factory=random.Random)


def _claim_and_emit(ctx: JobContext, column: str, lease: timedelta, actor_name: str, extra: dict[str, str]) -> int:
    """Claim due accounts ``CLAIM_BATCH`` at a time and enqueue one message each; returns the count sent.

    The next batch is claimed in a thread of the tick's own while this one is encoded and written:
    a claim mostly waits on PostgreSQL (psycopg releases the GIL), an enqueue is Python work, so a
    tick costs about its claims plus the last batch's enqueue rather than the sum of both. One
    claim at most runs ahead, each with its own ``now``, and never past ``MAX_PER_TICK``.

    Failures: a claim that fails raises here once the batch before it is enqueued (nothing of its
    own was claimed: it rolled back). An enqueue that fails raises after the claim in flight has
    ended; that claim's batch is not sent, and like the batch that failed it keeps its lease and
    comes due again when the lease runs out, as after a crash. Either way the error reaches the
    job runner and the thread ends with the tick (the executor's ``with`` joins it).
    """
    queue = ACTOR_QUEUES[actor_name]

    def claim() -> list[str]:
        now = ctx.clock()
        return claim_due(ctx.engine, column, now=now, lease_until=now + lease, batch=CLAIM_BATCH)

    sent = claimed = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-claim") as claims:
        ahead: Future[list[str]] | None = claims.submit(claim)
        while ahead is not None:
            ids = ahead.result()  # a failed claim raises here
            claimed += len(ids)
            ahead = claims.submit(claim) if len(ids) == CLAIM_BATCH and claimed < MAX_PER_TICK else None
            if ids:
                sent += enqueue_calls(ctx.broker, queue, actor_name, [{"account_id": i, **extra} for i in ids])
    return sent


def refresh_ahead(ctx: JobContext) -> int:
    """Claim every account whose refresh is due and enqueue its refresh; returns the count."""
    lease = timedelta(seconds=ctx.settings.refresh_lease_seconds)
    return _claim_and_emit(ctx, "next_refresh_at", lease, REFRESH_ACCOUNT, {"reason": "scheduled"})


def sync_due(ctx: JobContext) -> int:
    """Enqueue a stats sync for every active account whose turn has come.

    The claim's lease *is* the next turn: one period ahead, with ±10 % jitter drawn once per tick, on top of
    the random first turn given at connect time, so syncs stay spread over the period.
    """
    period = ctx.settings.sync_every_seconds
    lease = timedelta(seconds=period * ctx.rng.uniform(0.9, 1.1))
    return _claim_and_emit(ctx, "next_sync_at", lease, SYNC_ACCOUNT, {})


def health_expression(now: datetime) -> Any:
    """The score of ``social_accounts.health.compute_health`` as one SQL expression."""
    t = ACCOUNTS.c
    expired = sa.and_(t.token_expires_at.is_not(None), t.token_expires_at <= now)
    penalty = (
        sa.case((expired, 50), else_=0)
        + sa.case((t.status == "rate_limited", 30), else_=0)
        + sa.case((sa.and_(t.last_error_at.is_not(None), t.last_error_at > now - DAY), 20), else_=0)
        + sa.case((sa.or_(t.last_synced_at.is_(None), t.last_synced_at < now - DAY), 10), else_=0)
    )
    return sa.case((t.status.in_(("disconnected", "expired")), 0), (penalty >= 100, 0), else_=100 - penalty)


def recompute_health(ctx: JobContext) -> int:
    """Recompute every account's score set-wise, a page of ids at a time; returns how many changed.

    One UPDATE over the whole table would hold the row lock of every account it changes until it
    commits, blocking workers saving tokens for as long as the whole table takes. Pages of
    ``HEALTH_PAGE`` ids in primary-key order, each its own short transaction, keep that to
    milliseconds per account; only rows whose score changes are written.
    """
    score = health_expression(ctx.clock())
    changed = 0
    after = ""
    while True:
        with ctx.engine.begin() as conn:
            page = (
                conn.execute(
                    sa.select(ACCOUNTS.c.id).where(ACCOUNTS.c.id > after).order_by(ACCOUNTS.c.id).limit(HEALTH_PAGE)
                )
                .scalars()
                .all()
            )
            if not page:
                return changed
            stmt = (
                sa.update(ACCOUNTS)
                .where(ACCOUNTS.c.id.between(page[0], page[-1]), ACCOUNTS.c.health_score != score)
                .values(health_score=score)
            )
            changed += int(conn.execute(stmt).rowcount or 0)
        after = page[-1]


def reconcile(ctx: JobContext) -> dict[str, int]:
    """End stuck attempts and re-emit refreshes that nothing is waiting on any more."""
    now = ctx.clock()
    cutoff = now - timedelta(seconds=ctx.settings.attempt_timeout_seconds)
    timed_out = 0
    with Session(ctx.engine) as session:
        stuck = session.scalars(
            sa.select(SocialOAuthState)
            .where(SocialOAuthState.status == "pending", SocialOAuthState.created_at < cutoff)  # type: ignore[arg-type]
            .limit(1000)
            .with_for_update(skip_locked=True)
        ).all()
        for attempt in stuck:
            attempt.status = "failed"
            attempt.stage = "failed"
            attempt.error_code = "timeout"
            attempt.error_message = "The connection did not finish in time. Please try connecting again."
            for column in SECRET_COLUMNS:  # no secret outlives the attempt: verifier, password, tokens
                setattr(attempt, column, None)
            append_history(attempt, "timeout", "reconciler", now=now)
            # the public attempt.failed event, in the same transaction (models.outbox)
            session.execute(
                sa.insert(SocialAccountEvent),
                failed_event_values(
                    attempt.id,
                    "timeout",
                    attempt.error_message,
                    now,
                    platform=attempt.platform,
                    site_id=attempt.site_id,
                ),
            )
            timed_out += 1
        session.commit()

    # Accounts that should have a refresh scheduled but have none (e.g. a crash between writes).
    with ctx.engine.begin() as conn:
        unscheduled = conn.execute(
            sa.update(ACCOUNTS)
            .where(
                ACCOUNTS.c.status == "active",
                ACCOUNTS.c.next_refresh_at.is_(None),
                ACCOUNTS.c.refresh_model != "none",
                ACCOUNTS.c.token_expires_at.is_not(None),
            )
            .values(next_refresh_at=now)
        ).rowcount
        # error / rate_limited accounts whose retry message was lost: try again, at most hourly
        stale_ids = [
            str(row[0])
            for row in conn.execute(
                sa.update(ACCOUNTS)
                .where(
                    ACCOUNTS.c.status.in_(("error", "rate_limited")),
                    ACCOUNTS.c.refresh_model != "none",
                    ACCOUNTS.c.updated_at < now - STALE_RETRY,
                )
                .values(updated_at=now)
                .returning(ACCOUNTS.c.id)
            )
        ]
    if stale_ids:
        calls = [{"account_id": i, "reason": "reconcile"} for i in stale_ids]
        enqueue_calls(ctx.broker, ACTOR_QUEUES[REFRESH_ACCOUNT], REFRESH_ACCOUNT, calls)
    return {"timed_out": timed_out, "rescheduled": int(unscheduled or 0), "retried": len(stale_ids)}


def events_sweep(ctx: JobContext) -> dict[str, int]:
    """Publish outbox rows no worker's nudge published (a crash right after the commit) and
    re-send deliveries whose message was lost (``workers.events.sweep``)."""
    return events.sweep(
        ctx.engine,
        ctx.broker,
        urls=ctx.settings.webhook_url_list,
        clock=ctx.clock,
        on_broker=ctx.settings.events_on_broker,
    )


def cleanup(ctx: JobContext) -> int:
    """Delete finished attempts past retention and erase accounts disconnected past theirs;
    returns how many attempts and accounts went.

    Pending attempts are never deleted here: ``reconcile`` first ends them as ``failed/timeout``
    (so the user's page can say so), and they go once that outcome is past retention too.
    """
    now = ctx.clock()
    keep = now - timedelta(days=ctx.settings.attempt_retention_days)
    stmt = sa.delete(STATES).where(STATES.c.updated_at < keep, STATES.c.status.in_(("connected", "failed")))
    with ctx.engine.begin() as conn:
        attempts = int(conn.execute(stmt).rowcount or 0)
    accounts = purge_disconnected(ctx.engine, before=now - timedelta(days=ctx.settings.disconnected_retention_days))
    return attempts + accounts
