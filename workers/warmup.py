"""Open at worker boot what the first messages would otherwise open while someone waits.

Why: without it a worker thread's first message pays for a database connection (the engine's
pool), importing and building the platform's adapter and the shared HTTP client: paid by the
first connects after a deploy or a scale-up, exactly when a burst of users is waiting. A failure
here is only logged: the messages open what they need themselves.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

import dramatiq
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from platforms.registry import platform_statuses
from workers import runtime
from workers.adapters import adapter_for

__all__ = ["WarmUp", "warm_pool"]

log = logging.getLogger("social_accounts.warmup")


class WarmUp(dramatiq.Middleware):
    """Per process: a database connection per worker thread and every configured adapter."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        try:
            rt = runtime.current()
            warm_pool(rt.engine, max(1, int(getattr(worker, "worker_threads", 1))))
            for status in platform_statuses(rt.settings):
                if status.configured and status.platform != "mastodon":
                    adapter_for(rt, status.platform)
        except Exception as exc:  # never keep a worker from starting
            log.warning("warm-up skipped: %s", type(exc).__name__)


def warm_pool(engine: Engine, connections: int) -> None:
    """Open up to ``connections`` pooled connections, all at once, so that many wait idle after.

    A pool keeps at most its ``pool_size`` idle (``QueuePool.size()``); other pools (SQLite's
    single in-memory connection) get one.
    """
    pool = engine.pool
    count = min(connections, pool.size()) if isinstance(pool, QueuePool) else 1
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(engine.connect())
