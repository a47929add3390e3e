"""Open at worker boot what the first messages would otherwise open while someone waits.

Why: a worker thread's first message used to pay for a PostgreSQL connection
(``models.direct``), importing and building the platform's adapter and the shared HTTP client.
That is a few milliseconds per thread, paid
by the first connects after a deploy or a scale-up, exactly when a burst of users is waiting
(``bench/pipeline.py`` with 500 connects). A failure here is only logged: the messages open
what they need themselves, as before.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

import dramatiq

from models.direct import for_engine
from platforms.registry import platform_statuses
from workers import runtime
from workers.adapters import adapter_for

__all__ = ["WarmUp"]

log = logging.getLogger("social_accounts.warmup")


class WarmUp(dramatiq.Middleware):
    """Per process: a database connection per worker thread and every configured adapter."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        try:
            rt = runtime.current()
            direct = for_engine(rt.engine)
            if direct is not None:
                with ExitStack() as stack:  # all at once, so there are that many idle afterwards
                    for _ in range(max(1, int(getattr(worker, "worker_threads", 1)))):
                        stack.enter_context(direct.connection())
            for status in platform_statuses(rt.settings):
                if status.configured and status.platform != "mastodon":
                    adapter_for(rt, status.platform)
        except Exception as exc:  # never keep a worker from starting
            log.warning("warm-up skipped: %s", type(exc).__name__)
