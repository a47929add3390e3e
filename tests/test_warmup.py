"""Worker warm-up (``workers.warmup``) and the idle poll of ``social-accounts worker``, for real."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy.pool import QueuePool

from tests.pipeline_support import Pipeline
from workers import runtime


def test_a_started_worker_has_its_connections_and_adapters_ready(pipeline: Pipeline) -> None:
    """The pipeline's worker (2 threads) booted through the broker's middleware, WarmUp included."""
    rt = runtime.current()
    pool = rt.engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedin() >= 2  # one database connection per worker thread, opened at boot
    assert "twitter" in rt.adapters and "youtube" in rt.adapters  # configured platforms: built
    assert "mastodon" not in rt.adapters  # its app store follows the engine: built per call


def test_the_worker_command_polls_idle_queues_every_200_ms_unless_told_otherwise() -> None:
    """Dramatiq reads ``dramatiq_worker_timeout`` once, at import: the command sets it first."""
    probe = (
        "import sys\n"
        "from service import cli\n"
        "assert 'dramatiq.worker' not in sys.modules, 'too late: dramatiq was imported with the CLI'\n"
        "cli.set_idle_poll()\n"
        "import dramatiq.worker\n"
        "print(dramatiq.worker.WORKER_TIMEOUT)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "dramatiq_worker_timeout"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "200"
    mine = subprocess.run(
        [sys.executable, "-c", probe], env={**env, "dramatiq_worker_timeout": "1000"}, capture_output=True, text=True
    )
    assert mine.stdout.strip() == "1000"  # an operator's own value wins


def test_warming_the_pool_opens_one_connection_per_thread_up_to_the_pool_size(pg_url: str) -> None:
    from models.engine import make_engine
    from workers.warmup import warm_pool

    engine = make_engine(pg_url, pool_size=3, max_overflow=5)
    try:
        pool = engine.pool
        assert isinstance(pool, QueuePool)
        warm_pool(engine, 2)
        assert pool.checkedin() == 2
        warm_pool(engine, 20)  # more threads than the pool keeps: the overflow is not kept idle
        assert pool.checkedin() == 3
    finally:
        engine.dispose()
