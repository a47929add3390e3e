"""``social-accounts run``: the whole service in one process, on its embedded default.

SQLite file, in-process broker (Dramatiq's StubBroker), worker threads, the scheduler with a
single in-process leader, and the web app — the same code paths as production, only the broker and
the database differ. Meant for trying the service and for a single small site; production runs
``web``, ``worker`` and ``scheduler`` against PostgreSQL and Redis (README, "Operations").
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from social_accounts.settings import Settings

__all__ = ["run_embedded", "start_background"]

log = logging.getLogger("service.embedded")

#: worker threads consuming the in-process broker
WORKER_THREADS = 8


def start_background(settings: Settings) -> tuple[Any, Any, Any]:
    """Migrate, install the runtime and broker, start worker threads and the scheduler.

    Returns ``(broker, worker, scheduler)``; the caller stops the last two.
    """
    import dramatiq

    from models.migrate import upgrade
    from scheduler.jobs import JobContext
    from scheduler.leader import LocalLeader
    from scheduler.main import build_scheduler
    from workers import runtime
    from workers.broker import setup

    upgrade(settings.database_url)
    rt = runtime.configure(settings)
    broker = setup(settings)
    import workers.actors  # noqa: F401  (declares every actor on the installed broker)
    import workers.lifecycle_actors  # noqa: F401  (refresh/sync/disconnect, before the worker starts)

    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=250)
    worker.start()
    ctx = JobContext(settings=settings, engine=rt.engine, broker=broker, clock=rt.clock)
    scheduler = build_scheduler(ctx, LocalLeader(), blocking=False)
    scheduler.start()
    return broker, worker, scheduler


def _leave_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends ``run`` like Ctrl-C: through ``run_embedded``'s ``finally``, exit status 0."""
    raise SystemExit(0)


def run_embedded(settings: Settings, *, demo: bool = False) -> None:
    """Serve until interrupted. ``demo=True`` adds the built-in demo platform (``--demo``).

    The demo is on only here: its adapter is registered through ``settings.demo_enabled`` and its
    provider (``web_callback.demo``) is mounted at ``/demo`` on this app, never by ``web``.
    """
    import uvicorn

    from web_callback.app import create_app

    if not settings.broker_url:
        settings = settings.model_copy(update={"broker_url": "memory://"})
    settings = settings.model_copy(update={"demo_enabled": demo})
    broker, worker, scheduler = start_background(settings)
    app = create_app(settings, broker=broker)
    if demo:
        from web_callback.demo import install

        install(app, settings)
        log.info("demo platform enabled: open %s/sites/demo/accounts", settings.public_url.rstrip("/"))
    log.info(
        "social-accounts is running on %s (embedded: %s)", settings.public_url, settings.database_url.split(":", 1)[0]
    )
    if threading.current_thread() is threading.main_thread():
        # uvicorn stops serving on SIGTERM, then raises it again under the handler it found; the
        # default handler would end the process there, before the worker threads and scheduler stop
        signal.signal(signal.SIGTERM, _leave_on_sigterm)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        scheduler.shutdown(wait=False)
        worker.stop()
