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
from typing import TYPE_CHECKING, Any

import redis
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from scheduler import jobs
from scheduler.leader import Leader, LocalLeader, RedisLeader
from social_accounts.metrics import SCHEDULER_TICKS
from social_accounts.settings import Settings

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = ["build_scheduler", "make_leader", "run", "start"]

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
        ("events", lambda: jobs.events_sweep(ctx), settings.events_sweep_seconds),
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


def make_leader(settings: Settings, client: redis.Redis | None = None) -> Leader:
    """Redis leadership wherever locks and cooldowns live (``coordination_redis_url``, the Redis
    ``doctor`` reads the leader from); without Redis this process is the only scheduler.

    ``client`` is the process runtime's Redis client; one is built from the settings otherwise.
    """
    url = settings.coordination_redis_url
    if url is None:
        return LocalLeader()
    return RedisLeader(client or redis.Redis.from_url(url), settings.redis_namespace, ttl=settings.leader_ttl_seconds)


def start(rt: Runtime, *, blocking: bool) -> tuple[BaseScheduler, Leader]:
    """The scheduler of ``rt`` (its settings, engine, clock and broker), leadership tried once;
    not started. ``social-accounts scheduler`` and the embedded ``run`` both build it here."""
    settings = rt.settings
    ctx = jobs.JobContext(settings=settings, engine=rt.engine, broker=rt.install_broker(), clock=rt.clock)
    leader = make_leader(settings, rt.redis if settings.coordination_redis_url else None)
    leader.try_lead()
    return build_scheduler(ctx, leader, blocking=blocking), leader


def run(settings: Settings) -> None:
    """``social-accounts scheduler``: block until SIGTERM/SIGINT, then resign leadership."""
    from workers import runtime

    # APScheduler logs two INFO lines per job run (every second or so); our wrapper logs one per tick
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    rt = runtime.configure(settings)
    scheduler, leader = start(rt, blocking=True)
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
        runtime.reset()
