"""``social-accounts run``: the whole service in one process, on its embedded default.

SQLite file, in-process broker (Dramatiq's StubBroker), worker threads, the scheduler with a
single in-process leader, and the web app — the same code paths as production, only the broker and
the database differ. Meant for trying the service and for a single small site; production runs
``web``, ``worker`` and ``scheduler`` against PostgreSQL and Redis (README, "Operations").

One ``workers.runtime.Runtime`` serves all of them, so the token API and the worker threads share
one HTTP client. While it serves, ``run`` holds ``service.instance``'s file: how ``social-accounts
doctor``, run beside it, knows which instance it is checking.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from social_accounts.settings import Settings

if TYPE_CHECKING:
    import dramatiq
    from apscheduler.schedulers.base import BaseScheduler

    from scheduler.leader import Leader
    from workers.runtime import Runtime

__all__ = ["run_embedded", "run_settings", "start_background", "stop_background"]

log = logging.getLogger("service.embedded")

#: worker threads consuming the in-process broker
WORKER_THREADS = 8


def start_background(settings: Settings) -> tuple[Runtime, dramatiq.Worker, BaseScheduler, Leader]:
    """Migrate, configure the process's runtime, install its broker, start worker threads and the scheduler.

    Returns ``(runtime, worker, scheduler, leader)``; :func:`stop_background` stops them.
    """
    import dramatiq

    from models.migrate import upgrade
    from scheduler.main import start
    from workers import runtime

    upgrade(settings.database_url)
    rt = runtime.configure(settings)
    broker = rt.install_broker()
    import workers.actors  # noqa: F401  (declares every actor on the installed broker)
    import workers.lifecycle_actors  # noqa: F401  (refresh/sync/disconnect, before the worker starts)

    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=250)
    worker.start()
    scheduler, leader = start(rt, blocking=False)
    scheduler.start()
    return rt, worker, scheduler, leader


def stop_background(worker: dramatiq.Worker, scheduler: BaseScheduler, leader: Leader) -> None:
    """Stop emitting, then let the worker threads finish, then close the runtime's resources."""
    from workers import runtime

    scheduler.shutdown(wait=False)
    leader.resign()
    worker.stop()
    runtime.reset()


def run_settings(settings: Settings) -> Settings:
    """The settings ``run`` works with: the in-process broker unless BROKER_URL names another.

    ``doctor`` applies the same when it finds a running ``run`` (``service.instance``), so it
    checks the broker that instance uses.
    """
    if settings.broker_url:
        return settings
    return settings.model_copy(update={"broker_url": "memory://"})


def _leave_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends ``run`` like Ctrl-C: through ``run_embedded``'s ``finally``, exit status 0."""
    raise SystemExit(0)


def run_embedded(settings: Settings, *, demo: bool = False) -> None:
    """Serve until interrupted. ``demo=True`` adds the built-in demo platform (``--demo``).

    The demo is on only here: its adapter is registered through ``settings.demo_enabled`` and its
    provider (``web_callback.demo``) is mounted at ``/demo`` on this app, never by ``web``.
    """
    import uvicorn

    from service.instance import hold
    from web_callback.app import create_app

    settings = run_settings(settings).model_copy(update={"demo_enabled": demo})
    rt, worker, scheduler, leader = start_background(settings)
    app = create_app(runtime=rt)  # the token API refreshes through the worker threads' HTTP client
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
        with hold(settings):
            # log_config=None: uvicorn installs no handlers of its own, so its access and error
            # lines propagate to the one redacting root handler (``social_accounts.logs``), in
            # JSON under LOG_FORMAT=json (https://www.uvicorn.org/settings/#logging)
            uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    finally:
        stop_background(worker, scheduler, leader)
