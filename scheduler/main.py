"""The scheduler process: APScheduler 3.x in UTC, one leader among replicas.

Every job is wrapped so that it runs only on the leader, is counted in
``social_accounts_scheduler_ticks_total``, and logs one line. Jobs use ``coalesce`` (missed runs
collapse into one), ``max_instances=1`` (a slow tick is never run twice at once) and a misfire
grace time (a GC pause or a slow Redis does not silently drop a tick). Intervals come from
settings (REFRESH_SCAN_SECONDS, SYNC_EVERY_SECONDS, HEALTH_EVERY_SECONDS...).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from scheduler import jobs
from scheduler.leader import Leader, LocalLeader, RedisLeader
from social_accounts.metrics import SCHEDULER_TICKS
from social_accounts.settings import Settings

__all__ = ["build_scheduler", "run"]

log = logging.getLogger("social_accounts.scheduler")

#: how often the stats-sync claim looks for accounts whose turn has come
SYNC_SCAN_SECONDS = 60


def leader_only(name: str, leader: Leader, job: Callable[[], Any]) -> Callable[[], None]:
    """Run ``job`` only while this process leads; count and log each run."""

    def tick() -> None:
        if not leader.is_leader():
            SCHEDULER_TICKS.labels(name, "standby").inc()
            return
        try:
            result = job()
        except Exception:
            SCHEDULER_TICKS.labels(name, "error").inc()
            log.exception("scheduler job failed", extra={"job": name})
            return
        SCHEDULER_TICKS.labels(name, "ok").inc()
        log.info("scheduler tick", extra={"job": name, "outcome": "ok", "result": result})

    tick.__name__ = f"tick_{name}"
    return tick


def build_scheduler(
    ctx: jobs.JobContext, leader: Leader, *, blocking: bool = True, sync_scan_seconds: int = SYNC_SCAN_SECONDS
) -> BaseScheduler:
    """An APScheduler with every job registered (not started)."""
    settings = ctx.settings
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(
        timezone="UTC",
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
    )
    leadership_every = max(1.0, settings.leader_ttl_seconds / 3)
    scheduler.add_job(leader.try_lead, "interval", seconds=leadership_every, id="leadership", name="leadership")
    table: list[tuple[str, Callable[[], Any], float]] = [
        ("refresh_ahead", lambda: jobs.refresh_ahead(ctx), settings.refresh_scan_seconds),
        ("sync", lambda: jobs.sync_due(ctx), min(sync_scan_seconds, settings.sync_every_seconds)),
        ("health", lambda: jobs.recompute_health(ctx), settings.health_every_seconds),
        ("reconcile", lambda: jobs.reconcile(ctx), settings.reconcile_every_seconds),
        ("cleanup", lambda: jobs.cleanup(ctx), settings.cleanup_every_seconds),
    ]
    for name, job, every in table:
        scheduler.add_job(
            leader_only(name, leader, job),
            "interval",
            seconds=every,
            id=name,
            name=name,
            jitter=max(0.0, every * 0.05),
        )
    return scheduler


def make_leader(settings: Settings) -> Leader:
    """Redis leadership when the broker is Redis; otherwise this process is the only scheduler."""
    if settings.effective_broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(settings.effective_broker_url)
        return RedisLeader(client, settings.redis_namespace, ttl=settings.leader_ttl_seconds)
    return LocalLeader()


def run(settings: Settings) -> None:
    """``social-accounts scheduler``: block until SIGTERM/SIGINT, then resign leadership."""
    from workers import runtime
    from workers.broker import setup

    # APScheduler logs two INFO lines per job run (every second or so); our wrapper logs one per tick
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    rt = runtime.configure(settings)
    broker = setup(settings)
    ctx = jobs.JobContext(settings=settings, engine=rt.engine, broker=broker, clock=rt.clock)
    leader = make_leader(settings)
    leader.try_lead()
    scheduler = build_scheduler(ctx, leader, blocking=True)
    stop = threading.Event()

    def shutdown(*_: object) -> None:
        if not stop.is_set():
            stop.set()
            scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log.info("scheduler started", extra={"leader": leader.is_leader()})
    try:
        scheduler.start()
    finally:
        leader.resign()
        rt.close()
